// Helpers for tests that compare whole-model outputs.
#pragma once
#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <functional>

#include "infer/grammar.h"
#include "infer/sampler.h"
#include "model/synthetic.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "model/model.h"

namespace tessera::test {

// Logits of every position of `toks` (prefill from position 0), (n, vocab) row-major.
inline std::vector<float> all_logits(const Weights& w, const std::vector<int32_t>& toks) {
  Model m(w, RunOptions{});
  KernelContext ctx(2);
  std::vector<float> out(toks.size() * size_t(w.cfg.vocab_size));
  m.forward_all(ctx, toks.data(), int64_t(toks.size()), 0, out.data());
  return out;
}

// Every position's logits, the ids run in chunks of `chunk` (1: token by token) through
// a model of context 64 with max_batch = chunk.
inline std::vector<float> chunked_logits(const Weights& w, const std::vector<int32_t>& ids, int64_t chunk,
                                         int threads = 2, int64_t kv_block = 32) {
  RunOptions o;
  o.n_ctx = 64;
  o.max_batch = chunk;
  o.kv_block_size = kv_block;
  Model m(w, o);
  KernelContext ctx(threads);
  const int64_t V = w.cfg.vocab_size, n = int64_t(ids.size());
  std::vector<float> out(size_t(n * V));
  for (int64_t p = 0; p < n; p += chunk) m.forward_all(ctx, ids.data() + p, std::min(chunk, n - p), p, out.data() + p * V);
  return out;
}

// Whitespace-separated token ids of a file (the ../shared/reference layout).
inline std::vector<int32_t> read_token_ids(const std::string& path) {
  std::ifstream in(path);
  std::vector<int32_t> ids;
  int32_t x;
  while (in >> x) ids.push_back(x);
  return ids;
}

// Mean next-token loss (nats) of logits (tgt.size(), V) against the targets tgt.
inline double mean_nll(const std::vector<float>& logits, const std::vector<int32_t>& tgt, int64_t V) {
  double s = 0;
  for (size_t t = 0; t < tgt.size(); ++t) {
    const float* z = logits.data() + t * size_t(V);
    double mx = z[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(z[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) - mx);
    s += mx + std::log(sum) - z[tgt[t]];
  }
  return s / double(tgt.size());
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

struct PlainRun {
  std::vector<int32_t> tokens;  // generated, an end token excluded
  double logprob = 0;           // raw log-probabilities of the tokens (infer/sampler.h token_logprob)
  bool ended = false;
};

// The plain decode loop, one token per forward: the reference that batched,
// speculative and beam decoding are checked against.
inline PlainRun plain_decode(Model& m, KernelContext& ctx, const std::vector<int32_t>& prompt, int n,
                             const SamplerParams& sp, const std::function<bool(int32_t)>& is_end = nullptr) {
  const int64_t V = m.config().vocab_size;
  Sampler s(sp, int32_t(V));
  std::vector<int32_t> h = prompt;
  std::vector<float> l(static_cast<size_t>(V));
  PlainRun r;
  const float* p = m.forward(ctx, h.data(), int64_t(h.size()), 0);
  for (int i = 0; i < n; ++i) {
    std::copy(p, p + V, l.begin());
    const int32_t id = s.sample(l.data(), h);
    if (is_end && is_end(id)) {
      r.ended = true;
      break;
    }
    r.logprob += token_logprob(p, V, id, 0).logprob;
    r.tokens.push_back(id);
    h.push_back(id);
    if (i + 1 < n) p = m.forward(ctx, &id, 1, int64_t(h.size()) - 1);
  }
  return r;
}

// A random-weight model of stories260K's shape with its tokenizer from
// ../shared (check TESSERA_REQUIRE_SHARED("models/tok512.bin") first) and the
// vocabulary trie: output that is garbage unless a grammar constrains it.
struct RandomStories {
  Tokenizer tok;
  TokenTrie trie;
  Weights w;
  Model m;
  KernelContext ctx;
  explicit RandomStories(uint64_t seed)
      : tok(load_llama2c_tokenizer(shared_path("models/tok512.bin"), 512)),
        trie(tok),
        w(make_random_weights(synthetic_config("260k"), DType::F32, seed, 1)),
        m(w, one_thread()),
        ctx(1) {}
  static RunOptions one_thread() {
    RunOptions ro;
    ro.max_threads = 1;
    return ro;
  }
};

}  // namespace tessera::test
