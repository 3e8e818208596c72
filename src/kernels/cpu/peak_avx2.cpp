// Register-only FMA loop on 256-bit vectors: the arithmetic ceiling of one
// AVX2 core (see peak_avx512.cpp).
#include "kernels/cpu/simd.h"

#include "kernels/cpu/cpu_kernels.h"

namespace tessera::cpu::avx2 {

double fma_loop_f32(int64_t iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1e-3f * float(i));
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  alignas(32) float v[8];
  _mm256_store_ps(v, s);
  double r = 0;
  for (float x : v) r += x;
  return r;
}

}  // namespace tessera::cpu::avx2
