#include "infer/speculative.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"

namespace tessera {

double spec_accept_probability(double pt, double pd) { return pd > 0 ? std::min(1.0, pt / pd) : 1.0; }

int32_t spec_residual_draw(const float* pt, const float* pd, int64_t V, float u) {
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::max(0.f, pt[i] - pd[i]);
  const bool from_pt = !(sum > 0);
  if (from_pt) {
    sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += pt[i];
  }
  const double r = double(u) * sum;
  double cum = 0;
  int32_t last = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double m = from_pt ? pt[i] : std::max(0.f, pt[i] - pd[i]);
    if (m <= 0) continue;
    cum += m;
    last = int32_t(i);
    if (r < cum) return last;
  }
  return last;  // rounding: the last token with mass
}

std::vector<int32_t> ngram_propose(const std::vector<int32_t>& h, int max_n, int k) {
  const int64_t L = int64_t(h.size());
  for (int64_t n = std::min<int64_t>(max_n, L - 1); n >= 1; --n) {
    // The latest start j < L - n with h[j, j + n) == h[L - n, L).
    for (int64_t j = L - n - 1; j >= 0; --j) {
      if (!std::equal(h.begin() + j, h.begin() + j + n, h.end() - n)) continue;
      const int64_t from = j + n, to = std::min(L, from + k);
      return std::vector<int32_t>(h.begin() + from, h.begin() + to);
    }
  }
  return {};
}

SpeculativeStats speculative_decode(Model& target, Model* draft, KernelContext& ctx,
                                    const std::vector<int32_t>& prompt, const SamplerParams& sampling,
                                    const SpeculativeParams& spec, int64_t max_tokens,
                                    const std::function<bool(int32_t)>& on_token, const GrammarConstraint* gc) {
  using clock = std::chrono::steady_clock;
  const int64_t V = target.config().vocab_size;
  if (prompt.empty()) fail("speculative decoding: the prompt has no tokens");
  if (spec.draft_max < 1) fail("--draft-max must be >= 1, got ", spec.draft_max);
  if (!draft && spec.ngram < 1 && !spec.mtp)
    fail("speculative decoding needs a draft model (--draft), --draft-ngram N >= 1 or --draft-mtp");
  if (spec.mtp && (draft || spec.ngram > 0)) fail("--draft-mtp drafts with the model itself: no --draft or --draft-ngram");
  if (spec.mtp && !target.drafts_mtp())
    fail("--draft-mtp: the model was loaded without its multi-token prediction module set up for drafting");
  if (draft && draft->config().vocab_size != V)
    fail("the draft model's vocabulary has ", draft->config().vocab_size, " tokens, the target's ", V,
         "; speculative decoding needs the same tokenizer");
  const int64_t n_ctx = draft ? std::min(target.n_ctx(), draft->n_ctx()) : target.n_ctx();
  if (int64_t(prompt.size()) >= n_ctx)
    fail("the prompt has ", prompt.size(), " tokens, which does not fit in the context of ", n_ctx,
         " (raise -c or shorten the prompt)");
  SpeculativeStats st;
  Sampler sampler(sampling, int32_t(V));
  const int K = spec.mtp ? std::min(spec.draft_max, target.drafts_mtp()) : spec.draft_max;  // MTP: one per module
  const size_t Vs = size_t(V);
  std::vector<float> pt(Vs), pd(size_t(K) * Vs), tl(size_t(K + 1) * Vs), dl(Vs);
  // hist: the prompt and the tokens produced; while a round scores proposals they
  // sit on its end (the penalties' history), taken off before the round's tokens go on.
  std::vector<int32_t> hist = prompt, x, rows;
  // Under a grammar: the state after hist, and per proposal the state it is drawn in.
  std::optional<GrammarState> gs;
  std::vector<GrammarState> gst;
  std::vector<float> work(gc ? Vs : 0), q;
  std::vector<uint8_t> allowed;
  if (gc) gs.emplace(*gc->grammar), gst.reserve(size_t(K) + 1);
  const auto is_end = [&](int32_t t) { return gc->tok->is_eog(t) || t == gc->tok->bos_id(); };
  // p (V): the distribution of position i of the round from raw logits (grammar state gst[i]).
  const auto dist = [&](const float* raw, size_t i, float* p) {
    if (gc) return constrained_distribution(sampler, gst[i], *gc, raw, hist, p, work, allowed, q);
    std::copy(raw, raw + V, dl.begin());
    sampler.distribution(dl.data(), hist, p);
  };
  // gst[i + 1] from gst[i] and proposal t; false when t ends the text (no state after it).
  const auto advance = [&](size_t i, int32_t t) {
    if (!gc) return true;
    if (is_end(t)) return false;
    GrammarState s = gst[i];
    s.accept(gc->tok->token_bytes(t));
    if (gst.size() > i + 1) gst[i + 1] = std::move(s);
    else gst.push_back(std::move(s));
    return true;
  };
  hist.reserve(size_t(n_ctx + K + 1)), x.reserve(size_t(K)), rows.reserve(size_t(K + 1));  // no allocation per round

  // All but the last prompt token; it is the first row of the first verification.
  const auto t0 = clock::now();
  const int64_t n0 = int64_t(prompt.size()) - 1;
  if (n0 > 0) {
    target.forward(ctx, prompt.data(), n0, 0);
    if (draft) draft->forward(ctx, prompt.data(), n0, 0);
  }
  st.prefill_s = std::chrono::duration<double>(clock::now() - t0).count();
  int64_t dlen = n0;  // leading tokens of hist the draft's cache holds

  for (bool go = true; go && (max_tokens < 0 || st.produced < max_tokens);) {
    const int64_t pos = int64_t(hist.size()) - 1;  // the last token's position (not in the target's cache yet)
    if (pos >= n_ctx) break;
    // Rows pos .. pos + k must fit the context; no more proposals than tokens still wanted.
    int64_t k = std::min<int64_t>(K, n_ctx - 1 - pos);
    if (max_tokens >= 0) k = std::min(k, max_tokens - st.produced - 1);
    x.clear();
    const size_t h0 = hist.size();
    if (gc) gst.assign(1, *gs);
    if (k > 0 && spec.mtp) {
      // Module i + 1 at pos - 1 reads module i's state there and the token i + 1 ahead: the last
      // token for the first module, then each draft (a one-token prompt has no state yet).
      for (int64_t i = 0; pos >= 1 && i < k; ++i) {
        float* p = pd.data() + i * V;
        dist(target.mtp_draft(ctx, i == 0 ? hist[h0 - 1] : x.back(), pos, int(i + 1)), size_t(i), p);
        x.push_back(sampler.draw(p));
        hist.push_back(x.back());
        if (!advance(size_t(i), x.back())) break;  // an end token: nothing follows it
      }
      hist.resize(h0);
    } else if (k > 0 && draft) {
      const float* l = draft->forward(ctx, hist.data() + dlen, int64_t(h0) - dlen, dlen);
      dlen = int64_t(h0);
      for (int64_t i = 0; i < k; ++i) {
        float* p = pd.data() + i * V;
        dist(l, size_t(i), p);
        x.push_back(sampler.draw(p));
        hist.push_back(x.back());
        if (!advance(size_t(i), x.back())) break;  // an end token: nothing follows it
        if (i + 1 < k) l = draft->forward(ctx, &x.back(), 1, dlen + i);
      }
      hist.resize(h0);
    } else if (k > 0) {
      x = ngram_propose(hist, spec.ngram, int(k));
      for (size_t i = 0; i < x.size(); ++i) {
        if (gc) {  // the proposals the grammar lets through, up to the first it refuses or an end
          const bool ok = is_end(x[i]) ? gst[i].can_end() : gst[i].allows(gc->tok->token_bytes(x[i]));
          if (!ok) {
            x.resize(i);
            break;
          }
          if (!advance(i, x[i])) {
            x.resize(i + 1);
          }
        }
        float* p = pd.data() + int64_t(i) * V;
        std::fill(p, p + V, 0.f);
        p[x[i]] = 1.f;
      }
    }
    const int64_t kk = int64_t(x.size());
    rows.assign(1, hist[h0 - 1]);
    rows.insert(rows.end(), x.begin(), x.end());
    target.forward_all(ctx, rows.data(), kk + 1, pos, tl.data());
    ++st.target_forwards;
    st.drafted += kk;
    // Accept proposals while the test passes; the first rejection draws from
    // the residual, all accepted draws the bonus token from the last row.
    int64_t n_acc = 0;
    int32_t next = -1;
    bool ended = false;  // under a grammar: an accepted end token closes the text (no token after it)
    for (int64_t i = 0; i <= kk; ++i) {
      dist(tl.data() + i * V, size_t(i), pt.data());
      if (i == kk) {
        next = sampler.draw(pt.data());
        break;
      }
      const float* p = pd.data() + i * V;
      if (double(sampler.uniform()) < spec_accept_probability(pt[size_t(x[size_t(i)])], p[x[size_t(i)]])) {
        ++n_acc;
        hist.push_back(x[size_t(i)]);
        if (gc && is_end(x[size_t(i)])) {
          ended = true;
          break;
        }
        continue;
      }
      next = spec_residual_draw(pt.data(), p, V, sampler.uniform());
      break;
    }
    st.accepted += n_acc;
    hist.resize(h0);
    if (gc && !ended && !is_end(next)) {  // the state after the accepted proposals and the drawn token
      *gs = gst[size_t(n_acc)];
      gs->accept(gc->tok->token_bytes(next));
    }
    // The draft's cache holds hist and the proposals it ran (all but the last): keep the accepted ones.
    if (draft && kk > 0) dlen += std::min(n_acc, kk - 1);
    for (int64_t i = 0; i < n_acc + (ended ? 0 : 1) && go; ++i) {
      const int32_t id = i < n_acc ? x[size_t(i)] : next;
      hist.push_back(id);
      ++st.produced;
      go = on_token(id);
    }
  }
  return st;
}

GenerateStats generate_speculative(Model& target, Model* draft, KernelContext& ctx, const Tokenizer& tok,
                                   const std::vector<int32_t>& prompt, const GenerateParams& params,
                                   const SpeculativeParams& spec, SpeculativeStats& sst,
                                   const std::function<void(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  GenerateStats st;
  st.n_prompt = int64_t(prompt.size());
  st.tokens = prompt;
  TokenEmitter emit(tok, params, st, on_text);
  const auto t0 = clock::now();
  const GrammarConstraint gc{params.grammar, params.trie, &tok};
  sst = speculative_decode(target, draft, ctx, prompt, params.sampling, spec, params.n_predict,
                           [&](int32_t id) { return emit.push(id); }, params.grammar ? &gc : nullptr);
  // Ended neither by a token nor by the count: the context is full.
  if (st.stop_reason == "length" && (params.n_predict < 0 || st.n_generated < params.n_predict))
    st.stop_reason = "context";
  emit.finish();
  st.prefill_s = sst.prefill_s;
  st.decode_s = std::chrono::duration<double>(clock::now() - t0).count() - sst.prefill_s;
  return st;
}

}  // namespace tessera
