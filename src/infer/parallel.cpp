#include "infer/parallel.h"

#include <map>

#include "core/error.h"
#include "infer/generate.h"
#include "model/batch.h"

namespace tessera {

std::vector<Sample> sample_parallel(Model& model, KernelContext& ctx, const std::vector<int32_t>& prompt, int n,
                                    int64_t max_new, const SamplerParams& sp,
                                    const std::function<bool(int32_t)>& is_end, const GrammarConstraint* g) {
  const int64_t V = model.config().vocab_size, P = int64_t(prompt.size());
  if (n < 1 || n > 256) fail("--n must be in [1, 256], got ", n);
  if (prompt.empty()) fail("parallel sampling: the prompt has no tokens");
  if (P >= model.n_ctx())
    fail("the prompt has ", P, " tokens, which does not fit in the context of ", model.n_ctx(),
         " (raise -c or shorten the prompt)");
  max_new = max_new < 0 ? model.n_ctx() - P : std::min(max_new, model.n_ctx() - P);
  // Every sample's blocks plus one for the copy of the shared last prompt block.
  const int64_t bs = model.kv_block_size(), per_seq = (P + max_new + bs - 1) / bs + 1;
  // The model's KV type (and prefix adapter); sliding-window layers keep a ring per sample,
  // the prompt run in chunks of kPromptChunk.
  KVCache cache = model.make_cache(int64_t(n) * per_seq, n, kPromptChunk);
  const size_t Vs = size_t(V);
  std::vector<float> logits(size_t(n) * Vs), work(Vs);
  std::vector<int32_t> seqs{cache.add_seq()};
  Batch batch;
  for (int64_t i0 = 0; i0 < P; i0 += kPromptChunk) {
    batch.clear();
    for (int64_t i = i0; i < std::min(P, i0 + kPromptChunk); ++i) batch.add(prompt[size_t(i)], i, seqs[0], i == P - 1);
    model.forward(ctx, batch, cache, logits.data());
  }
  for (int i = 1; i < n; ++i) {
    seqs.push_back(cache.fork(seqs[0]));
    std::copy(logits.begin(), logits.begin() + V, logits.begin() + int64_t(i) * V);
  }
  std::vector<Sample> out(static_cast<size_t>(n));
  std::vector<Sampler> samplers;
  std::vector<std::vector<int32_t>> hist(static_cast<size_t>(n), prompt);
  for (int i = 0; i < n; ++i) {
    SamplerParams p = sp;
    p.seed = sp.seed + uint64_t(i);
    samplers.emplace_back(p, int32_t(V));
  }
  if (g && (!g->grammar || !g->trie || !g->tok)) fail("parallel sampling: a grammar needs its token trie and tokenizer");
  std::vector<GrammarState> gs;
  if (g) gs.assign(static_cast<size_t>(n), GrammarState(*g->grammar));
  std::vector<uint8_t> allowed;
  std::vector<int> live(static_cast<size_t>(n));  // samples still going, in the order of their logits rows
  for (int i = 0; i < n; ++i) live[size_t(i)] = i;
  std::vector<int> next;
  next.reserve(size_t(n));
  for (int64_t step = 0; step < max_new && !live.empty(); ++step) {
    next.clear();
    batch.clear();
    for (size_t r = 0; r < live.size(); ++r) {
      const int i = live[r];
      const float* l = logits.data() + r * size_t(V);
      std::copy(l, l + V, work.begin());
      int32_t id = samplers[size_t(i)].sample(work.data(), hist[size_t(i)]);
      if (g)
        id = constrain_sample(samplers[size_t(i)], gs[size_t(i)], *g->trie, *g->tok, id, l, work, allowed,
                              hist[size_t(i)], prompt.size());
      Sample& s = out[size_t(i)];
      if (is_end(id)) {
        s.ended = true;
        cache.free_seq(seqs[size_t(i)]);
        continue;
      }
      s.tokens.push_back(id);
      s.logprob += token_logprob(l, V, id, 0).logprob;
      hist[size_t(i)].push_back(id);
      if (step + 1 < max_new) {
        batch.add(id, P + step, seqs[size_t(i)], true);
        next.push_back(i);
      }
    }
    live.swap(next);
    if (!live.empty()) model.forward(ctx, batch, cache, logits.data());
  }
  return out;
}

Vote majority_vote(const std::vector<std::string>& answers, const std::vector<double>& scores) {
  std::map<std::string, std::pair<int, double>> tally;  // answer -> (votes, sum of scores)
  for (size_t i = 0; i < answers.size(); ++i) {
    if (answers[i].empty()) continue;
    auto& t = tally[answers[i]];
    ++t.first;
    t.second += i < scores.size() ? scores[i] : 0.0;
  }
  Vote best;
  for (const auto& [answer, t] : tally) {
    const double mean = t.second / t.first;
    if (t.first > best.votes || (t.first == best.votes && mean > best.mean_score)) best = {answer, t.first, mean};
  }
  return best;
}

}  // namespace tessera
