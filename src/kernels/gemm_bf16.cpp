#include "kernels/gemm_bf16.h"

#include <omp.h>

#include <algorithm>

#include "core/fp16.h"

namespace tessera {

namespace cpu::avx512 {
int64_t gemm_bf16_work_words(int64_t M);
void gemm_bf16_range(const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t K, float* C, int64_t ldc,
                     bool accumulate, int64_t n0, int64_t n1, uint32_t* work);
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
  // Split N into per-thread ranges of whole 32-column panels; packing space from the context's scratch.
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(ctx.n_threads, (N + 31) / 32)));
  const int64_t words = cpu::avx512::gemm_bf16_work_words(M);
  auto* work = static_cast<uint32_t*>(ctx.scratch(size_t(nt) * size_t(words) * 4));
  const int64_t panels = (N + 31) / 32;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t p0 = panels * t / n, p1 = panels * (t + 1) / n;
    const int64_t n0 = std::min(N, p0 * 32), n1 = std::min(N, p1 * 32);
    if (n0 < n1) cpu::avx512::gemm_bf16_range(A, B, M, K, C, ldc, accumulate, n0, n1, work + t * words);
  }
}

}  // namespace tessera
