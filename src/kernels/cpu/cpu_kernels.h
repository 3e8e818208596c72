// Internal interface between the dispatcher (kernels/dispatch.cpp) and the
// per-ISA kernels in this directory. No ISA flags here: the *_avx2.cpp and
// *_avx512.cpp files are compiled with their own flags, and each defines its
// functions inside its own namespace (cpu::avx2, cpu::avx512) so that no
// inline function compiled for one ISA can be picked by the linker for another.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "kernels/attention.h"

namespace tessera::cpu {

// Activations X(M, K) quantized for the integer dot products of Q8_0 / Q4_0 /
// Q8_G weights: per row, blocks of `block` elements (a multiple of 32) with
//   qs[k]  int8 in [-127, 127],  x[k] ~= d[b] * qs[k]
//   d[b]   scale = amax / 127 of block b: f32 for Q8_G (llama2.c's runq); for the
//          GGUF types rounded to f16 and qs = round(x * 127 / amax), as
//          llama.cpp's Q8_0 activations (f16_scale)
//   s[b]   sum of the block's qs (used to undo the +128 / -8 offsets of the weights);
//          for Q4_1 / Q5_1 (llama.cpp's Q8_1) the bits of a float: the half
//          f16(amax / 127 * sum), llama.cpp's block value of the min term
// Row m of each array starts at m * K (qs) and m * (K / block) (d, s).
struct QuantX {
  const int8_t* qs = nullptr;
  const float* d = nullptr;
  const int32_t* s = nullptr;
  int64_t K = 0;
  int64_t block = 32;
  int64_t nblocks() const { return K / block; }
};

// What a row-range kernel gets: the f32 activations (always), their quantized
// form (integer paths only), and a per-thread workspace of at least K floats.
struct MatvecArgs {
  const TensorView* W = nullptr;
  const float* X = nullptr;  // (M, K)
  QuantX xq;
  int64_t M = 0;
  float* Y = nullptr;        // (M, N)
  float* work = nullptr;     // >= work_floats(K, M) floats, private to the calling thread
  // work already holds this kernel's expansion of xq: the dispatcher sets it after
  // a thread's first row range of a matrix, so later ranges skip the expansion.
  bool x_ready = false;
};

// Per-thread workspace of the matrix-vector kernels: a dequantized row (Q8_G
// fallback) or per-block activation vectors (AVX-512 Q8_0 / Q4_0; the R4 layouts
// take 640 bytes per 512 activations, 1.25 M K bytes, the K-quant R4 layouts 768), + alignment.
// (A K-quant row whose last group of 512 is half padding still takes a whole group: + 192 per row.)
// The last kScaleWorkFloats floats hold the K-quant R4 kernels' unpacked scales
// of one cache block of weight rows (32 floats per row and group of 512; a
// block of 256 KiB of Q4_K, the densest, is at most 1776 rows x groups, K = 256),
// at the first 64-byte boundary of the last kScaleWorkFloats + 16.
constexpr int64_t kScaleWorkFloats = 1792 * 32;
inline int64_t work_floats(int64_t K, int64_t M) { return K + M * (K / 2 + 192) + 64 + kScaleWorkFloats + 16; }

// Computes Y[m, n] for all m < M and n in [n0, n1).
using MatvecFn = void (*)(const MatvecArgs& a, int64_t n0, int64_t n1);
// Quantizes one row x(K) into qs(K), d(K / block), s(K / block); f16_scale as in QuantX.
using QuantizeXFn = void (*)(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s);
// llama.cpp's Q8_K of one row x(K) (quantize_x_q8k, below).
using QuantizeQ8KFn = void (*)(const float* x, int64_t K, int8_t* qs, float* d, int32_t* s);
// Dequantizes row r of W into out(K).
using DequantRowFn = void (*)(const TensorView& W, int64_t r, float* out);
// Decode attention (kernels/attention.h); false when the head size has no kernel.
using AttendFn = bool (*)(const DecodeAttnArgs& a);
// s[0, n) = softmax(cap(s)) in place (kernels/attention.h, attend_softmax_row).
using SoftmaxRowFn = void (*)(float* s, int64_t n, float softcap);
// One online-softmax tile (kernels/attention.h, attend_online_row): s = exp(cap(s) - m'), returns the sum.
using OnlineRowFn = float (*)(float* s, int64_t n, float softcap, float& m);

// One ISA's kernels. Tables are immutable and returned by reference.
struct IsaKernels {
  MatvecFn f32, f16, bf16, q8_0, q4_0, q8_g;
  QuantizeXFn quantize_x;
  DequantRowFn dequant_row;
  MatvecFn q4_0_r4 = nullptr, q8_0_r4 = nullptr;  // the repacked layouts (kernels/repack.h); AVX-512 only
  AttendFn attend = nullptr;
  SoftmaxRowFn softmax_row = nullptr;
  MatvecFn kquant = nullptr;  // Q2_K .. Q6_K against Q8_K activations (matvec_kquant_*.cpp)
  MatvecFn legacy = nullptr;  // Q4_1, Q5_0, Q5_1, IQ4_NL against Q8_0 activations (legacy_impl.h)
  MatvecFn kquant_r4 = nullptr;  // Q4_K_R4, Q5_K_R4, Q6_K_R4 against Q8_K activations; AVX-512 only
  OnlineRowFn online_row = nullptr;
  MatvecFn legacy_r4 = nullptr;  // IQ4_NL_R4, Q4_1_R4, Q5_0_R4, Q5_1_R4 against Q8_0 / Q8_1 activations; AVX-512 only
  QuantizeQ8KFn quantize_q8k = nullptr;  // null: the scalar quantize_x_q8k
};

// Whether a Q8_G view takes the integer path (group a multiple of 32 that
// divides K, so every group lies inside one row); otherwise it is dequantized
// row by row into the workspace.
inline bool q8g_integer_path(const TensorView& W) {
  return W.group > 0 && W.group % 32 == 0 && W.cols() % W.group == 0;
}

// The scalar specification of the activation quantization (round half to even).
void quantize_x_scalar(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s);
// The activations of the K-quant dot products: llama.cpp's Q8_K, one row x(K)
// into qs(K), d(K / 256) and s(K / 16), the sums of each 16 quants (QuantX with
// block 256, whose s then holds 16 sums per block).
void quantize_x_q8k(const float* x, int64_t K, int8_t* qs, float* d, int32_t* s);
// Q8_1: replaces the integer block sums s(K / 32) of x's Q8_0 quantization by
// the bits of llama.cpp's f16(d * sum) with d = amax / 127 unrounded, as floats.
void q8_1_sums(const float* x, int64_t K, int32_t* s);

namespace avx2 {
const IsaKernels& kernels();
void matvec_f32(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_f16(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_bf16(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q8_0(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q4_0(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q8_g(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_kquant(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_legacy(const MatvecArgs& a, int64_t n0, int64_t n1);
void quantize_x(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s);
void dequant_row(const TensorView& W, int64_t r, float* out);
double stream_read_sum(const float* p, int64_t n);
uint64_t stream_read_xor(const uint8_t* p, int64_t n);  // any bytes (no float traps or slow paths)
bool attend_decode(const DecodeAttnArgs& a);
void attend_softmax_row(float* s, int64_t n, float softcap);
float attend_online_row(float* s, int64_t n, float softcap, float& m);
double fma_loop_f32(int64_t iters);  // 12 x 8 lanes x 2 FLOPs per iteration; returns a sink
}  // namespace avx2

namespace avx512 {
const IsaKernels& kernels();
void matvec_f32(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_f16(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_bf16(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q8_0(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q4_0(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q8_g(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q4_0_r4(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_q8_0_r4(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_kquant(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_legacy(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_kquant_r4(const MatvecArgs& a, int64_t n0, int64_t n1);
void matvec_legacy_r4(const MatvecArgs& a, int64_t n0, int64_t n1);
void quantize_x(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s);
void quantize_x_q8k(const float* x, int64_t K, int8_t* qs, float* d, int32_t* s);  // bit-identical to cpu::'s
void dequant_row(const TensorView& W, int64_t r, float* out);
double stream_read_sum(const float* p, int64_t n);
uint64_t stream_read_xor(const uint8_t* p, int64_t n);
bool attend_decode(const DecodeAttnArgs& a);
void attend_softmax_row(float* s, int64_t n, float softcap);
float attend_online_row(float* s, int64_t n, float softcap, float& m);
double fma_loop_f32(int64_t iters);  // 12 x 16 lanes x 2 FLOPs per iteration; returns a sink
double dpbf16_loop(int64_t iters);   // 12 x 16 lanes x 4 FLOPs (two bf16 products) per iteration
}  // namespace avx512

}  // namespace tessera::cpu
