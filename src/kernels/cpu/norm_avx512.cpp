// AVX-512 RMSNorm and LayerNorm rows (see kernels/norm.h); tails through masked loads and stores.
#include "kernels/norm.h"

#include <cmath>

#include "kernels/cpu/simd.h"

namespace tessera::cpu::avx512 {

namespace {
inline __mmask16 mask_of(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }
}  // namespace

float rmsnorm_row(float* y, const float* x, const float* w, int64_t C, float eps) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(mask_of(C - c), x + c);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const float r = 1.f / std::sqrt(_mm512_reduce_add_ps(ss) / float(C) + eps);
  const __m512 rv = _mm512_set1_ps(r);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + c), rv);
    _mm512_mask_storeu_ps(y + c, k, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + c)));
  }
  return r;
}

void rmsnorm_bwd_row(float* dx, const float* dy, const float* x, const float* w, float r, int64_t C, bool accumulate) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 gw = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + c), _mm512_maskz_loadu_ps(k, w + c));
    s = _mm512_fmadd_ps(gw, _mm512_maskz_loadu_ps(k, x + c), s);
  }
  const __m512 kv = _mm512_set1_ps(_mm512_reduce_add_ps(s) * r * r * r / float(C)), rv = _mm512_set1_ps(r);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 gw = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + c), _mm512_maskz_loadu_ps(k, w + c));
    __m512 v = _mm512_sub_ps(_mm512_mul_ps(rv, gw), _mm512_mul_ps(kv, _mm512_maskz_loadu_ps(k, x + c)));
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, dx + c));
    _mm512_mask_storeu_ps(dx + c, k, v);
  }
}

void rmsnorm_dw(float* dw, const float* dy, const float* x, const float* rstd, int64_t N, int64_t C, int64_t c0,
                int64_t c1) {
  for (int64_t c = c0; c < c1; c += 64) {  // 4 vectors of columns kept in registers over all rows
    const int64_t e = c1 - c < 64 ? c1 : c + 64;
    __m512 acc[4];
    __mmask16 k[4];
    for (int j = 0; j < 4; ++j) {
      k[j] = c + 16 * j < e ? mask_of(e - c - 16 * j) : __mmask16(0);
      acc[j] = _mm512_maskz_loadu_ps(k[j], dw + c + 16 * j);
    }
    for (int64_t n = 0; n < N; ++n) {
      const __m512 r = _mm512_set1_ps(rstd[n]);
      for (int j = 0; j < 4; ++j) {
        const int64_t i = n * C + c + 16 * j;
        const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k[j], dy + i), _mm512_maskz_loadu_ps(k[j], x + i));
        acc[j] = _mm512_fmadd_ps(g, r, acc[j]);
      }
    }
    for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(dw + c + 16 * j, k[j], acc[j]);
  }
}

float layernorm_row(float* y, const float* x, const float* w, const float* b, int64_t C, float eps, float* mean) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(mask_of(C - c), x + c));
  const float m = _mm512_reduce_add_ps(s) / float(C);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 v = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + c), mv);
    v = _mm512_fmadd_ps(d, d, v);
  }
  const float r = 1.f / std::sqrt(_mm512_reduce_add_ps(v) / float(C) + eps);
  const __m512 rv = _mm512_set1_ps(r);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), mv), rv);
    _mm512_mask_storeu_ps(y + c, k,
                          _mm512_fmadd_ps(xh, _mm512_maskz_loadu_ps(k, w + c), _mm512_maskz_loadu_ps(k, b + c)));
  }
  *mean = m;
  return r;
}

void layernorm_bwd_row(float* dx, const float* dy, const float* x, const float* w, float m, float r, int64_t C,
                       bool accumulate) {
  const __m512 mv = _mm512_set1_ps(m), rv = _mm512_set1_ps(r);
  __m512 s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 d = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + c), _mm512_maskz_loadu_ps(k, w + c));
    const __m512 xh = _mm512_mul_ps(_mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + c), mv), rv);
    s1 = _mm512_add_ps(s1, d);
    s2 = _mm512_fmadd_ps(d, xh, s2);
  }
  const __m512 a1 = _mm512_set1_ps(_mm512_reduce_add_ps(s1) / float(C));
  const __m512 a2 = _mm512_set1_ps(_mm512_reduce_add_ps(s2) / float(C));
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask_of(C - c);
    const __m512 d = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + c), _mm512_maskz_loadu_ps(k, w + c));
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), mv), rv);
    __m512 v = _mm512_mul_ps(rv, _mm512_sub_ps(_mm512_sub_ps(d, a1), _mm512_mul_ps(xh, a2)));
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, dx + c));
    _mm512_mask_storeu_ps(dx + c, k, v);
  }
}

void layernorm_dwdb(float* dw, float* db, const float* dy, const float* x, const float* mean, const float* rstd,
                    int64_t N, int64_t C, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 32) {  // 2 vectors of columns, dw and db, kept in registers over all rows
    const int64_t e = c1 - c < 32 ? c1 : c + 32;
    __m512 aw[2], ab[2];
    __mmask16 k[2];
    for (int j = 0; j < 2; ++j) {
      k[j] = c + 16 * j < e ? mask_of(e - c - 16 * j) : __mmask16(0);
      aw[j] = _mm512_maskz_loadu_ps(k[j], dw + c + 16 * j);
      ab[j] = _mm512_maskz_loadu_ps(k[j], db + c + 16 * j);
    }
    for (int64_t n = 0; n < N; ++n) {
      const __m512 mv = _mm512_set1_ps(mean[n]), rv = _mm512_set1_ps(rstd[n]);
      for (int j = 0; j < 2; ++j) {
        const int64_t i = n * C + c + 16 * j;
        const __m512 g = _mm512_maskz_loadu_ps(k[j], dy + i);
        const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k[j], x + i), mv), rv);
        aw[j] = _mm512_fmadd_ps(g, xh, aw[j]);
        ab[j] = _mm512_add_ps(ab[j], g);
      }
    }
    for (int j = 0; j < 2; ++j) {
      _mm512_mask_storeu_ps(dw + c + 16 * j, k[j], aw[j]);
      _mm512_mask_storeu_ps(db + c + 16 * j, k[j], ab[j]);
    }
  }
}

}  // namespace tessera::cpu::avx512
