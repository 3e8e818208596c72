// bf16 matrix multiplication with f32 accumulation, for bf16 weights in
// prefill and bf16 mixed-precision training: on AMX tiles (TDPBF16PS,
// cpu/gemm_bf16_amx.cpp) where the CPU and OS allow them (ctx.amx), else the
// AVX-512 BF16 dot product vdpbf16ps (cpu/gemm_bf16_avx512.cpp). Debian's
// OpenBLAS is built without sbgemm, so this is our own.
//
// C(M, N) (=, or += with accumulate) sum_k A(m, k) B(n, k), where A and B are
// read through strides (element (m, k) of A at A[m * a_m + k * a_k]), so one
// routine covers X W^T, dY W and dY^T X. f32 operands are rounded to bf16
// (nearest even) when packed; a bf16 B is used as stored.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace tessera {

struct GemmOperand {
  const void* p = nullptr;
  bool bf16 = false;  // elements are bf16 (uint16_t), else f32
  int64_t s_row = 0;  // stride between rows (m for A, n for B), in elements
  int64_t s_k = 1;    // stride along k, in elements
  // B only, optional: the same operand already in the kernel's panel layout
  // (gemm_pack_b with the same ctx, K and precision: the AMX and AVX-512
  // layouts differ in k blocking), read instead of packing p again. p
  // must stay valid (the reference path reads it).
  const uint32_t* packed = nullptr;
  int64_t packed_n = 0;  // the N it was packed with (must equal the product's N)
};

// True when this CPU (and ctx.isa) has the AVX-512 BF16 kernel.
bool gemm_bf16_available(const KernelContext& ctx);

// Multi-threaded (ctx.n_threads) over M, N or, when K >> M, N, over K. Falls back to ref::gemm_bf16 when the
// kernel is not available.
void gemm_bf16(KernelContext& ctx, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K,
               float* C, int64_t ldc, bool accumulate);

// The same blocking and threading with f32 panels and f32 FMAs: C (+)= A B^T
// in f32, both operands f32 (an Error otherwise). Training in fp32 takes it
// instead of OpenBLAS sgemm where AVX-512 is available (bench_gemm_bf16
// compares the two); ref::gemm_f32 elsewhere.
void gemm_f32(KernelContext& ctx, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K,
              float* C, int64_t ldc, bool accumulate);

// A B operand (N, K) that many products share (an output layer's weight,
// multiplied once per logit chunk) packed once: gemm_packed_words(N, K, f32)
// words at out, f32 panels for gemm_f32 or bf16 pairs for gemm_bf16, k block
// after k block. Products with it never split K between threads.
// Multi-threaded; needs the AVX-512 kernel.
int64_t gemm_packed_words(int64_t N, int64_t K, bool f32);
void gemm_pack_b(KernelContext& ctx, const GemmOperand& B, int64_t N, int64_t K, bool f32, uint32_t* out);

// dst[i] = bf16(src[i]) (round to nearest even), i < n; multi-threaded. The
// bf16 copy of f32 master weights that bf16 training multiplies with. The
// AVX-512 path (vcvtneps2bf16) flushes f32 subnormals to zero, as does the
// packing of f32 operands in gemm_bf16; otherwise it equals f32_to_bf16.
void convert_to_bf16(KernelContext& ctx, const float* src, uint16_t* dst, int64_t n);

namespace ref {
// The specification: operands rounded to bf16, products summed in f32 in k order.
void gemm_bf16(const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K, float* C, int64_t ldc,
               bool accumulate);
// f32 products summed in k order.
void gemm_f32(const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K, float* C, int64_t ldc,
              bool accumulate);
}  // namespace ref

}  // namespace tessera
