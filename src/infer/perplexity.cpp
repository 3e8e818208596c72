#include "infer/perplexity.h"

#include <cmath>

#include "core/error.h"

namespace tessera {

namespace {

// -log softmax(logits)[target], in double for the log-sum-exp.
double token_nll(const float* lg, int64_t V, int32_t target) {
  float mx = lg[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, lg[v]);
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(double(lg[v] - mx));
  return std::log(sum) + double(mx) - double(lg[target]);
}

}  // namespace

PerplexityResult perplexity(Model& model, KernelContext& ctx, const std::vector<int32_t>& ids, int64_t n_ctx,
                            int32_t bos, int64_t max_windows,
                            const std::function<void(int64_t, int64_t, double)>& progress,
                            const WindowFn& on_window) {
  if (n_ctx < 2) fail("perplexity: the window must hold at least 2 tokens, got ", n_ctx);
  if (n_ctx > model.n_ctx()) fail("perplexity: window ", n_ctx, " exceeds the model's context ", model.n_ctx());
  const int64_t V = model.config().vocab_size;
  const int64_t per = bos >= 0 ? n_ctx - 1 : n_ctx;
  int64_t n_win = int64_t(ids.size()) / per;
  if (max_windows >= 0 && max_windows < n_win) n_win = max_windows;
  if (n_win == 0) fail("perplexity: ", ids.size(), " tokens is less than one window of ", per, " tokens");
  std::vector<float> logits(static_cast<size_t>(n_ctx * V));
  std::vector<int32_t> win(static_cast<size_t>(n_ctx));
  PerplexityResult r;
  double nll = 0;
  for (int64_t w = 0; w < n_win; ++w) {
    size_t k = 0;
    if (bos >= 0) win[k++] = bos;
    for (int64_t i = 0; i < per; ++i) win[k++] = ids[size_t(w * per + i)];
    model.forward_all(ctx, win.data(), n_ctx, 0, logits.data());
    if (on_window) on_window(logits.data(), n_ctx - 1, win.data() + 1);
    for (int64_t t = 0; t + 1 < n_ctx; ++t) {
      nll += token_nll(logits.data() + t * V, V, win[size_t(t + 1)]);
      ++r.n_scored;
    }
    r.n_windows = w + 1;
    if (progress) progress(w + 1, n_win, std::exp(nll / double(r.n_scored)));
  }
  r.nll = nll / double(r.n_scored);
  r.perplexity = std::exp(r.nll);
  return r;
}

double sequence_nll(Model& model, KernelContext& ctx, const std::vector<int32_t>& tokens) {
  const int64_t n = int64_t(tokens.size()), V = model.config().vocab_size;
  if (n < 2) return 0;
  std::vector<float> logits(static_cast<size_t>(n * V));
  model.forward_all(ctx, tokens.data(), n, 0, logits.data());
  double nll = 0;
  for (int64_t t = 0; t + 1 < n; ++t) nll += token_nll(logits.data() + t * V, V, tokens[size_t(t + 1)]);
  return nll;
}

}  // namespace tessera
