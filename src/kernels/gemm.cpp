#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "kernels/blas_env.h"

namespace tessera::detail {

int64_t blas_min_rows(DType t, Isa isa) {
  if (isa == Isa::Scalar) return 4;
  switch (t) {
    case DType::F32: return 16;
    case DType::F16:
    case DType::BF16: return 16;
    default: return 32;
  }
}

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
