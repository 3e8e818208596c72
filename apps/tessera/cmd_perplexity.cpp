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
#include "infer/perplexity.h"

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
  if (chunks == 0 || chunks < -1) fail("--chunks must be positive (or -1: all windows), got ", chunks);

  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, ": cannot open text file");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  ma.ctx = n_ctx;
  ma.cap_ctx = true;
  Loaded L = load(ma);
  if (L.model->n_ctx() < n_ctx)
    std::fprintf(stderr, "perplexity: -c %lld capped at the model's trained context %lld\n", (long long)n_ctx,
                 (long long)L.model->n_ctx());
  n_ctx = L.model->n_ctx();
  const Tokenizer& tok = require_tokenizer(L.lm);
  EncodeOptions eo;
  eo.add_special = false;
  eo.parse_special = false;
  const std::vector<int32_t> ids = tok.encode(text, eo);
  const int64_t per = tok.bos_id() >= 0 ? n_ctx - 1 : n_ctx;
  std::fprintf(stderr, "perplexity: %lld tokens, windows of %lld tokens%s\n", (long long)ids.size(),
               (long long)n_ctx, tok.bos_id() >= 0 ? " (BOS + text)" : "");
  if (int64_t(ids.size()) < per)
    fail(file, ": ", ids.size(), " tokens is less than one window of ", per, " tokens (lower -c)");
  PerplexityResult r = perplexity(*L.model, *L.ctx, ids, n_ctx, tok.bos_id(), chunks,
                                  [](int64_t done, int64_t total, double ppl) {
                                    const int width = 30, bar = int(width * done / total);
                                    std::fprintf(stderr, "\r[%.*s%*s] %lld/%lld  ppl %.4f", bar,
                                                 "==============================", width - bar, "",
                                                 (long long)done, (long long)total, ppl);
                                    std::fflush(stderr);
                                  });
  std::fprintf(stderr, "\n");
  if (json)
    std::printf("{\"nll\": %.6f, \"perplexity\": %.6f, \"tokens\": %lld, \"windows\": %lld, \"ctx\": %lld}\n",
                r.nll, r.perplexity, (long long)r.n_scored, (long long)r.n_windows, (long long)n_ctx);
  else
    std::printf("mean NLL %.5f nats/token over %lld tokens (%lld windows of %lld), perplexity %.5f\n", r.nll,
                (long long)r.n_scored, (long long)r.n_windows, (long long)n_ctx, r.perplexity);
  return 0;
}

}  // namespace tessera::cli
