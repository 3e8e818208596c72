// tessera generate: stream a continuation of a prompt to stdout; logs to stderr.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "infer/beam.h"
#include "infer/generate.h"
#include "infer/speculative.h"

namespace tessera::cli {

int cmd_generate(int argc, char** argv) {
  CLI::App app{"Generate text from a prompt; the continuation streams to stdout.", "tessera generate"};
  ModelArgs ma;
  add_model_options(app, ma);
  std::string prompt, prompt_file;
  GenerateParams gp;
  auto& sp = gp.sampling;
  int64_t seed = -1;
  bool echo = false, no_bos = false, no_special = false;
  app.add_option("-p,--prompt", prompt, "prompt text");
  app.add_option("-f,--file", prompt_file, "read the prompt from a file");
  app.add_option("-n,--n-predict", gp.n_predict, "tokens to generate (-1: until the context is full)");
  app.add_option("--temp", sp.temp, "temperature (0: greedy)");
  app.add_option("--top-k", sp.top_k, "top-k (0: off)");
  app.add_option("--top-p", sp.top_p, "top-p / nucleus (1: off)");
  app.add_option("--min-p", sp.min_p, "min-p relative to the top token (0: off)");
  app.add_option("--repeat-penalty", sp.repeat_penalty, "repetition penalty (1: off)");
  app.add_option("--repeat-last-n", sp.repeat_last_n, "tokens the penalties look back over (-1: all)");
  app.add_option("--presence-penalty", sp.presence_penalty, "presence penalty (0: off)");
  app.add_option("--frequency-penalty", sp.frequency_penalty, "frequency penalty (0: off)");
  app.add_option("-s,--seed", seed, "RNG seed (-1: random; the same seed gives the same text)");
  app.add_option("--stop", gp.stop, "stop when this string is generated (repeatable; not printed)");
  app.add_flag("--echo", echo, "print the prompt before the continuation");
  app.add_flag("--no-bos", no_bos, "do not add BOS to the prompt");
  app.add_flag("--no-parse-special", no_special, "treat special-token text in the prompt as plain text");
  std::string draft_path;
  SpeculativeParams spec;
  app.add_option("--draft", draft_path,
                 "speculative decoding with this smaller model (same tokenizer) drafting for the main one");
  app.add_option("--draft-max", spec.draft_max, "speculative decoding: tokens drafted per target forward")
      ->check(positive());
  app.add_option("--draft-ngram", spec.ngram,
                 "speculative decoding without a draft model: propose the tokens that followed the last N-gram's "
                 "latest earlier occurrence (prompt lookup; N >= 1)")
      ->check(positive());
  BeamParams beam;
  beam.beams = 0;
  app.add_option("--beams", beam.beams,
                 "beam search with this many hypotheses (deterministic: the sampling flags are ignored; 1 = greedy)");
  app.add_option("--length-penalty", beam.length_penalty,
                 "beam search: scores are log-probability / length^this (0: raw log-probabilities)");
  app.add_flag("--early-stopping", beam.early_stopping, "beam search: stop as soon as --beams hypotheses have ended");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (beam.beams != 0 && (!draft_path.empty() || spec.ngram > 0))
    fail("--beams and speculative decoding (--draft, --draft-ngram) are alternatives; give one");
  if (!draft_path.empty() && spec.ngram > 0) fail("--draft and --draft-ngram are alternatives; give one");
  const bool speculative = !draft_path.empty() || spec.ngram > 0;

  if (!prompt_file.empty()) {
    std::ifstream in(prompt_file, std::ios::binary);
    if (!in) fail(prompt_file, ": cannot open prompt file");
    std::ostringstream ss;
    ss << in.rdbuf();
    prompt = ss.str();
  }
  sp.validate();
  sp.seed = seed >= 0 ? uint64_t(seed) : std::random_device{}();

  Loaded L = load(ma);
  const Tokenizer& tok = require_tokenizer(L.lm);
  EncodeOptions eo;
  eo.add_special = !no_bos;
  eo.parse_special = !no_special;
  const std::vector<int32_t> ids = prompt_tokens(tok, prompt, eo);
  if (echo) {
    std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    std::fflush(stdout);
  }
  const auto print = [](std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  };
  GenerateStats st;
  if (beam.beams != 0) {  // the best hypothesis, printed once found
    const auto t0 = std::chrono::steady_clock::now();
    const auto hyps = beam_search(*L.model, *L.ctx, ids, gp.n_predict, beam,
                                  [&](int32_t id) { return tok.is_eog(id) || id == tok.bos_id(); });
    const BeamHypothesis& best = hyps.front();
    st.n_prompt = int64_t(ids.size()), st.n_generated = int64_t(best.tokens.size());
    st.decode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.stop_reason = best.finished ? "eos" : "length";
    StreamDecoder dec(tok);
    for (int32_t id : ids) dec.push(id);
    std::string text;
    for (int32_t id : best.tokens) text += dec.push(id);
    text += dec.flush();
    print(text);
    std::fprintf(stderr, "\ntessera: beam search (%d beams): best of %zu hypotheses, log-probability %.4f, score %.4f",
                 beam.beams, hyps.size(), best.logprob, best.score);
  } else if (speculative) {
    // The draft: the same run options, the context of the main model. (Built in
    // place: a Model refers to the Weights of its Loaded, which must not move.)
    ModelArgs da = ma;
    da.model = draft_path, da.tokenizer.clear(), da.ctx = L.model->n_ctx(), da.load_type.clear();
    const Loaded D = draft_path.empty() ? Loaded{} : load(da);
    SpeculativeStats sst;
    st = generate_speculative(*L.model, D.model.get(), *L.ctx, tok, ids, gp, spec, sst, print);
    std::fprintf(stderr, "\ntessera: speculative (%s): %lld drafted, %lld accepted (%.1f%%), %lld target forwards, %.2f tokens per forward",
                 draft_path.empty() ? ("n-gram " + std::to_string(spec.ngram)).c_str() : "draft model",
                 (long long)sst.drafted, (long long)sst.accepted, 100.0 * sst.acceptance(),
                 (long long)sst.target_forwards, sst.tokens_per_forward());
  } else {
    st = generate(*L.model, *L.ctx, tok, ids, gp, print);
  }
  std::fputc('\n', stdout);
  const std::string prompt_rate =
      st.prefill_s > 0 ? ", " + std::to_string(int64_t(st.n_prompt / st.prefill_s)) + " tok/s" : "";
  std::fprintf(stderr, "\ntessera: seed %llu | prompt %lld tokens%s | generated %lld tokens, %.1f tok/s | stop: %s\n",
               (unsigned long long)sp.seed, (long long)st.n_prompt, prompt_rate.c_str(), (long long)st.n_generated,
               st.n_generated / std::max(st.decode_s, 1e-9), st.stop_reason.c_str());
  report_verbose(ma, L);
  return 0;
}

}  // namespace tessera::cli
