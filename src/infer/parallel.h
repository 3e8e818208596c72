// Parallel samples from one prompt and self-consistency voting. The N samples
// are N sequences of one paged KV cache (model/kv_cache.h) that share the
// prompt's blocks (one prefill, then forks), decoded in one batched forward
// per step; sample i draws with its own generator (seed + i), so each is the
// sample a single run with that seed's stream would give in distribution.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/generate.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace tessera {

struct Sample {
  std::vector<int32_t> tokens;  // generated (an end token excluded)
  double logprob = 0;           // sum of the tokens' log-probabilities (raw model distribution)
  bool ended = false;           // by an end token (else by max_new or the context)
};

// Grammar-constrained samples (infer/generate.h GrammarConstraint): each keeps its
// own grammar state and draws as generate() does under a grammar (constrain_sample),
// so sample i is still its seed's single constrained run.

// Throws Error when n is not in [1, 256] or the prompt does not fit the context.
std::vector<Sample> sample_parallel(Model& model, KernelContext& ctx, const std::vector<int32_t>& prompt, int n,
                                    int64_t max_new, const SamplerParams& sampling,
                                    const std::function<bool(int32_t)>& is_end,
                                    const GrammarConstraint* grammar = nullptr);

// Majority vote over answers ("" = none extracted, never a winner): the answer
// given most often; ties go to the highest mean of score among its voters
// (e.g. each sample's mean token log-probability). votes = 0 when no sample
// gave an answer.
struct Vote {
  std::string answer;
  int votes = 0;
  double mean_score = 0;
};
Vote majority_vote(const std::vector<std::string>& answers, const std::vector<double>& scores);

}  // namespace tessera
