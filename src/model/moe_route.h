// A mixture-of-experts router's decision for one row, shared by inference
// (model/moe.cpp, float) and training (train/moe_train.cpp, float / double):
// logits r(E) -> probabilities p(E) (softmax or sigmoid), the k experts of
// largest p + bias (ties to the lower index; bias may be null) in sel, best
// first, and their weights w = p (/ their sum when cfg.moe_norm_topk) x cfg.moe_scale.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "model/config.h"

namespace tessera {

// p(E) = softmax(r); returns logsumexp(r). p may alias r.
template <class T>
T moe_softmax(const T* r, T* p, int64_t E) {
  T mx = r[0];
  for (int64_t e = 1; e < E; ++e) mx = std::max(mx, r[e]);
  T sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(r[e] - mx);
  for (int64_t e = 0; e < E; ++e) p[e] /= sum;
  return mx + std::log(sum);
}

template <class T>
void moe_route_row(const ModelConfig& c, const T* r, const T* bias, T* p, int32_t* sel, T* w) {
  const int64_t E = c.moe_experts, k = c.moe_used;
  if (c.moe_gate == MoeGate::Softmax)
    moe_softmax(r, p, E);
  else
    for (int64_t e = 0; e < E; ++e) p[e] = T(1) / (T(1) + std::exp(-r[e]));
  for (int64_t i = 0; i < k; ++i) {  // k passes of an argmax over the experts not yet taken
    int32_t best = -1;
    T bs = 0;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t j = 0; j < i; ++j) taken = taken || sel[j] == int32_t(e);
      const T s = p[e] + (bias ? bias[e] : T(0));
      if (!taken && (best < 0 || s > bs)) best = int32_t(e), bs = s;
    }
    sel[i] = best;
    w[i] = p[best];
  }
  T norm = T(c.moe_scale);
  if (c.moe_norm_topk) {
    T sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += w[i];
    norm /= sum;
  }
  for (int64_t i = 0; i < k; ++i) w[i] *= norm;
}

}  // namespace tessera
