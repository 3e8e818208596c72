// AVX2 + FMA forward GELU (tanh form) and SwiGLU (see kernels/act.h), the same
// formulas as act_avx512.cpp on 8 lanes; tails of fewer than 8 elements run
// through masked loads and stores.
#include "kernels/act.h"

#include "kernels/cpu/exp_avx2.h"

namespace tessera::cpu::avx2 {

namespace {

// Lanes [0, min(left, 8)) set.
inline __m256i mask_of(int64_t left) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left < 8 ? left : 8)), lane);
}

}  // namespace

void gelu_fwd(float* y, const float* x, int64_t n) {
  const __m256 c = _mm256_set1_ps(0.7978845608028654f), a = _mm256_set1_ps(0.044715f);
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), two = _mm256_set1_ps(2.f);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i m = mask_of(n - i);
    const __m256 v = _mm256_maskload_ps(x + i, m);
    const __m256 u = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(a, v), _mm256_mul_ps(v, v), v));
    // 1 + tanh(u) = 2 e / (e + 1), e = exp(2u) (capped finite): no cancellation in either tail.
    const __m256 e = exp256(_mm256_min_ps(_mm256_add_ps(u, u), _mm256_set1_ps(88.f)));
    const __m256 plus = _mm256_mul_ps(e, _mm256_div_ps(two, _mm256_add_ps(e, one)));
    _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(_mm256_mul_ps(half, v), plus));
  }
}

void swiglu_fwd(float* h, const float* g, const float* u, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i m = mask_of(n - i);
    const __m256 gv = _mm256_maskload_ps(g + i, m), uv = _mm256_maskload_ps(u + i, m);
    // silu(g) = g / (1 + exp(-g)), exp capped finite
    const __m256 e = exp256(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), gv), _mm256_set1_ps(88.f)));
    _mm256_maskstore_ps(h + i, m, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), uv));
  }
}

}  // namespace tessera::cpu::avx2
