// AVX-512 softmax cross-entropy row (see kernels/xent.h): vector max, a
// polynomial exp (Cody-Waite range reduction, degree-6 minimax polynomial,
// scaling by 2^n with vscalefps), sums kept in 16 lanes until the end.
#include <cmath>

#include "kernels/cpu/exp_avx512.h"
#include "kernels/xent.h"

namespace tessera::cpu::avx512 {

float xent_row(float* z, int64_t V, int32_t target, float alpha, float scale) {
  const int64_t Vv = V / 16 * 16;
  const __mmask16 tail = __mmask16((1u << (V - Vv)) - 1);
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t v = 0; v < Vv; v += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(z + v));
  if (tail) m = _mm512_mask_max_ps(m, tail, m, _mm512_maskz_loadu_ps(tail, z + Vv));
  const float mx = _mm512_reduce_max_ps(m);
  const __m512 mv = _mm512_set1_ps(mx);
  __m512 s = _mm512_setzero_ps();
  for (int64_t v = 0; v < Vv; v += 16) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(z + v), mv));
    _mm512_storeu_ps(z + v, e);
    s = _mm512_add_ps(s, e);
  }
  if (tail) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, z + Vv), mv));
    _mm512_mask_storeu_ps(z + Vv, tail, e);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(tail, e));
  }
  const float sum = _mm512_reduce_add_ps(s);
  const float lse = mx + std::log(sum);
  const __m512 k = _mm512_set1_ps((1.f + 2.f * alpha * lse) / sum * scale);
  for (int64_t v = 0; v < Vv; v += 16) _mm512_storeu_ps(z + v, _mm512_mul_ps(_mm512_loadu_ps(z + v), k));
  if (tail) _mm512_mask_storeu_ps(z + Vv, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, z + Vv), k));
  z[target] -= scale;
  return lse;
}

}  // namespace tessera::cpu::avx512
