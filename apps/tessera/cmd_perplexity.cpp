// tessera perplexity: mean NLL and perplexity of a text over non-overlapping windows.
//
// Windowing: the whole file is tokenized once without BOS; the tokens are cut
// into consecutive, non-overlapping windows of (c - 1) tokens and each window
// is evaluated as BOS + window (c tokens) from an empty cache, scoring every
// window token given its prefix (c - 1 predictions per window). Models without
// BOS use windows of c tokens and score the last c - 1. A final partial window
// is dropped (use --chunks to limit the number of windows).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "core/error.h"

namespace tessera::cli {

int cmd_perplexity(int argc, char** argv) {
  CLI::App app{"Perplexity of a text file over non-overlapping windows of BOS + (c-1) tokens.",
               "tessera perplexity"};
  ModelArgs ma;
  add_model_options(app, ma, false);
  std::string file;
  int64_t n_ctx = 512, chunks = -1;
  bool json = false;
  app.add_option("-f,--file", file, "text file")->required();
  app.add_option("-c,--ctx-size", n_ctx, "window size in tokens, BOS included (default 512, capped at the model's)");
  app.add_option("--chunks", chunks, "evaluate at most this many windows (-1: all)");
  app.add_flag("--json", json, "print the result as one JSON object");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (n_ctx < 2) fail("-c/--ctx-size must be at least 2, got ", n_ctx);

  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, ": cannot open text file");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  ma.ctx = n_ctx;
  Loaded L = load(ma);
  const auto& cfg = L.lm.weights.cfg;
  const Tokenizer& tok = require_tokenizer(L.lm);
  EncodeOptions eo;
  eo.add_special = false;
  eo.parse_special = false;
  const std::vector<int32_t> ids = tok.encode(text, eo);
  const bool bos = tok.bos_id() >= 0;
  const int64_t per = bos ? n_ctx - 1 : n_ctx;
  int64_t n_win = int64_t(ids.size()) / per;
  if (chunks >= 0 && chunks < n_win) n_win = chunks;
  if (n_win == 0)
    fail(file, ": ", ids.size(), " tokens is less than one window of ", per, " tokens (lower -c)");
  std::fprintf(stderr, "perplexity: %lld tokens, %lld windows of %lld tokens%s\n", (long long)ids.size(),
               (long long)n_win, (long long)n_ctx, bos ? " (BOS + text)" : "");

  const int64_t V = cfg.vocab_size;
  std::vector<float> logits(size_t(n_ctx * V));
  std::vector<int32_t> win(static_cast<size_t>(n_ctx));
  double nll = 0;
  int64_t count = 0;
  for (int64_t w = 0; w < n_win; ++w) {
    size_t k = 0;
    if (bos) win[k++] = tok.bos_id();
    for (int64_t i = 0; i < per; ++i) win[k++] = ids[size_t(w * per + i)];
    L.model->forward_all(*L.ctx, win.data(), n_ctx, 0, logits.data());
    for (int64_t t = 0; t + 1 < n_ctx; ++t) {
      const float* lg = logits.data() + t * V;
      float mx = lg[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, lg[v]);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(lg[v] - mx));
      nll += (std::log(sum) + mx) - lg[win[size_t(t + 1)]];
      ++count;
    }
    const int width = 30;
    const int done = int(width * (w + 1) / n_win);
    std::fprintf(stderr, "\r[%.*s%*s] %lld/%lld  ppl %.4f", done, "==============================", width - done, "",
                 (long long)(w + 1), (long long)n_win, std::exp(nll / double(count)));
    std::fflush(stderr);
  }
  std::fprintf(stderr, "\n");
  const double mean = nll / double(count);
  if (json)
    std::printf("{\"nll\": %.6f, \"perplexity\": %.6f, \"tokens\": %lld, \"windows\": %lld, \"ctx\": %lld}\n", mean,
                std::exp(mean), (long long)count, (long long)n_win, (long long)n_ctx);
  else
    std::printf("mean NLL %.5f nats/token over %lld tokens (%lld windows of %lld), perplexity %.5f\n", mean,
                (long long)count, (long long)n_win, (long long)n_ctx, std::exp(mean));
  return 0;
}

}  // namespace tessera::cli
