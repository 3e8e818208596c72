// Beam search: B hypotheses decoded as B sequences of one paged KV cache
// (model/kv_cache.h) in one batched forward per step. A hypothesis that
// several successors extend is forked (they share its blocks; the first write
// into the shared last block copies it), one no successor extends is freed.
// Scores are sums of log-probabilities (of the raw logits), ranked as
// logprob / length^length_penalty (length: generated tokens, the end token
// included). A hypothesis ends at an end token; finished ones are kept (the
// best B) until no live beam can beat the worst of them (early_stopping: as
// soon as B have finished), or max_new tokens. B = 1 is greedy decoding.
// With a grammar (infer/grammar.h) each hypothesis keeps its own grammar state:
// its next-token distribution is masked to the tokens the state allows (end
// tokens only where the grammar can end) and renormalised, as constrained
// sampling does, so every hypothesis is a prefix of the language and a finished
// one a member; a hypothesis no token can continue is dropped. The end tokens
// are then the grammar's tokenizer's (as is_end should say).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/generate.h"
#include "model/model.h"

namespace tessera {

struct BeamParams {
  int beams = 4;               // B (1 .. the model's max batch)
  float length_penalty = 1.f;  // exponent of the length normalization (0: raw log-probabilities)
  bool early_stopping = false;
};

struct BeamHypothesis {
  std::vector<int32_t> tokens;  // generated tokens (the end token, if any, excluded)
  double logprob = 0;           // sum of the tokens' log-probabilities (the end token's included)
  double score = 0;             // logprob / length^length_penalty
  bool finished = false;        // ended by an end token (else by max_new or the context)
};

// The best hypotheses, best first (up to B). is_end(id): an end token.
// Throws Error on bad parameters or a prompt that does not fit the context.
std::vector<BeamHypothesis> beam_search(Model& model, KernelContext& ctx, const std::vector<int32_t>& prompt,
                                        int64_t max_new, const BeamParams& params,
                                        const std::function<bool(int32_t)>& is_end,
                                        const GrammarConstraint* grammar = nullptr);

}  // namespace tessera
