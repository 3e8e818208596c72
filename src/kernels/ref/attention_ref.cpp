#include <algorithm>
#include <cmath>

#include "core/fp16.h"
#include "kernels/attention.h"

namespace tessera::ref {

namespace {
float elem(const void* base, DType t, int64_t i) {
  if (t == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  if (t == DType::Q8_0) {
    const auto& b = static_cast<const BlockQ8_0*>(base)[i / kQK];
    return f16_to_f32(b.d) * float(b.qs[i % kQK]);
  }
  return static_cast<const float*>(base)[i];
}
}  // namespace

float attend_online_row(float* s, int64_t n, int64_t n_zero, float softcap, float& m) {
  float mx = m;
  for (int64_t j = 0; j < n; ++j) {
    if (softcap > 0.f) s[j] = softcap * std::tanh(s[j] / softcap);
    mx = std::max(mx, s[j]);
  }
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  std::fill(s + n, s + std::max(n, n_zero), 0.f);
  m = mx;
  return sum;
}

float attend_softmax_row(float* s, int64_t n, int64_t n_zero, float softcap) {
  float mx = -INFINITY;
  const float sum = attend_online_row(s, n, n_zero, softcap, mx);
  const float inv = 1.f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  return mx + std::log(sum);
}

void attend_decode(const DecodeAttnArgs& a) {
  const int64_t j0 = a.start, m = a.n - a.start;
  for (int64_t g = 0; g < a.G; ++g) {
    float* s = a.scores + g * a.n;
    const float* q = a.q + g * a.q_stride;
    for (int64_t j = j0; j < a.n; ++j) {
      float d = 0.f;
      for (int64_t i = 0; i < a.hd; ++i) d += q[i] * elem(a.k, a.kv, a.row(j) * a.kv_stride + i);
      s[j] = d * a.scale;
    }
    const float lse = attend_softmax_row(s + j0, m, m, a.softcap);
    if (a.lse) a.lse[g] = lse;
    float* o = a.out + g * a.out_stride;
    const int64_t vd = a.v_dim();
    std::fill(o, o + vd, 0.f);
    for (int64_t j = j0; j < a.n; ++j)
      for (int64_t i = 0; i < vd; ++i) o[i] += s[j] * elem(a.v, a.kv, a.row(j) * a.kv_stride + i);
  }
}

}  // namespace tessera::ref
