#include "kernels/int8.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace tessera {

void quantize_int8_rows(const TensorView& W, int8_t* q, float* scales) {
  if (W.dtype != DType::F32 && W.dtype != DType::F16 && W.dtype != DType::BF16)
    fail("quantize_int8_rows: needs f32, f16 or bf16 weights, got ", dtype_name(W.dtype));
  const int64_t N = W.rows(), K = W.cols();
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      ref::dequantize_row(W, n, row.data());
      float amax = 0.f;
      for (float v : row) amax = std::max(amax, std::fabs(v));
      const float s = amax / 127.f;
      scales[n] = s;
      for (int64_t k = 0; k < K; ++k) q[n * K + k] = int8_t(s > 0.f ? std::nearbyint(row[size_t(k)] / s) : 0.f);
    }
  }
}

void detail::linear_int8_decomposed(KernelContext& ctx, const Linear& lin, const float* X, int64_t M, float* Y) {
  const TensorView& W = *lin.W;
  const int64_t N = W.rows(), K = W.cols();
  const float thr = W.outlier_threshold;
  float* xc = ctx.int8_buffer(size_t(M * K + K));
  auto* cols = reinterpret_cast<int32_t*>(xc + M * K);
  int64_t n_out = 0;  // the outlier columns: any row above the threshold
  for (int64_t k = 0; k < K; ++k)
    for (int64_t m = 0; m < M; ++m)
      if (std::fabs(X[m * K + k]) > thr) {
        cols[n_out++] = int32_t(k);
        break;
      }
  ctx.int8_stats.products++;
  ctx.int8_stats.outlier_cols += n_out;
  ctx.int8_stats.max_cols = std::max(ctx.int8_stats.max_cols, n_out);
  TensorView plain = W;
  plain.outlier_threshold = 0.f;
  if (n_out == 0) return linear(ctx, Linear{&plain, lin.b}, X, M, Y);
  std::memcpy(xc, X, size_t(M * K) * sizeof(float));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < n_out; ++j) xc[m * K + cols[j]] = 0.f;
  linear(ctx, Linear{&plain, lin.b}, xc, M, Y);
  // Y[m, n] += sum over outlier columns k of X[m, k] * q[n, k] * scale[n], in f32.
  const auto* q = static_cast<const int8_t*>(W.data);
#pragma omp parallel for schedule(static) num_threads(ctx.n_threads) if (N * M * n_out >= (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* qn = q + n * K;
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t j = 0; j < n_out; ++j) acc += X[m * K + cols[j]] * float(qn[cols[j]]);
      Y[m * N + n] += acc * W.scales[n];
    }
  }
}

}  // namespace tessera
