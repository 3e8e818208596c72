// tessera perplexity: mean NLL and perplexity of a text over non-overlapping windows.
//
// Windowing: the whole file is tokenized once without BOS; the tokens are cut
// into consecutive, non-overlapping windows of (c - 1) tokens and each window
// is evaluated as BOS + window (c tokens) from an empty cache, scoring every
// window token given its prefix (c - 1 predictions per window). Models without
// BOS use windows of c tokens and score the last c - 1. A final partial window
// is dropped (use --chunks to limit the number of windows). Also reports bits
// per byte, and with --kl-divergence-base / --kl-divergence compares two
// models' distributions (infer/kl_divergence.h).
#include <algorithm>
#include <cmath>
#include <optional>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "infer/kl_divergence.h"
#include "infer/perplexity.h"

namespace tessera::cli {

int cmd_perplexity(int argc, char** argv) {
  CLI::App app{"Perplexity of a text file over non-overlapping windows of BOS + (c-1) tokens.",
               "tessera perplexity"};
  ModelArgs ma;
  add_model_options(app, ma, false);
  std::string file, kl_base, kl_file;
  int64_t n_ctx = 512, chunks = -1;
  bool json = false;
  app.add_option("-f,--file", file, "text file (with --kl-divergence: optional, the base file holds the tokens)");
  app.add_option("-c,--ctx-size", n_ctx, "window size in tokens, BOS included (default 512, capped at the model's)");
  app.add_option("--chunks", chunks, "evaluate at most this many windows (-1: all)");
  app.add_option("--kl-divergence-base", kl_base,
                 "save this model's log-probabilities at every scored position to FILE, for --kl-divergence");
  app.add_option("--kl-divergence", kl_file,
                 "compare with a base file from --kl-divergence-base: KL(base || model), top-1 agreement, "
                 "perplexity ratio, over the base's tokens and windows");
  app.add_flag("--json", json, "print the result as one JSON object");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (n_ctx < 2) fail("-c/--ctx-size must be at least 2, got ", n_ctx);
  if (chunks == 0 || chunks < -1) fail("--chunks must be positive (or -1: all windows), got ", chunks);
  if (!kl_base.empty() && !kl_file.empty()) fail("give one of --kl-divergence-base and --kl-divergence, not both");
  if (file.empty() && kl_file.empty()) fail("perplexity: -f/--file is required (or --kl-divergence BASE)");

  std::optional<KlBaseReader> base;
  if (!kl_file.empty()) {
    base.emplace(kl_file);
    n_ctx = base->run().n_ctx;
    chunks = base->run().n_windows;
  }
  std::string text;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail(file, ": cannot open text file");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }

  ma.ctx = n_ctx;
  ma.cap_ctx = true;
  Loaded L = load(ma);
  if (L.model->n_ctx() < n_ctx) {
    if (base)
      fail(kl_file, ": windows of ", n_ctx, " tokens exceed this model's context ", L.model->n_ctx());
    std::fprintf(stderr, "perplexity: -c %lld capped at the model's trained context %lld\n", (long long)n_ctx,
                 (long long)L.model->n_ctx());
  }
  n_ctx = std::min(n_ctx, L.model->n_ctx());
  const Tokenizer& tok = require_tokenizer(*L.lm);
  const int64_t V = L.model->config().vocab_size;
  std::vector<int32_t> ids;
  if (!text.empty() || !base) {
    EncodeOptions eo;
    eo.add_special = false;
    eo.parse_special = false;
    ids = tok.encode(text, eo);
  }
  const int64_t per = tok.bos_id() >= 0 ? n_ctx - 1 : n_ctx;
  if (base) {
    const KlRun& r = base->run();
    if (r.n_vocab != V) fail(kl_file, ": base vocabulary ", r.n_vocab, " differs from this model's ", V);
    if (r.bos != tok.bos_id()) fail(kl_file, ": base windows start with BOS ", r.bos, ", this tokenizer's is ", tok.bos_id());
    if (int64_t(r.ids.size()) != r.n_windows * per)
      fail(kl_file, ": holds ", r.ids.size(), " tokens for ", r.n_windows, " windows of ", per);
    if (!ids.empty() && (ids.size() < r.ids.size() || !std::equal(r.ids.begin(), r.ids.end(), ids.begin())))
      fail(file, ": tokenizes differently from the tokens in ", kl_file, " (another text or tokenizer)");
    ids = r.ids;
  }
  std::fprintf(stderr, "perplexity: %lld tokens, windows of %lld tokens%s\n", (long long)ids.size(),
               (long long)n_ctx, tok.bos_id() >= 0 ? " (BOS + text)" : "");
  if (int64_t(ids.size()) < per)
    fail(file, ": ", ids.size(), " tokens is less than one window of ", per, " tokens (lower -c)");
  const int64_t n_win = std::min<int64_t>(int64_t(ids.size()) / per, chunks < 0 ? INT64_MAX : chunks);

  std::optional<KlBaseWriter> writer;
  if (!kl_base.empty())
    writer.emplace(kl_base, KlRun{n_ctx, V, n_win, tok.bos_id(), std::vector<int32_t>(ids.begin(), ids.begin() + n_win * per)});
  KlAccumulator acc;
  std::vector<float> base_lp(size_t(base ? V : 0));
  WindowFn on_window;
  if (writer) on_window = [&](const float* lg, int64_t rows, const int32_t*) { writer->add(lg, rows); };
  if (base)
    on_window = [&](const float* lg, int64_t rows, const int32_t* targets) {
      for (int64_t r = 0; r < rows; ++r) {
        base->next(base_lp.data());
        acc.add(base_lp.data(), lg + r * V, V, targets[r]);
      }
    };
  PerplexityResult r = perplexity(*L.model, *L.ctx, ids, n_ctx, tok.bos_id(), n_win,
                                  [](int64_t done, int64_t total, double ppl) {
                                    const int width = 30, bar = int(width * done / total);
                                    std::fprintf(stderr, "\r[%.*s%*s] %lld/%lld  ppl %.4f", bar,
                                                 "==============================", width - bar, "",
                                                 (long long)done, (long long)total, ppl);
                                    std::fflush(stderr);
                                  },
                                  on_window);
  std::fprintf(stderr, "\n");
  if (writer) {
    writer->finish();
    std::fprintf(stderr, "perplexity: wrote the base log-probabilities of %lld positions to %s\n",
                 (long long)r.n_scored, kl_base.c_str());
  }
  // Bits per byte: the scored tokens' NLL over the bytes they spell.
  double bytes = 0;
  for (int64_t w = 0; w < r.n_windows; ++w)
    for (int64_t i = tok.bos_id() >= 0 ? 0 : 1; i < per; ++i) bytes += double(tok.token_bytes(ids[size_t(w * per + i)]).size());
  const double bpb = bytes > 0 ? r.nll * double(r.n_scored) / std::log(2.0) / bytes : 0;
  const KlStats k = base ? acc.finish() : KlStats{};
  if (json) {
    std::printf("{\"nll\": %.6f, \"perplexity\": %.6f, \"bits_per_byte\": %.6f, \"tokens\": %lld, \"windows\": %lld, "
                "\"ctx\": %lld",
                r.nll, r.perplexity, bpb, (long long)r.n_scored, (long long)r.n_windows, (long long)n_ctx);
    if (base)
      std::printf(", \"kl_divergence\": {\"mean\": %.6g, \"stderr\": %.6g, \"median\": %.6g, \"p90\": %.6g, "
                  "\"p95\": %.6g, \"p99\": %.6g, \"p99_9\": %.6g, \"max\": %.6g, \"top1_agreement\": %.6f, "
                  "\"ppl_base\": %.6f, \"ppl_ratio\": %.6f, \"rms_dp\": %.6g}",
                  k.kl_mean, k.kl_stderr, k.kl_median, k.kl_p90, k.kl_p95, k.kl_p99, k.kl_p999, k.kl_max,
                  k.top1_agreement, k.ppl_base, k.ppl_ratio, k.rms_dp);
    std::printf("}\n");
  } else {
    std::printf("mean NLL %.5f nats/token over %lld tokens (%lld windows of %lld), perplexity %.5f, %.4f bits per byte\n",
                r.nll, (long long)r.n_scored, (long long)r.n_windows, (long long)n_ctx, r.perplexity, bpb);
    if (base) {
      std::printf("perplexity      %.5f, base %.5f, ratio %.5f\n", k.ppl_model, k.ppl_base, k.ppl_ratio);
      std::printf("KL(base||model) mean %.6f +- %.6f, median %.6f, 90%% %.6f, 95%% %.6f, 99%% %.6f, 99.9%% %.6f, max %.6f\n",
                  k.kl_mean, k.kl_stderr, k.kl_median, k.kl_p90, k.kl_p95, k.kl_p99, k.kl_p999, k.kl_max);
      std::printf("same top token  %.3f%%, RMS change in p(next token) %.4f%%\n", 100 * k.top1_agreement,
                  100 * k.rms_dp);
    }
  }
  report_verbose(ma, L);
  return 0;
}

}  // namespace tessera::cli
