// Large-M (prefill) matrix multiplication through OpenBLAS sgemm. Internal to
// the kernels layer; matmul() in dispatch.cpp decides when to come here.
#pragma once
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

namespace tessera::detail {

// Smallest M for which matmul() takes the sgemm path instead of the
// matrix-vector kernels (measured on Zen 5; see docs/kernels.md).
int64_t blas_min_rows(const TensorView& W, Isa isa);

// Smallest M for which BF16 weights take the bf16 GEMM (kernels/gemm_bf16.h:
// activations rounded to bf16, f32 accumulation) instead of the matrix-vector
// kernels; INT64_MAX where the ISA has no AVX-512 BF16 (measured: docs/kernels.md).
int64_t bf16_gemm_min_rows(Isa isa);

// Y(M, N) (row stride ldy) = X(M, K) . W(N, K)^T, f32, on ctx.n_threads threads.
void sgemm_xwt(KernelContext& ctx, const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y,
               int64_t ldy);

// Any dtype: F32 goes straight to sgemm; other types are dequantized a panel
// of rows at a time into ctx.scratch() (with dq, in parallel) and multiplied
// panel by panel.
void matmul_blas(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y, cpu::DequantRowFn dq);

// Whether W's matrix-vector kernels compute with integer (quantized) activations
// (Q8_0 / Q4_0 and the other GGUF block types, Q8_G with groups of 32k); defined
// in dispatch.cpp.
bool integer_activations(const TensorView& W);

// The matrix-vector path for any M (what matmul() takes below blas_min_rows);
// defined in dispatch.cpp. For benchmarks and tests that compare the two paths.
void matmul_matvec(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y);

}  // namespace tessera::detail
