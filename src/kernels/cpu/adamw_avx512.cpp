// AVX-512 AdamW update (see kernels/adamw.h); tails through masked loads and stores.
#include "kernels/adamw.h"

#include "kernels/cpu/simd.h"

namespace tessera::cpu::avx512 {

void adamw(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t n, float b1, float b2,
           float eps, float lr, float c1, float c2, float decay, float gs) {
  const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), ob1 = _mm512_set1_ps(1.f - b1);
  const __m512 ob2 = _mm512_set1_ps(1.f - b2), veps = _mm512_set1_ps(eps), va = _mm512_set1_ps(lr);
  const __m512 vc1 = _mm512_set1_ps(c1), vc2 = _mm512_set1_ps(c2), vdecay = _mm512_set1_ps(decay);
  const __m512 vgs = _mm512_set1_ps(gs);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __mmask16 dk = _mm_mask_test_epi8_mask(k, _mm_maskz_loadu_epi8(k, mask + i), _mm_set1_epi8(-1));
    __m512 pv = _mm512_maskz_loadu_ps(k, p + i);
    const __m512 gv = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + i), vgs);
    pv = _mm512_mask_mul_ps(pv, dk, pv, vdecay);
    const __m512 mv = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_maskz_loadu_ps(k, m + i)), _mm512_mul_ps(ob1, gv));
    const __m512 vv =
        _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_maskz_loadu_ps(k, v + i)), _mm512_mul_ps(_mm512_mul_ps(ob2, gv), gv));
    const __m512 den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vv, vc2)), veps);
    pv = _mm512_sub_ps(pv, _mm512_div_ps(_mm512_mul_ps(va, _mm512_mul_ps(mv, vc1)), den));
    _mm512_mask_storeu_ps(m + i, k, mv);
    _mm512_mask_storeu_ps(v + i, k, vv);
    _mm512_mask_storeu_ps(p + i, k, pv);
  }
}

}  // namespace tessera::cpu::avx512
