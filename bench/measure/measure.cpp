#include "measure/measure.h"

#include "kernels/gemm_bf16.h"

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/gemm.h"

namespace tessera {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double read_sum(Isa isa, const float* p, int64_t n) {
  switch (isa) {
    case Isa::AVX512: return cpu::avx512::stream_read_sum(p, n);
    case Isa::AVX2: return cpu::avx2::stream_read_sum(p, n);
    case Isa::Scalar: break;
  }
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

uint64_t read_xor(Isa isa, const uint8_t* p, int64_t n) {
  switch (isa) {
    case Isa::AVX512: return cpu::avx512::stream_read_xor(p, n);
    case Isa::AVX2: return cpu::avx2::stream_read_xor(p, n);
    case Isa::Scalar: break;
  }
  uint64_t x = 0;
  for (int64_t i = 0; i < n; ++i) x ^= p[i];
  return x;
}

}  // namespace

double stream_read_seconds(KernelContext& ctx, const std::vector<ByteSpan>& spans) {
  const int T = std::max(1, ctx.n_threads);
  uint64_t sink = 0;
  const double t0 = now_s();
#pragma omp parallel num_threads(T) reduction(^ : sink)
  {
    const int t = omp_get_thread_num();
    for (const ByteSpan& s : spans) {
      const size_t b = (s.bytes * size_t(t) / size_t(T)) & ~size_t(255);
      const size_t e = t + 1 == T ? s.bytes : (s.bytes * size_t(t + 1) / size_t(T)) & ~size_t(255);
      if (e > b) sink ^= read_xor(ctx.isa, static_cast<const uint8_t*>(s.data) + b, int64_t(e - b));
    }
  }
  const double seconds = now_s() - t0;
  volatile uint64_t keep = sink;  // keeps the reads alive
  (void)keep;
  return seconds;
}

double measure_read_bandwidth_gbs(KernelContext& ctx) {
  const size_t bytes = size_t(1) << 30;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 0.0;
  madvise(p, bytes, MADV_HUGEPAGE);  // huge pages where the kernel allows
  auto* buf = static_cast<float*>(p);
  const int64_t n = int64_t(bytes / sizeof(float));
  const int T = std::max(1, ctx.n_threads);
  // Each thread faults in (first touch) and later reads its own slice.
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
    std::fill(buf + n * t / T, buf + n * (t + 1) / T, 1.0f);
  }
  double best = 1e30, sink = 0;
  for (int run = 0; run < 6; ++run) {
    const double t0 = now_s();
#pragma omp parallel num_threads(T) reduction(+ : sink)
    {
      const int t = omp_get_thread_num();
      const int64_t b = (n * t / T) & ~int64_t(63), e = t + 1 == T ? n : (n * (t + 1) / T) & ~int64_t(63);
      sink += read_sum(ctx.isa, buf + b, e - b);
    }
    best = std::min(best, now_s() - t0);
  }
  munmap(p, bytes);
  // sink == 6 n: every element is 1; the check keeps the reads alive.
  return sink > 0 ? double(bytes) / best / 1e9 : 0.0;
}

namespace {
constexpr int64_t kPeakN = 2048;  // the peaks are measured on n^3 products, best of 4
template <class F>
double peak_gflops(F&& product) {
  double best = 1e30;
  for (int run = 0; run < 4; ++run) {
    const double t0 = now_s();
    product();
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * double(kPeakN) * double(kPeakN) * double(kPeakN) / best / 1e9;
}
}  // namespace

double measure_gemm_peak_gflops(KernelContext& ctx) {
  const int64_t n = kPeakN;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  return peak_gflops([&] { detail::sgemm_xwt(ctx, a.data(), n, b.data(), n, n, c.data(), n); });
}

double measure_gemm_bf16_peak_gflops(KernelContext& ctx) {
  if (!gemm_bf16_available(ctx)) return 0;
  const int64_t n = kPeakN;
  std::vector<uint16_t> a(size_t(n * n), 0x3f00), b(size_t(n * n), 0x3e80);  // 0.5, 0.25
  std::vector<float> c(size_t(n * n));
  return peak_gflops([&] {
    gemm_bf16(ctx, GemmOperand{a.data(), true, n, 1}, GemmOperand{b.data(), true, n, 1}, n, n, n, c.data(), n, false);
  });
}

double measure_gemm_f32_peak_gflops(KernelContext& ctx) {
  if (!gemm_bf16_available(ctx)) return 0;
  const int64_t n = kPeakN;
  std::vector<float> a(size_t(n * n), 0.5f), b(size_t(n * n), 0.25f), c(size_t(n * n));
  return peak_gflops([&] {
    gemm_f32(ctx, GemmOperand{a.data(), false, n, 1}, GemmOperand{b.data(), false, n, 1}, n, n, n, c.data(), n, false);
  });
}

double measure_fma_peak_gflops(KernelContext& ctx, bool bf16) {
  if (bf16 && (ctx.isa != Isa::AVX512 || ctx.amx)) return 0;
  if (ctx.isa == Isa::Scalar) return 0;
  const int T = std::max(1, ctx.n_threads);
  // FLOPs per loop iteration: 12 accumulators of 16 (AVX-512) or 8 (AVX2) lanes,
  // 2 per FMA lane, 4 per dot-product lane (two bf16 products and their sum into fp32).
  const double lanes = ctx.isa == Isa::AVX512 ? 16 : 8, per_iter = 12 * lanes * (bf16 ? 4 : 2);
  const int64_t iters = 20'000'000;  // ~0.05 s per run at ~5 G instructions/s per core
  double best = 1e30, sink = 0;
  for (int run = 0; run < 5; ++run) {
    const double t0 = now_s();
#pragma omp parallel num_threads(T) reduction(+ : sink)
    {
      if (bf16) sink += cpu::avx512::dpbf16_loop(iters);
      else if (ctx.isa == Isa::AVX512) sink += cpu::avx512::fma_loop_f32(iters);
      else sink += cpu::avx2::fma_loop_f32(iters);
    }
    best = std::min(best, now_s() - t0);
  }
  volatile double keep = sink;  // keeps the loops alive
  (void)keep;
  return double(T) * double(iters) * per_iter / best / 1e9;
}

}  // namespace tessera
