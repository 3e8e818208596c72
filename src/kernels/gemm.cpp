#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstdint>

#include "kernels/blas_env.h"

namespace tessera::detail {

// Crossover measured on 5632 x 2048 BF16 weights (docs/kernels.md): M = 32 at 2 threads, ~40 at 1.
int64_t bf16_gemm_min_rows(Isa isa) { return isa == Isa::AVX512 ? 48 : INT64_MAX; }

int64_t blas_min_rows(const TensorView& W, Isa isa) {
  constexpr int64_t kNever = INT64_MAX;
  const bool int8_path = integer_activations(W);
  switch (isa) {
    case Isa::Scalar: return 4;
    case Isa::AVX2:
      // No VNNI: the matrix-vector kernels top out near 90 GFLOP/s per core.
      return W.dtype == DType::F32 ? 12 : 32;
    case Isa::AVX512:
      // The VNNI int8 kernels beat dequantize + sgemm at every M (about
      // 220 vs 186 GFLOP/s per core at M = 512), so quantized weights stay on them.
      if (int8_path) return kNever;
      if (W.dtype == DType::F16 || W.dtype == DType::BF16) return 384;
      return W.dtype == DType::F32 ? 40 : 16;
  }
  return 4;
}

}  // namespace tessera::detail

namespace tessera {
void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K),
              alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
}  // namespace tessera

namespace tessera::detail {

void sgemm_xwt(KernelContext& ctx, const float* X, int64_t M, const float* W, int64_t N, int64_t K, float* Y,
               int64_t ldy) {
  set_blas_threads(ctx.n_threads);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.f, X, int(K), W, int(K), 0.f, Y,
              int(ldy));
}

void matmul_blas(KernelContext& ctx, const TensorView& W, const float* X, int64_t M, float* Y, cpu::DequantRowFn dq) {
  const int64_t N = W.rows(), K = W.cols();
  if (W.dtype == DType::F32) return sgemm_xwt(ctx, X, M, W.f32(), N, K, Y, N);
  // Panels of ~8 MiB of f32 rows: big enough that sgemm runs near its peak,
  // small enough to stay in the LLC while sgemm reads it.
  const int64_t panel = std::min(N, std::max<int64_t>(64, (int64_t(8) << 20) / (4 * K) / 16 * 16));
  float* buf = static_cast<float*>(ctx.scratch(size_t(panel) * size_t(K) * sizeof(float)));
  for (int64_t n0 = 0; n0 < N; n0 += panel) {
    const int64_t nb = std::min(panel, N - n0);
#pragma omp parallel for num_threads(ctx.n_threads) schedule(static)
    for (int64_t n = 0; n < nb; ++n) dq(W, n0 + n, buf + n * K);
    sgemm_xwt(ctx, X, M, buf, nb, K, Y + n0, N);
  }
}

}  // namespace tessera::detail
