#include "kernels/ops.h"

#include <algorithm>
#include <cmath>

#include "kernels/act.h"
#include "kernels/norm.h"

namespace tessera::ops {

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  float ss = 0.f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float s = 1.f / std::sqrt(ss / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * s * w[i];
}

void rmsnorm(Isa isa, float* out, const float* x, const float* w, int64_t n, float eps) {
  if (isa == Isa::AVX512) {
    cpu::avx512::rmsnorm_row(out, x, w, n, eps);
    return;
  }
  rmsnorm(out, x, w, n, eps);
}

void layernorm(float* out, const float* x, const float* w, const float* b, int64_t n, float eps) {
  float mean = 0.f;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= float(n);
  float var = 0.f;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= float(n);
  const float s = 1.f / std::sqrt(var + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * s * w[i] + (b ? b[i] : 0.f);
}

void swiglu(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = a[i] / (1.f + std::exp(-a[i])) * b[i];
}

void gelu(float* x, int64_t n) {
  const float c = std::sqrt(2.f / float(M_PI));
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.f + std::tanh(c * (v + 0.044715f * v * v * v)));
  }
}

void swiglu(Isa isa, float* out, const float* a, const float* b, int64_t n) {
  if (isa == Isa::AVX512) return cpu::avx512::swiglu_fwd(out, a, b, n);
  if (isa == Isa::AVX2) return cpu::avx2::swiglu_fwd(out, a, b, n);
  if (out != a) std::copy(a, a + n, out);
  swiglu(out, b, n);
}
void swiglu(Isa isa, float* a, const float* b, int64_t n) { swiglu(isa, a, a, b, n); }

void gelu(Isa isa, float* out, const float* x, int64_t n) {
  if (isa == Isa::AVX512) return cpu::avx512::gelu_fwd(out, x, n);
  if (isa == Isa::AVX2) return cpu::avx2::gelu_fwd(out, x, n);
  if (out != x) std::copy(x, x + n, out);
  gelu(out, n);
}
void gelu(Isa isa, float* x, int64_t n) { gelu(isa, x, x, n); }

void geglu(Isa isa, float* out, const float* a, const float* b, int64_t n) {
  gelu(isa, out, a, n);
  for (int64_t i = 0; i < n; ++i) out[i] *= b[i];
}
void geglu(Isa isa, float* a, const float* b, int64_t n) {
  geglu(isa, a, a, b, n);
}

void relu(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 0.f ? x[i] : 0.f;
}
void relu(float* x, int64_t n) { relu(x, x, n); }

void softcap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

void scale(float* x, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void rope_tables(float* cos_t, float* sin_t, int64_t n_pos, int64_t rot_dim, float theta, const float* freq_div) {
  const int64_t half = rot_dim / 2;
  for (int64_t p = 0; p < n_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      float freq = std::pow(theta, -float(2 * i) / float(rot_dim));
      if (freq_div) freq /= freq_div[i];
      const float ang = float(p) * freq;
      cos_t[p * half + i] = std::cos(ang);
      sin_t[p * half + i] = std::sin(ang);
    }
}

void rope_apply(float* x, const float* cos_r, const float* sin_r, int64_t rot_dim, RopeStyle style) {
  const int64_t half = rot_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = style == RopeStyle::Interleaved ? 2 * i : i;
    const int64_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
    const float x0 = x[a], x1 = x[b];
    x[a] = x0 * cos_r[i] - x1 * sin_r[i];
    x[b] = x0 * sin_r[i] + x1 * cos_r[i];
  }
}

void rope(float* x, int64_t head_dim, int64_t rot_dim, int64_t pos, float theta, RopeStyle style) {
  const int64_t half = rot_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float freq = std::pow(theta, -float(2 * i) / float(rot_dim));
    const float ang = float(pos) * freq;
    const float c = std::cos(ang), s = std::sin(ang);
    const int64_t a = style == RopeStyle::Interleaved ? 2 * i : i;
    const int64_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
    const float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
  (void)head_dim;
}

}  // namespace tessera::ops
