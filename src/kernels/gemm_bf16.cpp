#include "kernels/gemm_bf16.h"

#include <omp.h>

#include <algorithm>

#include "core/error.h"
#include "core/fp16.h"

namespace tessera {

namespace cpu::avx512 {
int64_t gemm_work_words(int64_t m, int64_t n, bool f32);
int64_t gemm_panel_width(bool f32);  // columns of C per micro-kernel call (and of a packed B panel)
void convert_bf16(const float* src, uint16_t* dst, int64_t n);
void gemm_bf16_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work);
void gemm_f32_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                    int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work);
int64_t gemm_pack_b_rows(const GemmOperand& B, int64_t N, int64_t K, bool f32, int64_t n0, int64_t n1,
                         uint32_t* out);
}  // namespace cpu::avx512
namespace cpu::amx {
int64_t gemm_work_words(int64_t m, int64_t n);
void gemm_bf16_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work);
int64_t gemm_pack_b_rows(const GemmOperand& B, int64_t N, int64_t K, int64_t n0, int64_t n1, uint32_t* out);
}  // namespace cpu::amx

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

void convert_to_bf16(KernelContext& ctx, const float* src, uint16_t* dst, int64_t n) {
  const bool fast = gemm_bf16_available(ctx);
  const int64_t chunk = 1 << 16;
#pragma omp parallel for schedule(static) num_threads(std::max(1, ctx.n_threads))
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t e = std::min(n, i + chunk);
    if (fast) {
      cpu::avx512::convert_bf16(src + i, dst + i, e - i);
    } else {
      for (int64_t j = i; j < e; ++j) dst[j] = f32_to_bf16(src[j]);
    }
  }
}

void ref::gemm_f32(const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K, float* C,
                   int64_t ldc, bool accumulate) {
  const auto* a = static_cast<const float*>(A.p);
  const auto* b = static_cast<const float*>(B.p);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += a[m * A.s_row + k * A.s_k] * b[n * B.s_row + k * B.s_k];
      C[m * ldc + n] = accumulate ? C[m * ldc + n] + s : s;
    }
}

namespace {
// The threading shared by the bf16 and f32 GEMMs (blocks of C per thread; the
// cpu::avx512 kernels, or for bf16 with ctx.amx the cpu::amx one).
void run_gemm(KernelContext& ctx, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K,
              float* C, int64_t ldc, bool accumulate, bool f32) {
  const bool amx = !f32 && ctx.amx;
  const auto block = f32 ? cpu::avx512::gemm_f32_block : amx ? cpu::amx::gemm_bf16_block : cpu::avx512::gemm_bf16_block;
  const auto work_words = [amx, f32](int64_t m, int64_t n) {
    return amx ? cpu::amx::gemm_work_words(m, n) : cpu::avx512::gemm_work_words(m, n, f32);
  };
  const int64_t m_unit = amx ? 32 : 8;                                // rows of C per micro-kernel call
  const int64_t n_unit = amx ? 32 : cpu::avx512::gemm_panel_width(f32);  // columns
  if (B.packed && B.packed_n != N) fail("gemm: a pre-packed B of ", B.packed_n, " rows used with N = ", N);
  const int nt = std::max(1, ctx.n_threads);
  // K much longer than M and N (dY W of an output layer: 256 x 288 x 32000):
  // the threads split K, each packing its own slices of both operands, and
  // the partial products are summed at the end. Otherwise the larger of M and
  // N is split (in whole micro-panels), so each thread packs only its share
  // of that operand. Packing reads f32 operands directly (rounding as it goes).
  if (nt > 1 && K >= 4 * std::max(M, N) && K >= 1024 && !B.packed) {
    const int64_t words = work_words(M, N), mn = M * N;
    auto* base = static_cast<uint32_t*>(ctx.scratch(size_t(nt) * size_t(words) * 4 + size_t(nt - 1) * size_t(mn) * 4));
    auto* partial = reinterpret_cast<float*>(base + size_t(nt) * size_t(words));
    auto at_k = [](const GemmOperand& o, int64_t k) {
      GemmOperand r = o;
      r.p = o.bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(o.p) + k * o.s_k)
                   : static_cast<const void*>(static_cast<const float*>(o.p) + k * o.s_k);
      return r;
    };
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      // Slices start at even k (whole bf16 pairs; for AMX at whole k tiles of 32).
      const int64_t ka = amx ? 32 : 2;
      const int64_t k0 = K * t / n / ka * ka, k1 = t + 1 == n ? K : K * (t + 1) / n / ka * ka;
      float* c = t == 0 ? C : partial + size_t(t - 1) * size_t(mn);
      block(at_k(A, k0), at_k(B, k0), k1 - k0, c, t == 0 ? ldc : N, t == 0 && accumulate, 0, M, 0, N,
            base + size_t(t) * size_t(words));
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m)
        for (int u = 1; u < n; ++u) {
          const float* pm = partial + size_t(u - 1) * size_t(mn) + size_t(m * N);
          for (int64_t j = 0; j < N; ++j) C[m * ldc + j] += pm[j];
        }
    }
    return;
  }
  // The larger dimension is split, unless whole panels divide the other more evenly
  // (N = 288 is 9 panels of 32: 4 + 5 between two threads, 20% idle; M = 288 is 36 rows of 8).
  auto imbalance = [nt](int64_t dim, int64_t unit) {
    const int64_t units = (dim + unit - 1) / unit, parts = std::max<int64_t>(1, std::min<int64_t>(nt, units));
    return double((units + parts - 1) / parts * unit) * double(parts) / double(dim);  // busiest / mean
  };
  const double im = imbalance(M, m_unit), in = imbalance(N, n_unit);
  const bool split_m = M > N ? im <= in * 1.05 : im * 1.05 < in;
  const int64_t unit = split_m ? m_unit : n_unit, units = ((split_m ? M : N) + unit - 1) / unit;
  const int parts = int(std::max<int64_t>(1, std::min<int64_t>(nt, units)));
  const int64_t share = (units + parts - 1) / parts * unit;  // of the split dimension
  const int64_t words = split_m ? work_words(share, N) : work_words(M, share);
  auto* work = static_cast<uint32_t*>(ctx.scratch(size_t(parts) * size_t(words) * 4));
#pragma omp parallel num_threads(parts)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t u0 = units * t / n, u1 = units * (t + 1) / n;
    int64_t m0 = 0, m1 = M, n0 = 0, n1 = N;
    if (split_m) {
      m0 = std::min(M, u0 * unit), m1 = std::min(M, u1 * unit);
    } else {
      n0 = std::min(N, u0 * unit), n1 = std::min(N, u1 * unit);
    }
    if (m0 < m1 && n0 < n1) block(A, B, K, C, ldc, accumulate, m0, m1, n0, n1, work + t * words);
  }
}
}  // namespace

int64_t gemm_packed_words(int64_t N, int64_t K, bool f32) {
  const int64_t w = cpu::avx512::gemm_pack_b_rows(GemmOperand{}, N, K, f32, 0, 0, nullptr);
  // bf16: room for either kernel's layout (the AMX one pads k blocks to whole tiles).
  return f32 ? w : std::max(w, cpu::amx::gemm_pack_b_rows(GemmOperand{}, N, K, 0, 0, nullptr));
}

void gemm_pack_b(KernelContext& ctx, const GemmOperand& B, int64_t N, int64_t K, bool f32, uint32_t* out) {
  if (!gemm_bf16_available(ctx)) fail("gemm_pack_b: needs the AVX-512 kernel");
  if (f32 && B.bf16) fail("gemm_pack_b: f32 panels need an f32 operand");
  const bool amx = !f32 && ctx.amx;
  const int64_t w = amx ? 32 : cpu::avx512::gemm_panel_width(f32), panels = (N + w - 1) / w;
#pragma omp parallel for schedule(static) num_threads(std::max(1, ctx.n_threads))
  for (int64_t q = 0; q < panels; q += 8) {  // 8 panels per task
    const int64_t n0 = q * w, n1 = std::min(N, (q + 8) * w);
    if (amx) {
      cpu::amx::gemm_pack_b_rows(B, N, K, n0, n1, out);
    } else {
      cpu::avx512::gemm_pack_b_rows(B, N, K, f32, n0, n1, out);
    }
  }
}

void gemm_bf16(KernelContext& ctx, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K,
               float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (!gemm_bf16_available(ctx)) return ref::gemm_bf16(A, B, M, N, K, C, ldc, accumulate);
  run_gemm(ctx, A, B, M, N, K, C, ldc, accumulate, false);
}

void gemm_f32(KernelContext& ctx, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N, int64_t K,
              float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (A.bf16 || B.bf16) fail("gemm_f32: operands must be f32");
  if (!gemm_bf16_available(ctx)) return ref::gemm_f32(A, B, M, N, K, C, ldc, accumulate);
  run_gemm(ctx, A, B, M, N, K, C, ldc, accumulate, true);
}

}  // namespace tessera
