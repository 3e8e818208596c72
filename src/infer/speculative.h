// Speculative decoding with exact rejection sampling (Leviathan et al. 2023,
// Chen et al. 2023): a cheap drafter proposes K tokens with distributions p_d,
// the target scores the last accepted token and the K proposals in one
// batched forward (K + 1 rows, every row's logits), and proposal i is accepted
// with probability min(1, p_t(x_i) / p_d(x_i)). At the first rejection a token
// is drawn from normalize(max(0, p_t - p_d)) and the remaining proposals are
// discarded (the caches are rewound by the next forward's position); when all
// K are accepted a bonus token is drawn from the target's next distribution.
// The tokens produced are distributed exactly as sampling from the target
// alone; at temperature 0 they are the target's greedy tokens. Penalties and
// the top-k / top-p / min-p / temperature filters (infer/sampler.h) shape both
// distributions identically before the test.
//
// Drafters: a smaller model with the same vocabulary (--draft), prompt
// lookup (--draft-ngram N): the tokens that followed the latest earlier
// occurrence of the last n <= N tokens, proposed with a one-hot p_d, or the
// target's own multi-token prediction modules (--draft-mtp): module k drafts the
// token k ahead from module k - 1's state and the previous draft (DeepSeek-V3's
// sequential MTP), so a model with D modules proposes min(D, --draft-max) tokens.
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "infer/generate.h"
#include "infer/sampler.h"
#include "model/model.h"

namespace tessera {

struct SpeculativeParams {
  int draft_max = 8;  // K: proposals per target forward (>= 1)
  int ngram = 0;      // > 0: prompt-lookup drafting with n-grams of up to this many tokens (no draft model)
  // Self-drafting with the target's multi-token prediction modules (Model::mtp_draft; the
  // target made with RunOptions::mtp_draft): min(draft_max, modules) proposals per forward.
  bool mtp = false;
};

struct SpeculativeStats {
  int64_t target_forwards = 0;  // verification forwards (each of up to K + 1 rows)
  int64_t drafted = 0, accepted = 0;
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
  // Tokens produced per target forward (1 + accepted proposals on average).
  int64_t produced = 0;
  double prefill_s = 0;  // the prompt's forward (all but its last token) in both models
  double tokens_per_forward() const { return target_forwards ? double(produced) / double(target_forwards) : 0.0; }
};

// min(1, pt / pd): the probability of accepting a proposal drafted with
// probability pd that the target gives probability pt (1 when pd is 0).
double spec_accept_probability(double pt, double pd);
// A draw from normalize(max(0, pt - pd)) over V tokens with the uniform u in
// [0, 1); from pt itself when the difference has no mass (pt == pd).
int32_t spec_residual_draw(const float* pt, const float* pd, int64_t V, float u);

// Proposals for prompt lookup: the tokens that followed the latest earlier
// occurrence of the last n tokens of history, for n = max_n down to 1 (the
// first n that matches), at most k of them; empty when nothing matches.
std::vector<int32_t> ngram_propose(const std::vector<int32_t>& history, int max_n, int k);

// Decodes from prompt with target, drafting with draft (null: prompt lookup,
// spec.ngram > 0), calling on_token for every produced token in order until it
// returns false, n_ctx of either model is reached, or max_tokens (< 0: no
// limit) are produced. Both models start empty (their own caches are
// overwritten from position 0). The target's and the draft's vocabulary sizes must agree.
// With a grammar both distributions of every position are the ones grammar-
// constrained sampling draws from in that position's grammar state
// (constrained_distribution: the proposals' states follow the proposals), so the
// output is distributed as generate() under the grammar; prompt-lookup proposals
// stop at the first the grammar refuses.
SpeculativeStats speculative_decode(Model& target, Model* draft, KernelContext& ctx,
                                    const std::vector<int32_t>& prompt, const SamplerParams& sampling,
                                    const SpeculativeParams& spec, int64_t max_tokens,
                                    const std::function<bool(int32_t)>& on_token,
                                    const GrammarConstraint* grammar = nullptr);

// generate() (infer/generate.h) with speculative decoding.
GenerateStats generate_speculative(Model& target, Model* draft, KernelContext& ctx, const Tokenizer& tok,
                                   const std::vector<int32_t>& prompt, const GenerateParams& params,
                                   const SpeculativeParams& spec, SpeculativeStats& sst,
                                   const std::function<void(std::string_view)>& on_text);

}  // namespace tessera
