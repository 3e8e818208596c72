#include "kernels/measure.h"

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

// An anonymous mapping (huge pages where the kernel allows), unmapped on scope exit.
class Mapping {
 public:
  explicit Mapping(size_t n) : n_(n) {
    p_ = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p_ == MAP_FAILED) p_ = nullptr;
    if (p_) madvise(p_, n, MADV_HUGEPAGE);
  }
  ~Mapping() {
    if (p_) munmap(p_, n_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  float* data() const { return static_cast<float*>(p_); }

 private:
  void* p_ = nullptr;
  size_t n_;
};

}  // namespace

double measure_read_bandwidth_gbs(KernelContext& ctx) {
  const size_t bytes = size_t(1) << 30;
  Mapping buf(bytes);
  if (!buf.data()) return 0.0;
  const int64_t n = int64_t(bytes / sizeof(float));
  const int T = std::max(1, ctx.n_threads);
  // Each thread faults in (first touch) and later reads its own slice.
#pragma omp parallel num_threads(T)
  {
    const int t = omp_get_thread_num();
    const int64_t b = n * t / T, e = n * (t + 1) / T;
    std::fill(buf.data() + b, buf.data() + e, 1.0f);
  }
  double best = 1e30, sink = 0;
  for (int run = 0; run < 6; ++run) {
    const double t0 = now_s();
#pragma omp parallel num_threads(T) reduction(+ : sink)
    {
      const int t = omp_get_thread_num();
      const int64_t b = (n * t / T) & ~int64_t(63), e = t + 1 == T ? n : (n * (t + 1) / T) & ~int64_t(63);
      sink += read_sum(ctx.isa, buf.data() + b, e - b);
    }
    best = std::min(best, now_s() - t0);
  }
  // sink == n: every element is 1; the check keeps the reads alive.
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

}  // namespace tessera
