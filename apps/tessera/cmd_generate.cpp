// tessera generate: stream a continuation of a prompt to stdout; logs to stderr.
// Modes: sampling (default), speculative decoding (--draft / --draft-ngram),
// beam search (--beams), parallel samples (--n) and self-consistency voting
// (--self-consistency); --json-output / --logprobs print one JSON object
// instead; --grammar / --grammar-file / --json constrain the output.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/mmap.h"
#include "infer/beam.h"
#include "infer/generate.h"
#include "infer/grammar.h"
#include "infer/json_schema.h"
#include "infer/parallel.h"
#include "infer/speculative.h"

namespace tessera::cli {

namespace {

using json = nlohmann::json;

void print(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

// The text of tokens generated after prompt (the decoder primed with the prompt, as when streaming).
std::string text_of(const Tokenizer& tok, const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens) {
  StreamDecoder dec(tok);
  for (int32_t id : prompt) dec.push(id);
  std::string s;
  for (int32_t id : tokens) s += dec.push(id);
  return s + dec.flush();
}

// Cuts text before the first stop string; true when one was found.
bool cut_at_stop(std::string& text, const std::vector<std::string>& stops) {
  size_t first = std::string::npos;
  for (const auto& s : stops)
    if (!s.empty()) first = std::min(first, text.find(s));
  if (first == std::string::npos) return false;
  text.resize(first);
  return true;
}

json logprob_json(const Tokenizer& tok, const TokenLogprob& t) {
  json j = {{"id", t.id}, {"text", tok.token_bytes(t.id)}, {"logprob", t.logprob}};
  json top = json::array();
  for (const auto& [id, lp] : t.top) top.push_back({{"id", id}, {"text", tok.token_bytes(id)}, {"logprob", lp}});
  if (!t.top.empty()) j["top_logprobs"] = top;
  return j;
}

struct Modes {
  std::string draft_path;
  SpeculativeParams spec;
  BeamParams beam;
  int n = 1, self_consistency = 0;
  std::string answer_regex;
  bool json = false;
};

int run_generate(Loaded& L, const ModelArgs& ma, Modes& md, GenerateParams& gp, const std::string& prompt, bool echo,
                 bool no_bos, bool no_special, std::optional<Grammar>& grammar, const std::regex& answer_re);

}  // namespace

int cmd_generate(int argc, char** argv) {
  CLI::App app{"Generate text from a prompt; the continuation streams to stdout.", "tessera generate"};
  ModelArgs ma;
  add_model_options(app, ma);
  std::string prompt, prompt_file;
  GenerateParams gp;
  auto& sp = gp.sampling;
  int64_t seed = -1;
  bool echo = false, no_bos = false, no_special = false;
  Modes md;
  md.beam.beams = 0;
  app.add_option("-p,--prompt", prompt, "prompt text");
  app.add_option("-f,--file", prompt_file, "read the prompt from a file");
  app.add_option("-n,--n-predict", gp.n_predict, "tokens to generate (-1: until the context is full)");
  add_sampling_options(app, sp, seed);
  app.add_option("--stop", gp.stop, "stop when this string is generated (repeatable; not printed)");
  app.add_flag("--echo", echo, "print the prompt before the continuation");
  app.add_flag("--no-bos", no_bos, "do not add BOS to the prompt");
  app.add_flag("--no-parse-special", no_special, "treat special-token text in the prompt as plain text");
  app.add_option("--draft", md.draft_path,
                 "speculative decoding with this smaller model (same tokenizer) drafting for the main one");
  app.add_option("--draft-max", md.spec.draft_max, "speculative decoding: tokens drafted per target forward")
      ->check(positive());
  app.add_flag("--draft-mtp", md.spec.mtp,
               "speculative decoding with the model's own multi-token prediction modules (a model trained with "
               "'tessera train --mtp N'): module k drafts the token k ahead, min(N, --draft-max) per forward");
  app.add_option("--draft-ngram", md.spec.ngram,
                 "speculative decoding without a draft model: propose the tokens that followed the last N-gram's "
                 "latest earlier occurrence (prompt lookup; N >= 1)")
      ->check(positive());
  app.add_option("--beams", md.beam.beams,
                 "beam search with this many hypotheses (deterministic: the sampling flags are ignored; 1 = greedy)");
  app.add_option("--length-penalty", md.beam.length_penalty,
                 "beam search: scores are log-probability / length^this (0: raw log-probabilities)");
  app.add_flag("--early-stopping", md.beam.early_stopping, "beam search: stop as soon as --beams hypotheses have ended");
  app.add_option("--n", md.n, "this many samples of the prompt, decoded in one batch sharing the prompt's cache");
  app.add_option("--self-consistency", md.self_consistency,
                 "this many samples; print the answer most of them give (--answer-regex) with its vote share");
  app.add_option("--answer-regex", md.answer_regex,
                 "--self-consistency: the answer is this regex's first match in a sample (its first group if it has one)");
  app.add_flag("--json-output", md.json,
               "print one JSON object (text, counts, stop reason; samples and votes) instead of streaming");
  std::string grammar_text, grammar_file;
  bool json_value = false;
  app.add_option("--grammar", grammar_text, "constrain the output to this GBNF grammar (llama.cpp's format)");
  app.add_option("--grammar-file", grammar_file, "constrain the output to the GBNF grammar in this file");
  app.add_flag("--json", json_value, "constrain the output to one JSON value");
  std::string json_schema;
  app.add_option("--json-schema", json_schema,
                 "constrain the output to JSON this schema accepts (a file, or the schema itself when it starts "
                 "with '{'); supported: type, properties, required, additionalProperties, items, minItems, maxItems, "
                 "minLength, maxLength, format (date, time, date-time, uuid), enum, const, anyOf, oneOf, $ref");
  app.add_option("--tp", ma.tp,
                 "under mpirun -np T: tensor parallelism, each rank holding 1/T of every block's attention heads and "
                 "feed-forward units (llama family, dense blocks); rank 0 prints")
      ->check(CLI::Range(1, 64));
  app.add_option("--logprobs", gp.logprobs,
                 "print one JSON object with each generated token's log-probability and this many most probable alternatives")
      ->check(CLI::Range(0, 100));
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const bool speculative = !md.draft_path.empty() || md.spec.ngram > 0 || md.spec.mtp;
  if (md.spec.mtp && (!md.draft_path.empty() || md.spec.ngram > 0))
    fail("--draft-mtp drafts with the model itself: no --draft or --draft-ngram");
  ma.mtp_draft = md.spec.mtp;
  const int n_modes = int(speculative) + int(md.beam.beams != 0) + int(md.n != 1) + int(md.self_consistency != 0);
  if (!md.draft_path.empty() && md.spec.ngram > 0) fail("--draft and --draft-ngram are alternatives; give one");
  if (n_modes > 1)
    fail("speculative decoding (--draft, --draft-ngram), --beams, --n and --self-consistency are alternatives; give one");
  if (gp.logprobs >= 0 && n_modes > 0) fail("--logprobs works with plain sampling (not with ", speculative ? "speculative decoding" : md.beam.beams ? "--beams" : md.n != 1 ? "--n" : "--self-consistency", ")");
  if (gp.logprobs >= 0) md.json = true;
  if (int(!grammar_text.empty()) + int(!grammar_file.empty()) + int(json_value) + int(!json_schema.empty()) > 1)
    fail("--grammar, --grammar-file, --json and --json-schema are alternatives; give one");
  std::optional<Grammar> grammar;
  if (!grammar_file.empty()) {
    grammar = Grammar::parse(read_file(grammar_file), grammar_file);
  } else if (!grammar_text.empty()) {
    grammar = Grammar::parse(grammar_text, "--grammar");
  } else if (json_value) {
    grammar = Grammar::parse(kJsonGrammar, "--json");
  } else if (!json_schema.empty()) {
    std::string text = json_schema, where = "--json-schema";
    const size_t first = json_schema.find_first_not_of(" \t\n");
    if (first == std::string::npos || json_schema[first] != '{') text = read_file(json_schema), where = json_schema;
    grammar = Grammar::parse(json_schema_to_gbnf(text, where), where + " (as a grammar)");
  }
  if (md.self_consistency != 0 && md.answer_regex.empty()) fail("--self-consistency needs --answer-regex");
  std::regex answer_re;
  try {
    if (!md.answer_regex.empty()) answer_re = std::regex(md.answer_regex);
  } catch (const std::regex_error& e) {
    fail("--answer-regex '", md.answer_regex, "' is not a valid regular expression: ", e.what());
  }

  if (!prompt_file.empty()) prompt = read_file(prompt_file);
  sp.validate();
  sp.seed = seed >= 0 ? uint64_t(seed) : std::random_device{}();

  if (ma.tp > 1 && !md.draft_path.empty()) fail("--tp with --draft is not supported (run the draft without --tp)");
  Loaded L = load(ma);
  try {
    return run_generate(L, ma, md, gp, prompt, echo, no_bos, no_special, grammar, answer_re);
  } catch (const Error& e) {
    if (L.comm) rank_failed(*L.comm, e);  // one rank's error ends the job, named
    throw;
  }
}

namespace {
int run_generate(Loaded& L, const ModelArgs& ma, Modes& md, GenerateParams& gp, const std::string& prompt, bool echo,
                 bool no_bos, bool no_special, std::optional<Grammar>& grammar, const std::regex& answer_re) {
  auto& sp = gp.sampling;
  const bool speculative = !md.draft_path.empty() || md.spec.ngram > 0 || md.spec.mtp;
  if (L.comm) {  // every rank samples the same tokens: rank 0's seed; only rank 0 prints
    double s[2] = {0, 0};
    if (L.comm->is_root()) s[0] = double(sp.seed >> 32), s[1] = double(sp.seed & 0xffffffffu);
    L.comm->all_reduce_sum(s, 2);
    sp.seed = uint64_t(s[0]) << 32 | uint64_t(s[1]);
    if (!L.comm->is_root() && !std::freopen("/dev/null", "w", stdout)) fail("--tp: cannot silence rank ", L.comm->rank());
  }
  const Tokenizer& tok = require_tokenizer(*L.lm);
  EncodeOptions eo;
  eo.add_special = !no_bos;
  eo.parse_special = !no_special;
  const std::vector<int32_t> ids = prompt_tokens(tok, prompt, eo);
  const auto is_end = [&](int32_t id) { return tok.is_eog(id) || id == tok.bos_id(); };
  std::optional<TokenTrie> trie;
  if (grammar) {
    trie.emplace(tok);
    gp.grammar = &*grammar, gp.trie = &*trie;
  }
  if (echo && !md.json) print(prompt);
  const auto t0 = std::chrono::steady_clock::now();
  const auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

  if (md.n != 1 || md.self_consistency != 0) {  // several samples in one batch
    const int n = md.self_consistency != 0 ? md.self_consistency : md.n;
    const GrammarConstraint sg{gp.grammar, gp.trie, &tok};
    const std::vector<Sample> samples =
        sample_parallel(*L.model, *L.ctx, ids, n, gp.n_predict, sp, is_end, grammar ? &sg : nullptr);
    const double s = seconds();
    json js = json::array();
    std::vector<std::string> texts, answers;
    std::vector<double> means;
    int64_t total = 0;
    for (const Sample& x : samples) {
      std::string text = text_of(tok, ids, x.tokens);
      const bool stopped = cut_at_stop(text, gp.stop);
      json e = {{"text", text}, {"n_generated", x.tokens.size()}, {"logprob", x.logprob},
                {"stop_reason", stopped ? "stop" : x.ended ? "eos" : "length"}};
      total += int64_t(x.tokens.size());
      means.push_back(x.tokens.empty() ? 0.0 : x.logprob / double(x.tokens.size()));
      if (md.self_consistency != 0) {
        std::smatch m;
        answers.push_back(std::regex_search(text, m, answer_re) ? (m.size() > 1 ? m[1].str() : m[0].str()) : "");
        e["answer"] = answers.back();
        e["mean_logprob"] = means.back();
      }
      js.push_back(e);
      texts.push_back(std::move(text));
    }
    std::fprintf(stderr, "tessera: %d samples, %lld tokens in %.2f s (%.1f tok/s aggregate), seeds %llu..%llu\n", n,
                 (long long)total, s, double(total) / std::max(s, 1e-9), (unsigned long long)sp.seed,
                 (unsigned long long)(sp.seed + uint64_t(n) - 1));
    if (md.self_consistency != 0) {
      const Vote v = majority_vote(answers, means);
      if (md.json) {
        print(dump({{"answer", v.votes ? json(v.answer) : json(nullptr)}, {"votes", v.votes}, {"n", n},
                    {"share", double(v.votes) / n}, {"samples", js}}));
      } else if (v.votes == 0) {
        fail("no sample matched --answer-regex '", md.answer_regex, "' (", n, " samples; --json lists them)");
      } else {
        print(v.answer + "\n");
        std::fprintf(stderr, "tessera: answer given by %d of %d samples (%.1f%%), mean token log-probability %.4f\n",
                     v.votes, n, 100.0 * v.votes / n, v.mean_score);
      }
    } else if (md.json) {
      print(dump({{"samples", js}}));
    } else {
      for (int i = 0; i < n; ++i)
        print((i ? "\n" : "") + std::string("--- sample ") + std::to_string(i + 1) + " of " + std::to_string(n) +
              " (" + js[size_t(i)]["stop_reason"].get<std::string>() + ") ---\n" + texts[size_t(i)] + "\n");
    }
    report_verbose(ma, L);
    return 0;
  }

  GenerateStats st;
  std::string collected;  // the text, when printed as JSON
  const auto out = [&](std::string_view s) { md.json ? void(collected.append(s)) : print(s); };
  if (md.beam.beams != 0) {  // the best hypothesis, printed once found
    const GrammarConstraint bg{gp.grammar, gp.trie, &tok};
    const auto hyps = beam_search(*L.model, *L.ctx, ids, gp.n_predict, md.beam, is_end, grammar ? &bg : nullptr);
    const BeamHypothesis& best = hyps.front();
    st.n_prompt = int64_t(ids.size()), st.n_generated = int64_t(best.tokens.size());
    st.decode_s = seconds();
    std::string text = text_of(tok, ids, best.tokens);
    st.stop_reason = cut_at_stop(text, gp.stop) ? "stop" : best.finished ? "eos" : "length";
    out(text);
    std::fprintf(stderr, "tessera: beam search (%d beams): best of %zu hypotheses, log-probability %.4f, score %.4f\n",
                 md.beam.beams, hyps.size(), best.logprob, best.score);
  } else if (speculative) {
    // The draft: the same run options, the context of the main model.
    ModelArgs da = ma;
    da.model = md.draft_path, da.tokenizer.clear(), da.ctx = L.model->n_ctx(), da.load_type.clear();
    da.lora.clear(), da.prefix_adapter.clear(), da.bottleneck_adapter.clear();  // adapters are for the target model
    Loaded D;
    if (!md.draft_path.empty()) D = load(da);
    SpeculativeStats sst;
    st = generate_speculative(*L.model, D.model.get(), *L.ctx, tok, ids, gp, md.spec, sst, out);
    std::fprintf(stderr,
                 "\ntessera: speculative (%s): %lld drafted, %lld accepted (%.1f%%), %lld target forwards, %.2f tokens "
                 "per forward",
                 md.spec.mtp ? "MTP modules"
                 : md.draft_path.empty() ? ("n-gram " + std::to_string(md.spec.ngram)).c_str()
                                         : "draft model",
                 (long long)sst.drafted, (long long)sst.accepted, 100.0 * sst.acceptance(),
                 (long long)sst.target_forwards, sst.tokens_per_forward());
  } else {
    st = generate(*L.model, *L.ctx, tok, ids, gp, out);
  }
  if (md.json) {
    json j = {{"text", collected}, {"n_prompt", st.n_prompt}, {"n_generated", st.n_generated},
              {"stop_reason", st.stop_reason}, {"seed", sp.seed}};
    if (gp.logprobs >= 0) {
      json lp = json::array();
      for (const TokenLogprob& t : st.logprobs) lp.push_back(logprob_json(tok, t));
      j["tokens"] = lp;
    }
    print(dump(j));
  } else {
    std::fputc('\n', stdout);
  }
  const std::string prompt_rate =
      st.prefill_s > 0 ? ", " + std::to_string(int64_t(st.n_prompt / st.prefill_s)) + " tok/s" : "";
  std::fprintf(stderr, "\ntessera: seed %llu | prompt %lld tokens%s | generated %lld tokens, %.1f tok/s | stop: %s\n",
               (unsigned long long)sp.seed, (long long)st.n_prompt, prompt_rate.c_str(), (long long)st.n_generated,
               st.n_generated / std::max(st.decode_s, 1e-9), st.stop_reason.c_str());
  report_verbose(ma, L);
  return 0;
}

}  // namespace

}  // namespace tessera::cli
