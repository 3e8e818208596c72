// AVX-512 GELU (tanh form), SwiGLU and the causal attention softmax row,
// forward and backward (see kernels/act.h).
// Tails of fewer than 16 elements run through masked loads and stores.
#include "kernels/act.h"

#include <cmath>

#include "kernels/cpu/exp_avx512.h"

namespace tessera::cpu::avx512 {

namespace {

inline __mmask16 mask_of(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

// 1 + tanh(u) = 2 e / (e + 1) and 1 - tanh(u) = 2 / (e + 1) with e = exp(2u):
// both tails without cancellation (u capped at 44 so that e stays finite).
struct OnePmTanh {
  __m512 plus, minus;
};
inline OnePmTanh one_pm_tanh(__m512 u) {
  const __m512 one = _mm512_set1_ps(1.f), two = _mm512_set1_ps(2.f);
  const __m512 e = exp_ps(_mm512_min_ps(_mm512_add_ps(u, u), _mm512_set1_ps(88.f)));
  const __m512 inv = _mm512_div_ps(two, _mm512_add_ps(e, one));
  return {_mm512_mul_ps(e, inv), inv};
}

// sigmoid(g) = 1 / (1 + e) and 1 - sigmoid(g) = e / (1 + e), e = exp(-g) (capped finite).
struct Sigmoid {
  __m512 s, one_minus;
};
inline Sigmoid sigmoid_ps(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 e = exp_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), g), _mm512_set1_ps(88.f)));
  const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
  return {inv, _mm512_mul_ps(e, inv)};
}

constexpr float kC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kA = 0.044715f;

}  // namespace

void gelu_fwd(float* y, const float* x, int64_t n) {
  const __m512 c = _mm512_set1_ps(kC), a = _mm512_set1_ps(kA), half = _mm512_set1_ps(0.5f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask_of(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(a, v), _mm512_mul_ps(v, v), v));
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(half, v), one_pm_tanh(u).plus));
  }
}

void gelu_bwd(float* dx, const float* dy, const float* x, int64_t n) {
  const __m512 c = _mm512_set1_ps(kC), a = _mm512_set1_ps(kA), a3 = _mm512_set1_ps(3 * kA);
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask_of(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i), g = _mm512_maskz_loadu_ps(m, dy + i);
    const __m512 v2 = _mm512_mul_ps(v, v);
    const OnePmTanh t = one_pm_tanh(_mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(a, v), v2, v)));
    // d/dx = 0.5 (1 + t) + 0.5 x (1 - t)(1 + t) c (1 + 3 a x^2)
    const __m512 dt = _mm512_mul_ps(_mm512_mul_ps(t.minus, t.plus), _mm512_mul_ps(c, _mm512_fmadd_ps(a3, v2, one)));
    const __m512 d = _mm512_mul_ps(half, _mm512_fmadd_ps(v, dt, t.plus));
    _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(g, d));
  }
}

void swiglu_fwd(float* h, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask_of(n - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
    _mm512_mask_storeu_ps(h + i, m, _mm512_mul_ps(_mm512_mul_ps(gv, sigmoid_ps(gv).s), uv));
  }
}

void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mask_of(n - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
    const __m512 d = _mm512_maskz_loadu_ps(m, dh + i);
    const Sigmoid sg = sigmoid_ps(gv);
    _mm512_mask_storeu_ps(du + i, m, _mm512_mul_ps(d, _mm512_mul_ps(gv, sg.s)));
    // dg = dh u sg (1 + g (1 - sg))
    const __m512 k = _mm512_fmadd_ps(gv, sg.one_minus, one);
    _mm512_mask_storeu_ps(dg + i, m, _mm512_mul_ps(_mm512_mul_ps(d, uv), _mm512_mul_ps(sg.s, k)));
  }
}

float softmax_row(float* p, int64_t n, int64_t n_zero) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, mask_of(n - j), p + j));
  const float row_max = _mm512_reduce_max_ps(mx);
  const __m512 m = _mm512_set1_ps(row_max);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = mask_of(n - j);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + j), m));
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
    _mm512_mask_storeu_ps(p + j, k, e);
  }
  const float total = _mm512_reduce_add_ps(sum);
  const __m512 inv = _mm512_set1_ps(1.f / total);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = mask_of(n - j);
    _mm512_mask_storeu_ps(p + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + j), inv));
  }
  for (int64_t j = n; j < n_zero; j += 16) _mm512_mask_storeu_ps(p + j, mask_of(n_zero - j), _mm512_setzero_ps());
  return row_max + std::log(total);
}

void exp_shift_row(float* p, int64_t n, int64_t n_zero, float shift) {
  const __m512 m = _mm512_set1_ps(shift);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = mask_of(n - j);
    _mm512_mask_storeu_ps(p + j, k, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + j), m)));
  }
  for (int64_t j = n; j < n_zero; j += 16) _mm512_mask_storeu_ps(p + j, mask_of(n_zero - j), _mm512_setzero_ps());
}

void softmax_bwd_row(const float* p, float* d, int64_t n, int64_t n_zero, float scale) {
  __m512 dot = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = mask_of(n - j);
    dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, p + j), _mm512_maskz_loadu_ps(k, d + j), dot);
  }
  const __m512 s = _mm512_set1_ps(_mm512_reduce_add_ps(dot)), sc = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = mask_of(n - j);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + j), _mm512_sub_ps(_mm512_maskz_loadu_ps(k, d + j), s));
    _mm512_mask_storeu_ps(d + j, k, _mm512_mul_ps(g, sc));
  }
  for (int64_t j = n; j < n_zero; j += 16) _mm512_mask_storeu_ps(d + j, mask_of(n_zero - j), _mm512_setzero_ps());
}

}  // namespace tessera::cpu::avx512
