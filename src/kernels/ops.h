// Elementwise and normalisation kernels used by the model blocks.
// Each is a plain loop the compiler vectorises; shapes are in the comments.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace tessera::ops {

// out(n) = x(n) / rms(x) * w(n)
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
// The same on the ISA's kernel (AVX-512: kernels/norm.h's rmsnorm_row, 16 partial
// sums of squares), else the loop above, whose serial sum does not vectorise.
void rmsnorm(Isa isa, float* out, const float* x, const float* w, int64_t n, float eps);
// out(n) = (x - mean) / std * w + b
void layernorm(float* out, const float* x, const float* w, const float* b, int64_t n, float eps);
// a(n) = silu(a) * b
void swiglu(float* a, const float* b, int64_t n);
// x(n) = gelu_tanh(x)  (GPT-2's approximation)
void gelu(float* x, int64_t n);
// The same two on the ISA's kernel (AVX-512 or AVX2: kernels/act.h, a
// polynomial exp; the loops above are the specification), Scalar: those loops.
void swiglu(Isa isa, float* a, const float* b, int64_t n);
void gelu(Isa isa, float* x, int64_t n);
// a(n) = gelu_tanh(a) * b  (GeGLU), on the ISA's GELU kernel
void geglu(Isa isa, float* a, const float* b, int64_t n);
// Out of place: out(n) = silu(a) * b, gelu_tanh(x), gelu_tanh(a) * b (out may be the input).
void swiglu(Isa isa, float* out, const float* a, const float* b, int64_t n);
void gelu(Isa isa, float* out, const float* x, int64_t n);
void geglu(Isa isa, float* out, const float* a, const float* b, int64_t n);
// x(n) = max(0, x)
void relu(float* x, int64_t n);
void relu(float* out, const float* x, int64_t n);
// x(n) = cap * tanh(x / cap)  (logit soft-capping)
void softcap(float* x, int64_t n, float cap);
// y(n) += x(n)
void add(float* y, const float* x, int64_t n);
// x(n) *= s
void scale(float* x, float s, int64_t n);

enum class RopeStyle { Interleaved, HalfSplit };
// Rotates one head vector x(head_dim) at position pos, over the first rot_dim dims.
// Interleaved: pairs (2i, 2i+1) (llama2.c, GGUF llama). HalfSplit: pairs (i, i+half) (HF, GPT-NeoX).
void rope(float* x, int64_t head_dim, int64_t rot_dim, int64_t pos, float theta, RopeStyle style);
// The angles of rope() for positions [0, n_pos): cos/sin tables (n_pos, rot_dim / 2).
// freq_div (rot_dim / 2, may be null): frequency i is divided by freq_div[i] (RoPE scaling).
void rope_tables(float* cos_t, float* sin_t, int64_t n_pos, int64_t rot_dim, float theta,
                 const float* freq_div = nullptr);
// rope() with precomputed cos/sin rows (rot_dim / 2) for the position: the same numbers, no transcendentals.
void rope_apply(float* x, const float* cos_r, const float* sin_r, int64_t rot_dim, RopeStyle style);

}  // namespace tessera::ops
