// Token sampling: repetition / presence / frequency penalties, then top-k,
// top-p, min-p, temperature and a seeded draw (llama.cpp's default order).
// temp <= 0 is greedy (argmax after penalties).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace tessera {

struct SamplerParams {
  float temp = 0.8f;
  int32_t top_k = 40;            // <= 0: disabled
  float top_p = 0.95f;           // >= 1: disabled
  float min_p = 0.05f;           // <= 0: disabled
  float repeat_penalty = 1.0f;   // 1: disabled
  int32_t repeat_last_n = 64;    // window of recent tokens the penalties look at
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  uint64_t seed = 0;
  // Error naming the parameter (as the CLI flag, e.g. "--top-p") when a value
  // is out of range or not finite. Every front end calls it before sampling.
  void validate() const;
};

struct Candidate {
  float logit;
  float p;
  int32_t id;
};

class Sampler {
 public:
  Sampler(const SamplerParams& p, int32_t n_vocab);
  // Picks the next token from logits (n_vocab, modified in place by the
  // penalties) given the tokens so far. Does not allocate.
  int32_t sample(float* logits, const std::vector<int32_t>& history);
  const SamplerParams& params() const { return p_; }
  // The distribution sample() draws from, as probabilities per token id in
  // probs (n_vocab; zero for the tokens the filters removed): penalties, then
  // top-k / top-p / min-p and temperature; temp <= 0 is one-hot on the argmax.
  // logits are modified in place by the penalties.
  void distribution(float* logits, const std::vector<int32_t>& history, float* probs);
  // A draw from probs (n_vocab, summing to 1) with this sampler's generator.
  int32_t draw(const float* probs);
  // A uniform number in [0, 1) from this sampler's generator.
  float uniform();

  // The filtering steps, exposed for tests. They operate on cands_ (sorted by
  // logit, descending, after sort_candidates) and shrink its active size.
  void apply_penalties(float* logits, const std::vector<int32_t>& history);
  void load_candidates(const float* logits);
  void top_k(int32_t k);
  void softmax_candidates(float temp);
  void top_p(float p);
  void min_p(float p);
  // top_k, then top_p and min_p on the untempered softmax: leaves the kept
  // candidates in cands_[0, n_) with their probabilities, sorted by logit
  // except when no filter removes any (then in id order). Without top-k it
  // sorts only the prefix the filters keep.
  void filter();
  const Candidate* candidates() const { return cands_.data(); }
  size_t n_candidates() const { return n_; }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<Candidate> cands_;
  size_t n_ = 0;
  std::vector<int32_t> counts_;  // per-token occurrences in the penalty window
};

int32_t argmax(const float* x, int64_t n);

// A token's log-probability under the model's own distribution (log-softmax
// of the raw logits, before penalties, filters and temperature) and the top
// alternatives, most probable first (ties: lower id first).
struct TokenLogprob {
  int32_t id = 0;
  double logprob = 0;
  std::vector<std::pair<int32_t, double>> top;
};
TokenLogprob token_logprob(const float* logits, int64_t n_vocab, int32_t id, int top);

}  // namespace tessera
