// Perplexity over non-overlapping windows: the token stream (no BOS) is cut into
// consecutive windows of (n_ctx - 1) tokens; each is evaluated as BOS + window
// from an empty cache and every window token is scored given its prefix. Without
// BOS (bos < 0), windows are n_ctx tokens and the last n_ctx - 1 are scored.
// A final partial window is dropped.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace tessera {

struct PerplexityResult {
  double nll = 0;          // mean negative log-likelihood, nats/token
  double perplexity = 0;   // exp(nll)
  int64_t n_scored = 0;    // predictions scored
  int64_t n_windows = 0;
};

// Called per window with its scored rows: logits (rows x vocab) and each row's next token.
using WindowFn = std::function<void(const float* logits, int64_t rows, const int32_t* targets)>;

// max_windows < 0: all windows. progress(done, total, running_ppl) after each window;
// on_window (when given) sees every scored row (infer/kl_divergence.h uses it).
PerplexityResult perplexity(Model& model, KernelContext& ctx, const std::vector<int32_t>& ids, int64_t n_ctx,
                            int32_t bos, int64_t max_windows,
                            const std::function<void(int64_t, int64_t, double)>& progress = {},
                            const WindowFn& on_window = {});

// Summed NLL (nats) of tokens[1..] given their prefixes, in one pass from position 0.
double sequence_nll(Model& model, KernelContext& ctx, const std::vector<int32_t>& tokens);

}  // namespace tessera
