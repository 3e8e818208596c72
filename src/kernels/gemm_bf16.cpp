#include "kernels/gemm_bf16.h"

#include <omp.h>

#include <algorithm>

#include "core/fp16.h"

namespace tessera {

namespace cpu::avx512 {
int64_t gemm_bf16_work_words(int64_t m);
void convert_bf16(const float* src, uint16_t* dst, int64_t n);
void gemm_bf16_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work);
}  // namespace cpu::avx512

namespace {
inline float bf(const GemmOperand& o, int64_t row, int64_t k) {
  const int64_t i = row * o.s_row + k * o.s_k;
  return o.bf16 ? bf16_to_f32(static_cast<const uint16_t*>(o.p)[i])
                : bf16_to_f32(f32_to_bf16(static_cast<const float*>(o.p)[i]));
}
}  // namespace

void ref::gemm_bf16(const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K, float* C,
                    int64_t ldc, bool accumulate) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += bf(A, m, k) * bf(B, n, k);
      C[m * ldc + n] = accumulate ? C[m * ldc + n] + s : s;
    }
}

bool gemm_bf16_available(const KernelContext& ctx) { return ctx.isa == Isa::AVX512; }

void gemm_bf16(KernelContext& ctx, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K,
               float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (!gemm_bf16_available(ctx)) return ref::gemm_bf16(A, B, M, N, K, C, ldc, accumulate);
  // f32 operands are converted to bf16 once (vectorized) into dense copies with
  // the same strides; each thread then packs from bf16. The larger of M and N
  // is split between threads (in whole micro-panels), so each packs only its share.
  const int nt = std::max(1, ctx.n_threads);
  const bool split_m = M > N;
  const int64_t unit = split_m ? 8 : 32, units = ((split_m ? M : N) + unit - 1) / unit;
  const int parts = int(std::max<int64_t>(1, std::min<int64_t>(nt, units)));
  const int64_t share = split_m ? (units + parts - 1) / parts * unit : M;
  const int64_t words = cpu::avx512::gemm_bf16_work_words(share);
  // Dense extent of an operand: rows x k with strides (s_row, s_k), one of them 1.
  auto extent = [K](const GemmOperand& o, int64_t rows) {
    return o.s_k == 1 ? (rows - 1) * o.s_row + K : (K - 1) * o.s_k + rows;
  };
  const int64_t a_n = A.bf16 ? 0 : extent(A, M), b_n = B.bf16 ? 0 : extent(B, N);
  auto* work = static_cast<uint32_t*>(ctx.scratch(size_t(parts) * size_t(words) * 4 + size_t(a_n + b_n + 64) * 2));
  auto* a16 = reinterpret_cast<uint16_t*>(work + size_t(parts) * size_t(words));
  auto* b16 = a16 + a_n + 32;
  GemmOperand Ab = A, Bb = B;
#pragma omp parallel num_threads(parts)
  {
    if (!A.bf16) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < a_n; i += 4096)
        cpu::avx512::convert_bf16(static_cast<const float*>(A.p) + i, a16 + i, std::min<int64_t>(4096, a_n - i));
    }
    if (!B.bf16) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < b_n; i += 4096)
        cpu::avx512::convert_bf16(static_cast<const float*>(B.p) + i, b16 + i, std::min<int64_t>(4096, b_n - i));
    }
#pragma omp single
    {
      if (!A.bf16) Ab.p = a16, Ab.bf16 = true;
      if (!B.bf16) Bb.p = b16, Bb.bf16 = true;
    }
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t u0 = units * t / n, u1 = units * (t + 1) / n;
    int64_t m0 = 0, m1 = M, n0 = 0, n1 = N;
    if (split_m) {
      m0 = std::min(M, u0 * unit), m1 = std::min(M, u1 * unit);
    } else {
      n0 = std::min(N, u0 * unit), n1 = std::min(N, u1 * unit);
    }
    if (m0 < m1 && n0 < n1) cpu::avx512::gemm_bf16_block(Ab, Bb, K, C, ldc, accumulate, m0, m1, n0, n1, work + t * words);
  }
}

}  // namespace tessera
