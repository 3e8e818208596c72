// Register-only multiply-add loops: the arithmetic ceiling of one core, the
// physical limit that `tessera bench` reports GEMM and training rates against.
// Twelve independent accumulators cover the FMA latency of every current core
// (4-5 cycles on 2 pipes); nothing is loaded or stored inside the loop.
#include "kernels/cpu/simd.h"

#include "kernels/cpu/cpu_kernels.h"

namespace tessera::cpu::avx512 {
namespace {

// Runs a_i = step(a_i) on 12 accumulators (a_i = 1e-3 i to start) and returns their sum.
template <class Step>
double loop12(int64_t iters, Step step) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(1e-3f * float(i));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = step(a[i]);
  }
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  return double(_mm512_reduce_add_ps(s));
}

}  // namespace

double fma_loop_f32(int64_t iters) {
  const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);
  return loop12(iters, [&](__m512 a) { return _mm512_fmadd_ps(a, b, c); });
}

double dpbf16_loop(int64_t iters) {
  // bf16 pairs of 0.5 (0x3f00) and 2^-10 (0x3a80): each step adds 2 * 2^-11.
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f00), c = (__m512bh)_mm512_set1_epi16(0x3a80);
  return loop12(iters, [&](__m512 a) { return _mm512_dpbf16_ps(a, b, c); });
}

}  // namespace tessera::cpu::avx512
