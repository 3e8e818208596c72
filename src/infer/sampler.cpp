#include "infer/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace tessera {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

TokenLogprob token_logprob(const float* logits, int64_t V, int32_t id, int top) {
  float mx = logits[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(double(logits[i]) - double(mx));
  const double lse = double(mx) + std::log(sum);
  TokenLogprob t;
  t.id = id;
  t.logprob = double(logits[id]) - lse;
  top = int(std::min<int64_t>(std::max(top, 0), V));
  if (top > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(V));
    for (int64_t i = 0; i < V; ++i) idx[size_t(i)] = int32_t(i);
    std::partial_sort(idx.begin(), idx.begin() + top, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < top; ++i) t.top.emplace_back(idx[size_t(i)], double(logits[idx[size_t(i)]]) - lse);
  }
  return t;
}

void SamplerParams::validate() const {
  auto finite = [](const char* name, float v) {
    if (!std::isfinite(v)) fail(name, " must be a finite number, got ", v);
  };
  finite("--temp", temp), finite("--top-p", top_p), finite("--min-p", min_p);
  finite("--repeat-penalty", repeat_penalty), finite("--presence-penalty", presence_penalty);
  finite("--frequency-penalty", frequency_penalty);
  if (temp < 0) fail("--temp must be >= 0, got ", temp);
  if (top_p <= 0 || top_p > 1) fail("--top-p must be in (0, 1], got ", top_p);
  if (min_p < 0 || min_p > 1) fail("--min-p must be in [0, 1], got ", min_p);
  if (repeat_penalty <= 0) fail("--repeat-penalty must be > 0, got ", repeat_penalty);
  if (repeat_last_n < -1) fail("--repeat-last-n must be >= -1, got ", repeat_last_n);
}

Sampler::Sampler(const SamplerParams& p, int32_t n_vocab)
    : p_(p), rng_(p.seed), cands_(size_t(n_vocab)), counts_(size_t(n_vocab), 0) {}

void Sampler::apply_penalties(float* logits, const std::vector<int32_t>& history) {
  if (p_.repeat_penalty == 1.f && p_.presence_penalty == 0.f && p_.frequency_penalty == 0.f) return;
  const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
  const size_t begin = history.size() - n;
  for (size_t i = begin; i < history.size(); ++i) ++counts_[size_t(history[i])];
  for (size_t i = begin; i < history.size(); ++i) {
    const int32_t id = history[i];
    const int32_t cnt = counts_[size_t(id)];
    if (cnt == 0) continue;  // already applied for an earlier occurrence
    float& l = logits[id];
    if (p_.repeat_penalty != 1.f) l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    l -= float(cnt) * p_.frequency_penalty + p_.presence_penalty;
    counts_[size_t(id)] = 0;
  }
}

void Sampler::load_candidates(const float* logits) {
  n_ = cands_.size();
  for (size_t i = 0; i < n_; ++i) cands_[i] = {logits[i], 0.f, int32_t(i)};
}

static bool by_logit(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

void Sampler::top_k(int32_t k) {
  if (k <= 0 || size_t(k) >= n_) {
    std::sort(cands_.begin(), cands_.begin() + long(n_), by_logit);
    return;
  }
  std::partial_sort(cands_.begin(), cands_.begin() + k, cands_.begin() + long(n_), by_logit);
  n_ = size_t(k);
}

void Sampler::softmax_candidates(float temp) {
  float mx = cands_[0].logit;  // sorted: the first; filter() may leave them unsorted
  for (size_t i = 1; i < n_; ++i) mx = std::max(mx, cands_[i].logit);
  float sum = 0.f;
  for (size_t i = 0; i < n_; ++i) {
    cands_[i].p = std::exp((cands_[i].logit - mx) / temp);
    sum += cands_[i].p;
  }
  for (size_t i = 0; i < n_; ++i) cands_[i].p /= sum;
}

void Sampler::top_p(float p) {
  if (p >= 1.f) return;
  float cum = 0.f;
  for (size_t i = 0; i < n_; ++i) {
    cum += cands_[i].p;
    if (cum >= p) {
      n_ = i + 1;
      return;
    }
  }
}

void Sampler::min_p(float p) {
  if (p <= 0.f) return;
  const float thr = p * cands_[0].p;
  size_t keep = 1;
  while (keep < n_ && cands_[keep].p >= thr) ++keep;
  n_ = keep;
}

void Sampler::distribution(float* logits, const std::vector<int32_t>& history, float* probs) {
  apply_penalties(logits, history);
  std::fill(probs, probs + cands_.size(), 0.f);
  if (p_.temp <= 0.f) {
    probs[argmax(logits, int64_t(cands_.size()))] = 1.f;
    return;
  }
  load_candidates(logits);
  filter();
  softmax_candidates(p_.temp);
  for (size_t i = 0; i < n_; ++i) probs[cands_[i].id] = cands_[i].p;
}

void Sampler::filter() {
  if (p_.top_k > 0 && size_t(p_.top_k) < n_) {
    top_k(p_.top_k);
    softmax_candidates(1.f);
    top_p(p_.top_p);
    min_p(p_.min_p);
    return;
  }
  // No top-k: the kept set is a prefix of the sorted order, so only that prefix
  // is sorted (growing it until top-p's mass is reached), not all V candidates.
  float mx = cands_[0].logit;
  for (size_t i = 1; i < n_; ++i) mx = std::max(mx, cands_[i].logit);
  double sum = 0;
  for (size_t i = 0; i < n_; ++i) sum += std::exp(double(cands_[i].logit - mx));
  size_t keep = n_;
  if (p_.min_p > 0.f) {  // p_i >= min_p * p_max  <=>  logit_i >= max + log(min_p)
    const float thr = mx + std::log(p_.min_p);
    keep = 0;
    for (size_t i = 0; i < n_; ++i) keep += cands_[i].logit >= thr;
    keep = std::max<size_t>(keep, 1);
  }
  if (p_.top_p >= 1.f) {
    // Nothing to sort when every candidate stays (they are drawn in id order then).
    if (keep < n_) std::partial_sort(cands_.begin(), cands_.begin() + long(keep), cands_.begin() + long(n_), by_logit);
    n_ = keep;
    for (size_t i = 0; i < n_; ++i) cands_[i].p = float(std::exp(double(cands_[i].logit - mx)) / sum);
    return;
  }
  size_t k = std::min(n_, std::min<size_t>(keep, 64));
  for (;;) {
    std::partial_sort(cands_.begin(), cands_.begin() + long(k), cands_.begin() + long(n_), by_logit);
    float cum = 0.f;
    for (size_t i = 0; i < k; ++i) {
      cands_[i].p = float(std::exp(double(cands_[i].logit - mx)) / sum);
      cum += cands_[i].p;
      if (cum >= p_.top_p) {
        n_ = std::min(i + 1, keep);
        return;
      }
    }
    if (k >= keep) {
      n_ = keep;
      return;
    }
    k = std::min(keep, k * 8);
  }
}

float Sampler::uniform() { return std::uniform_real_distribution<float>(0.f, 1.f)(rng_); }

int32_t Sampler::draw(const float* probs) {
  const float r = uniform();
  float cum = 0.f;
  int32_t last = 0;
  for (size_t i = 0; i < cands_.size(); ++i) {
    if (probs[i] <= 0.f) continue;
    cum += probs[i];
    last = int32_t(i);
    if (r < cum) return last;
  }
  return last;  // rounding: the last token with mass
}

int32_t Sampler::sample(float* logits, const std::vector<int32_t>& history) {
  apply_penalties(logits, history);
  if (p_.temp <= 0.f) return argmax(logits, int64_t(cands_.size()));
  load_candidates(logits);
  filter();  // the filters see the untempered distribution (llama.cpp's chain order)
  softmax_candidates(p_.temp);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  const float r = u(rng_);
  float cum = 0.f;
  for (size_t i = 0; i < n_; ++i) {
    cum += cands_[i].p;
    if (r < cum) return cands_[i].id;
  }
  return cands_[n_ - 1].id;
}

}  // namespace tessera
