// Vectorised exp for the AVX-512 files (include only from *_avx512.cpp):
// Cody-Waite range reduction, the Cephes degree-6 polynomial, 2^n by vscalefps.
// Relative error < 2e-7; inputs below -87.3 give 0, large inputs +inf.
#pragma once
#include "kernels/cpu/exp_poly.h"
#include "kernels/cpu/simd.h"

namespace tessera::cpu::avx512 {
namespace {

inline __m512 exp_ps(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(exp_poly::kLog2e);
  const __m512 ln2_hi = _mm512_set1_ps(exp_poly::kLn2Hi), ln2_lo = _mm512_set1_ps(exp_poly::kLn2Lo);
  x = _mm512_max_ps(x, _mm512_set1_ps(exp_poly::kMinArg));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
  r = _mm512_fnmadd_ps(n, ln2_lo, r);
  // Cephes expf polynomial: 1 + r + r^2 (c0 + c1 r + ... + c5 r^5)
  __m512 p = _mm512_set1_ps(exp_poly::kC[0]);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::kC[1]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::kC[2]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::kC[3]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::kC[4]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::kC[5]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

}  // namespace
}  // namespace tessera::cpu::avx512
