#include "infer/generate.h"

#include <chrono>
#include <cmath>
#include <optional>

#include "core/error.h"

namespace tessera {

std::string StopMatcher::push(std::string_view text, bool& hit) {
  hit = false;
  pending_.append(text);
  size_t first = std::string::npos;
  for (const auto& s : stops_) {
    if (s.empty()) continue;
    size_t at = pending_.find(s);
    if (at < first) first = at;
  }
  if (first != std::string::npos) {
    hit = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Keep the longest suffix of pending_ that is a proper prefix of a stop string.
  size_t keep = 0;
  for (const auto& s : stops_)
    for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), pending_.size()); k > keep; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

std::vector<int32_t> prompt_tokens(const Tokenizer& tok, std::string_view prompt, const EncodeOptions& eo) {
  std::vector<int32_t> ids = tok.encode(prompt, eo);
  if (ids.empty() && tok.doc_start_id() >= 0) ids.push_back(tok.doc_start_id());
  if (ids.empty()) fail("the prompt is empty and the tokenizer has neither a BOS nor an end-of-text token to start from");
  return ids;
}

TokenEmitter::TokenEmitter(const Tokenizer& tok, const GenerateParams& p, GenerateStats& st,
                           const std::function<void(std::string_view)>& on_text)
    : tok_(tok), p_(p), st_(st), on_text_(on_text), stops_(std::make_unique<StopMatcher>(p.stop)),
      dec_(std::make_unique<StreamDecoder>(tok)) {
  for (int32_t id : st.tokens) dec_->push(id);  // prime the decoder's state (e.g. the leading-space rule); not emitted
  st_.stop_reason = "length";
}

TokenEmitter::~TokenEmitter() = default;

bool TokenEmitter::push(int32_t id) {
  if (tok_.is_eog(id) || id == tok_.bos_id()) {
    st_.stop_reason = "eos";
    return false;
  }
  st_.tokens.push_back(id);
  ++st_.n_generated;
  bool hit = false;
  const std::string text = stops_->push(dec_->push(id), hit);
  if (!text.empty()) on_text_(text);
  if (hit) {
    st_.stop_reason = "stop";
    return false;
  }
  return p_.n_predict < 0 || st_.n_generated < p_.n_predict;
}

void TokenEmitter::finish() {
  if (st_.stop_reason == "stop") return;
  bool hit = false;
  std::string rest = stops_->push(dec_->flush(), hit);
  if (!hit) rest += stops_->flush();
  if (!rest.empty()) on_text_(rest);
}

bool grammar_allowed(const GrammarState& g, const TokenTrie& trie, const Tokenizer& tok, std::vector<uint8_t>& allowed) {
  const std::string key = g.key();
  bool cached_any = false;
  if (trie.cached_mask(key, allowed, cached_any)) return cached_any;
  g.allowed_tokens(trie, allowed);
  const bool can_end = g.can_end();
  bool any = false;
  for (size_t i = 0; i < allowed.size(); ++i) {
    const int32_t id = int32_t(i);
    if (tok.is_eog(id) || id == tok.bos_id()) allowed[i] = can_end;
    any |= allowed[i] != 0;
  }
  trie.store_mask(key, allowed, any);
  return any;
}

int32_t constrain_sample(Sampler& sampler, GrammarState& g, const TokenTrie& trie, const Tokenizer& tok, int32_t id,
                         const float* raw, std::vector<float>& logits, std::vector<uint8_t>& allowed,
                         const std::vector<int32_t>& history, size_t n_prompt) {
  const auto is_end = [&](int32_t t) { return tok.is_eog(t) || t == tok.bos_id(); };
  const auto ok = [&](int32_t t) { return is_end(t) ? g.can_end() : g.allows(tok.token_bytes(t)); };
  if (!ok(id)) {
    allowed.resize(logits.size());
    const bool any = grammar_allowed(g, trie, tok, allowed);
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = allowed[i] ? raw[i] : -INFINITY;
    if (!any)
      fail("the grammar cannot be continued with any token of the vocabulary after: ",
           tok.decode(std::vector<int32_t>(history.begin() + std::ptrdiff_t(std::min(n_prompt, history.size())), history.end())));
    id = sampler.sample(logits.data(), history);
  }
  if (!is_end(id)) g.accept(tok.token_bytes(id));
  return id;
}

void constrained_distribution(Sampler& sampler, const GrammarState& g, const GrammarConstraint& gc, const float* raw,
                              const std::vector<int32_t>& history, float* p, std::vector<float>& work,
                              std::vector<uint8_t>& allowed, std::vector<float>& q) {
  const size_t V = work.size();
  std::copy(raw, raw + V, work.begin());
  sampler.distribution(work.data(), history, p);
  allowed.resize(V);
  const bool any = grammar_allowed(g, *gc.trie, *gc.tok, allowed);
  double in = 0;  // f's mass on the allowed tokens
  for (size_t i = 0; i < V; ++i) {
    if (allowed[i]) in += double(p[i]);
    else p[i] = 0.f;
  }
  if (!any) fail("the grammar cannot be continued with any token of the vocabulary");
  if (in >= 1.0) return;  // every token f can draw is allowed: no redraw
  for (size_t i = 0; i < V; ++i) work[i] = allowed[i] ? raw[i] : -INFINITY;
  q.resize(V);
  sampler.distribution(work.data(), history, q.data());
  const float rest = float(1.0 - in);
  for (size_t i = 0; i < V; ++i) p[i] += rest * q[i];
}

GenerateStats generate(Model& model, KernelContext& ctx, const Tokenizer& tok, const std::vector<int32_t>& prompt,
                       const GenerateParams& params, const std::function<void(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty()) fail("generate: the prompt has no tokens (give a prompt or let the model add BOS)");
  if (int64_t(prompt.size()) >= model.n_ctx())
    fail("the prompt has ", prompt.size(), " tokens, which does not fit in the context of ", model.n_ctx(),
         " (raise -c or shorten the prompt)");
  GenerateStats st;
  st.n_prompt = int64_t(prompt.size());
  st.tokens = prompt;
  st.tokens.reserve(size_t(model.n_ctx()));
  Sampler sampler(params.sampling, int32_t(model.config().vocab_size));
  TokenEmitter emit(tok, params, st, on_text);
  std::vector<float> logits(size_t(model.config().vocab_size));
  if ((params.grammar != nullptr) != (params.trie != nullptr)) fail("generate: a grammar needs its token trie");
  std::optional<GrammarState> gs;
  if (params.grammar) gs.emplace(*params.grammar);
  std::vector<uint8_t> allowed;

  auto t0 = clock::now();
  const float* out = model.forward(ctx, prompt.data(), int64_t(prompt.size()), 0);
  auto t1 = clock::now();
  st.prefill_s = std::chrono::duration<double>(t1 - t0).count();

  int64_t pos = int64_t(prompt.size());
  while (params.n_predict != 0) {
    std::copy(out, out + logits.size(), logits.begin());
    int32_t next = sampler.sample(logits.data(), st.tokens);
    if (gs) next = constrain_sample(sampler, *gs, *params.trie, tok, next, out, logits, allowed, st.tokens, prompt.size());
    if (params.logprobs >= 0 && !tok.is_eog(next) && next != tok.bos_id())
      st.logprobs.push_back(token_logprob(out, int64_t(logits.size()), next, params.logprobs));
    if (!emit.push(next)) break;
    if (pos >= model.n_ctx()) {
      st.stop_reason = "context";
      break;
    }
    out = model.forward(ctx, &next, 1, pos);
    ++pos;
  }
  emit.finish();
  st.decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  return st;
}

}  // namespace tessera
