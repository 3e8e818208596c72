#include "infer/beam.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "core/error.h"
#include "infer/sampler.h"
#include "model/batch.h"

namespace tessera {

namespace {

struct Live {
  int32_t seq;
  std::vector<int32_t> tokens;
  double logprob;
  std::optional<GrammarState> gs;  // with a grammar: where this hypothesis stands in it
};

struct Cand {
  double logprob;
  int beam;
  int32_t token;
};

double normalized(double logprob, int64_t len, float lp) {
  return lp == 0.f ? logprob : logprob / std::pow(double(std::max<int64_t>(len, 1)), double(lp));
}

}  // namespace

std::vector<BeamHypothesis> beam_search(Model& model, KernelContext& ctx, const std::vector<int32_t>& prompt,
                                        int64_t max_new, const BeamParams& p,
                                        const std::function<bool(int32_t)>& is_end, const GrammarConstraint* g) {
  const int64_t V = model.config().vocab_size, P = int64_t(prompt.size());
  if (p.beams < 1 || p.beams > 256) fail("--beams must be in [1, 256], got ", p.beams);
  if (!std::isfinite(p.length_penalty)) fail("--length-penalty must be a finite number, got ", p.length_penalty);
  if (prompt.empty()) fail("beam search: the prompt has no tokens");
  if (P >= model.n_ctx())
    fail("the prompt has ", P, " tokens, which does not fit in the context of ", model.n_ctx(),
         " (raise -c or shorten the prompt)");
  max_new = max_new < 0 ? model.n_ctx() - P : std::min(max_new, model.n_ctx() - P);
  const int B = p.beams;
  // Every beam's blocks, and one more block each for the copy of a shared last block.
  const int64_t bs = model.kv_block_size(), per_seq = (P + max_new + bs - 1) / bs + 1;
  // The model's KV type (and prefix adapter); sliding-window layers keep a ring for each of the
  // at most 2 B sequences live while beams fork, the prompt run in chunks of kPromptChunk.
  KVCache cache = model.make_cache(int64_t(B) * per_seq + 1, 2 * int64_t(B) + 1, kPromptChunk);
  std::vector<float> logits(size_t(B) * size_t(V));
  Batch batch;
  if (g && (!g->grammar || !g->trie || !g->tok)) fail("beam search: a grammar needs its token trie and tokenizer");
  std::vector<Live> live{{cache.add_seq(), {}, 0.0, std::nullopt}};
  if (g) live[0].gs.emplace(*g->grammar);
  std::vector<float> masked(g ? size_t(V) : 0);
  std::vector<uint8_t> allowed(g ? size_t(V) : 0);
  for (int64_t i0 = 0; i0 < P; i0 += kPromptChunk) {
    batch.clear();
    for (int64_t i = i0; i < std::min(P, i0 + kPromptChunk); ++i) batch.add(prompt[size_t(i)], i, live[0].seq, i == P - 1);
    model.forward(ctx, batch, cache, logits.data());
  }

  std::vector<BeamHypothesis> done;  // the best finished, best first, at most B
  const auto worst_done = [&] { return done.size() < size_t(B) ? -INFINITY : done.back().score; };
  const auto add_done = [&](BeamHypothesis h) {
    if (done.size() == size_t(B) && h.score <= done.back().score) return;
    done.insert(std::upper_bound(done.begin(), done.end(), h,
                                 [](const BeamHypothesis& a, const BeamHypothesis& b) { return a.score > b.score; }),
                std::move(h));
    if (done.size() > size_t(B)) done.pop_back();
  };
  std::vector<Cand> cands;
  bool settled = false;  // stopped because no live beam can beat the finished ones
  for (int64_t step = 0; step < max_new && !live.empty(); ++step) {
    // The 2 B best continuations over all beams (enough for B live ones after ends).
    cands.clear();
    const int n_top = int(std::min<int64_t>(2 * B, V));
    for (size_t b = 0; b < live.size(); ++b) {
      const float* row = logits.data() + b * size_t(V);
      if (g) {  // the tokens this hypothesis's grammar state allows; the others at -inf
        if (!grammar_allowed(*live[b].gs, *g->trie, *g->tok, allowed)) continue;
        for (int64_t i = 0; i < V; ++i) masked[size_t(i)] = allowed[size_t(i)] ? row[i] : -INFINITY;  // a dead end of the grammar: this hypothesis has no successor
        row = masked.data();
      }
      for (const auto& [id, lp] : token_logprob(row, V, 0, n_top).top)
        if (std::isfinite(lp)) cands.push_back({live[b].logprob + lp, int(b), id});
    }
    std::sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
      return a.logprob > b.logprob || (a.logprob == b.logprob && (a.beam < b.beam || (a.beam == b.beam && a.token < b.token)));
    });
    std::vector<Live> next;
    std::vector<int> children(live.size(), 0);
    for (const Cand& c : cands) {
      if (next.size() == size_t(B)) break;
      const Live& parent = live[size_t(c.beam)];
      const int64_t len = int64_t(parent.tokens.size()) + 1;
      if (is_end(c.token)) {
        add_done({parent.tokens, c.logprob, normalized(c.logprob, len, p.length_penalty), true});
        continue;
      }
      Live n{-1, parent.tokens, c.logprob, parent.gs};
      if (n.gs) n.gs->accept(g->tok->token_bytes(c.token));
      n.tokens.push_back(c.token);
      n.seq = c.beam;  // the parent's index until sequences are assigned below
      ++children[size_t(c.beam)];
      next.push_back(std::move(n));
    }
    // Sequences: a parent's first successor takes its sequence, the others fork it; childless parents are freed.
    std::vector<int> used(live.size(), 0);
    for (Live& n : next) {
      const int b = n.seq;
      n.seq = used[size_t(b)]++ == 0 ? live[size_t(b)].seq : cache.fork(live[size_t(b)].seq);
    }
    for (size_t b = 0; b < live.size(); ++b)
      if (children[b] == 0) cache.free_seq(live[b].seq);
    live = std::move(next);
    if (live.empty()) break;
    // Stop when B have finished and no live beam can beat the worst of them:
    // log-probabilities only fall, so a beam's best reachable score is its
    // current one (penalty <= 0) or its log-probability over the longest length.
    if (done.size() == size_t(B)) {
      if (p.early_stopping) {
        settled = true;
        break;
      }
      double best = -INFINITY;
      for (const Live& l : live) {
        const int64_t len = p.length_penalty > 0 ? max_new : int64_t(l.tokens.size());
        best = std::max(best, normalized(l.logprob, len, p.length_penalty));
      }
      if (best <= worst_done()) {
        settled = true;
        break;
      }
    }
    if (step + 1 == max_new) break;
    batch.clear();
    for (const Live& l : live) batch.add(l.tokens.back(), P + int64_t(l.tokens.size()) - 1, l.seq, true);
    model.forward(ctx, batch, cache, logits.data());
  }
  // Out of length (or context): the live beams compete as they are.
  for (Live& l : settled ? std::vector<Live>{} : live) {
    const int64_t len = int64_t(l.tokens.size());
    add_done({std::move(l.tokens), l.logprob, normalized(l.logprob, len, p.length_penalty), false});
  }
  if (done.empty()) fail("beam search: the grammar cannot be continued with any token of the vocabulary");
  return done;
}

}  // namespace tessera
