// Activation functions of the training blocks on n contiguous floats, with an
// AVX-512 path (polynomial exp, kernels/cpu/exp_avx512.h; forward GELU and
// SwiGLU also on AVX2, exp_avx2.h). The scalar
// specification is the float instantiation of the blocks in train/blocks.cpp
// (the KernelsAct test compares them).
#pragma once
#include <cstdint>

namespace tessera::cpu::avx512 {
// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void gelu_fwd(float* y, const float* x, int64_t n);
void gelu_bwd(float* dx, const float* dy, const float* x, int64_t n);
// h = silu(g) * u
void swiglu_fwd(float* h, const float* g, const float* u, int64_t n);
void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n);
// A causal attention row (training): p[0, n) = softmax(p[0, n)) in place, n >= 1;
// p[n, n_zero) = 0. Returns the row's log-sum-exp, max + log(sum exp(p - max)).
float softmax_row(float* p, int64_t n, int64_t n_zero);
// p[0, n) = exp(p[0, n) - shift) in place (the probabilities again from a saved
// log-sum-exp); p[n, n_zero) = 0.
void exp_shift_row(float* p, int64_t n, int64_t n_zero, float shift);
// Its backward, in place over d = dL/dp: d[j] = scale p[j] (d[j] - sum_k p[k] d[k])
// for j < n; d[n, n_zero) = 0.
void softmax_bwd_row(const float* p, float* d, int64_t n, int64_t n_zero, float scale);
}  // namespace tessera::cpu::avx512

// The forward GELU and SwiGLU on AVX2 + FMA (cpu/act_avx2.cpp), for the
// inference model on CPUs without AVX-512 (ops::gelu / ops::swiglu with an Isa).
namespace tessera::cpu::avx2 {
void gelu_fwd(float* y, const float* x, int64_t n);
void swiglu_fwd(float* h, const float* g, const float* u, int64_t n);
}  // namespace tessera::cpu::avx2
