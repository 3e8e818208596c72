// Vectorised exp for the AVX2 files (include only from *_avx2.cpp): as in
// exp_avx512.h (Cody-Waite reduction, Cephes degree-6 polynomial), with 2^n
// built in the exponent bits; inputs are clamped to [-87.3, 88.3] (below -87.3
// gives ~0, large inputs a finite ~1.9e38).
#pragma once
#include "kernels/cpu/exp_poly.h"
#include "kernels/cpu/simd.h"

namespace tessera::cpu::avx2 {
namespace {

inline __m256 exp256(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(exp_poly::kLog2e);
  const __m256 ln2_hi = _mm256_set1_ps(exp_poly::kLn2Hi), ln2_lo = _mm256_set1_ps(exp_poly::kLn2Lo);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(exp_poly::kMinArg)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
  r = _mm256_fnmadd_ps(n, ln2_lo, r);
  __m256 p = _mm256_set1_ps(exp_poly::kC[0]);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::kC[1]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::kC[2]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::kC[3]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::kC[4]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::kC[5]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

}  // namespace
}  // namespace tessera::cpu::avx2
