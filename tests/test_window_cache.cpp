// The KV cache's window pool (model/kv_cache.h): sliding-window layers keep only
// the positions their queries can still read, a ring of blocks per sequence.
// Interleaved sequences far past the window, a fork and a rewind give the logits
// of a full cache run alone; the pool's blocks stay within the ring bound and come
// back; a rewind past what the ring kept is an error that changes nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "infer/beam.h"
#include "infer/parallel.h"
#include "model/model.h"
#include "model/synthetic.h"

using namespace tessera;

namespace {

constexpr int64_t kWindow = 10, kBlock = 4, kRows = 6;

// Llama with a window of 10 on its even layers (full attention on the odd ones: both pools in use).
Weights windowed_model() {
  ModelConfig c = synthetic_config("260k");
  c.n_layers = 3, c.vocab_size = 300, c.max_seq_len = 96;
  c.dim = 64, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 160;
  c.layer_cfg = sliding_window_layers(c.n_layers, kWindow, "even");
  return make_random_weights(c, DType::F32, 9, 2);
}

std::vector<int32_t> tokens(int64_t n, int salt, int64_t V) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t((i * 29 + salt * 13 + 3) % V);
  return t;
}

// Every position's logits of toks run alone on a model's own cache, which keeps
// every position (its ring would not be smaller than the context at max_batch 256).
std::vector<float> alone(const Weights& w, const std::vector<int32_t>& toks) {
  Model m(w, RunOptions{});
  KernelContext ctx(2);
  std::vector<float> out(toks.size() * size_t(w.cfg.vocab_size));
  m.forward_all(ctx, toks.data(), int64_t(toks.size()), 0, out.data());
  return out;
}

double max_rel(const float* a, const float* b, int64_t n) {
  double scale = 1, worst = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, double(std::fabs(b[i])));
  for (int64_t i = 0; i < n; ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst / scale;
}

}  // namespace

TEST(WindowCache, RingOfBlocksMatchesAFullCache) {
  const Weights w = windowed_model();
  const int64_t V = w.cfg.vocab_size, len = 90;
  RunOptions ro;
  ro.own_cache = false, ro.kv_block_size = kBlock, ro.max_batch = kRows;
  Model m(w, ro);
  const int64_t seqs = 4, per_seq = 96 / kBlock;
  KVCache cache = m.make_cache(seqs * per_seq, seqs);
  KVCache full = m.make_cache(seqs * per_seq);
  ASSERT_EQ(cache.window(), kWindow);
  EXPECT_EQ(full.window(), 0);
  EXPECT_TRUE(cache.windowed(0) && !cache.windowed(1) && cache.windowed(2));
  // A sequence's ring: the window, a rewind and a step's rows, in blocks, plus one.
  const int64_t ring = (kWindow - 1 + kRows + kRows + kBlock - 1) / kBlock + 1;
  EXPECT_EQ(cache.window_blocks(), seqs * ring);
  EXPECT_LT(cache.bytes(), full.bytes());
  EXPECT_NEAR(double(cache.bytes()), KVCache::planned_bytes(w.cfg, [&] {
                KVCacheOptions o;
                o.n_blocks = seqs * per_seq, o.block_size = kBlock, o.window_seqs = seqs;
                o.window_rows = o.rewind = kRows;
                return o;
              }()), 0.0);

  KernelContext ctx(2);
  std::vector<int32_t> toks[3];
  std::vector<float> ref[3];
  int32_t id[3];
  for (int s = 0; s < 3; ++s) {
    toks[s] = tokens(len, s, V);
    ref[s] = alone(w, toks[s]);
    id[s] = cache.add_seq();
  }
  // Interleaved: 1-2 rows of each sequence per forward (within the rows the cache was made for).
  std::vector<float> out(size_t(6 * V));
  int64_t at[3] = {0, 0, 0};
  double worst = 0;
  for (int step = 0; at[0] < len || at[1] < len || at[2] < len; ++step) {
    Batch b;
    for (int s = 0; s < 3; ++s) {
      const int64_t k = std::min<int64_t>(1 + (step + s) % 2, len - at[s]);
      for (int64_t i = 0; i < k; ++i) b.add(toks[s][size_t(at[s] + i)], at[s] + i, id[s], true);
    }
    m.forward(ctx, b, cache, out.data());
    for (int64_t r = 0; r < b.size(); ++r) {
      const int s = b.seq[size_t(r)] == id[0] ? 0 : b.seq[size_t(r)] == id[1] ? 1 : 2;
      worst = std::max(worst, max_rel(out.data() + r * V, ref[s].data() + b.pos[size_t(r)] * V, V));
    }
    for (int s = 0; s < 3; ++s) at[s] = std::min(len, at[s] + 1 + (step + s) % 2);
    // Each live sequence holds at most its ring.
    ASSERT_LE(cache.window_blocks() - cache.window_free_blocks(), 3 * ring) << "step " << step;
  }
  EXPECT_LT(worst, 1e-5) << "interleaved";

  // A fork at 90 going on differently, and sequence 1 rewound by 5 (within the kept rewind).
  const int32_t f = cache.fork(id[0]);
  const auto tail = tokens(4, 7, V);
  std::vector<int32_t> forked(toks[0]);
  forked.insert(forked.end(), tail.begin(), tail.end());
  std::vector<int32_t> rewound(toks[1].begin(), toks[1].begin() + 85);
  rewound.insert(rewound.end(), tail.begin(), tail.end());
  ASSERT_TRUE(cache.can_keep(id[1], 85));
  Batch b;
  for (int64_t i = 0; i < 4; ++i) b.add(tail[size_t(i)], len + i, f, true);
  for (int64_t i = 0; i < 4; ++i) b.add(tail[size_t(i)], 85 + i, id[1], true);
  out.resize(size_t(8 * V));
  m.forward(ctx, b, cache, out.data());
  const auto ref_f = alone(w, forked), ref_r = alone(w, rewound);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_LT(max_rel(out.data() + i * V, ref_f.data() + (len + i) * V, V), 1e-5) << "fork row " << i;
    EXPECT_LT(max_rel(out.data() + (4 + i) * V, ref_r.data() + (85 + i) * V, V), 1e-5) << "rewound row " << i;
  }
  // The source of the fork goes on unchanged (its shared partial block was copied).
  b.clear();
  b.add(toks[1][0], len, id[0], true);
  m.forward(ctx, b, cache, out.data());
  std::vector<int32_t> on(toks[0]);
  on.push_back(toks[1][0]);
  EXPECT_LT(max_rel(out.data(), alone(w, on).data() + len * V, V), 1e-5) << "fork source";

  // Past the ring: an error naming the window, nothing changed; from position 0 it runs again.
  EXPECT_FALSE(cache.can_keep(id[2], 40));
  b.clear();
  b.add(toks[2][40], 40, id[2], true);
  const int64_t free_main = cache.free_blocks(), free_win = cache.window_free_blocks();
  try {
    m.forward(ctx, b, cache, out.data());
    ADD_FAILURE() << "a rewind past the window's ring ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sliding-window"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(id[2]), len);
  EXPECT_EQ(cache.free_blocks(), free_main);
  EXPECT_EQ(cache.window_free_blocks(), free_win);
  EXPECT_THROW(cache.truncate(id[2], 40), Error);
  ASSERT_TRUE(cache.can_keep(id[2], 0));
  b.clear();
  for (int64_t p = 0; p < kRows; ++p) b.add(toks[2][size_t(p)], p, id[2], true);
  m.forward(ctx, b, cache, out.data());
  for (int64_t p = 0; p < kRows; ++p)
    EXPECT_LT(max_rel(out.data() + p * V, ref[2].data() + p * V, V), 1e-5) << "restarted row " << p;

  for (int32_t s : {id[0], id[1], id[2], f}) cache.free_seq(s);
  EXPECT_EQ(cache.free_blocks(), cache.n_blocks());
  EXPECT_EQ(cache.window_free_blocks(), cache.window_blocks());
}

// The own cache of a model (generate, chat, perplexity) keeps a ring too: long
// prompts in chunks and token-by-token decode match a full cache, a rewind
// within max_batch works, and can_resume says where it cannot.
TEST(WindowCache, OwnCacheKeepsTheWindowOnly) {
  const Weights w = windowed_model();
  const int64_t V = w.cfg.vocab_size, n = 90;
  const auto toks = tokens(n, 3, V);
  const auto ref = alone(w, toks);
  RunOptions ro;
  ro.kv_block_size = kBlock, ro.max_batch = kRows;
  Model m(w, ro), keep_all(w, RunOptions{});
  EXPECT_LT(m.kv_bytes(), keep_all.kv_bytes());
  KernelContext ctx(2);
  std::vector<float> all(size_t(n * V));
  m.forward_all(ctx, toks.data(), n, 0, all.data());  // 15 chunks of 6
  double worst = 0;
  for (int64_t p = 0; p < n; ++p) worst = std::max(worst, max_rel(all.data() + p * V, ref.data() + p * V, V));
  EXPECT_LT(worst, 1e-5) << "chunked prefill";
  EXPECT_TRUE(m.can_resume(n - kRows));
  EXPECT_FALSE(m.can_resume(30));
  EXPECT_TRUE(m.can_resume(0));
  const float* lg = m.forward(ctx, &toks[size_t(n - 3)], 1, n - 3);  // back 3 positions
  EXPECT_LT(max_rel(lg, ref.data() + (n - 3) * V, V), 1e-5);
  EXPECT_THROW(m.forward(ctx, &toks[30], 1, 30), Error);
  for (int64_t p = 0; p < 20; ++p) lg = m.forward(ctx, &toks[size_t(p)], 1, p);  // over from 0, token by token
  EXPECT_LT(max_rel(lg, ref.data() + 19 * V, V), 1e-5);
}

// Parallel samples fork sequences from a prompt run in chunks: with rings (blocks of 4)
// they give what the same model gives keeping every position (blocks of 32, where a ring
// would be no smaller), seed for seed; beam search (chunked prompt) likewise.
TEST(WindowCache, ParallelSamplesAndBeamsMatchKeepingEveryPosition) {
  const Weights w = windowed_model();
  const int64_t V = w.cfg.vocab_size;
  const auto prompt = tokens(70, 5, V);  // two chunks of kPromptChunk
  RunOptions ring_opt, all_opt;
  ring_opt.kv_block_size = kBlock, ring_opt.max_batch = all_opt.max_batch = kRows;
  Model ring(w, ring_opt), all(w, all_opt);
  const int64_t per_seq = (70 + 20 + kBlock - 1) / kBlock + 1;
  ASSERT_GT(ring.make_cache(3 * per_seq, 3, kPromptChunk).window(), 0);
  // (Beam search's 2 B + 1 rings are no smaller than these B contexts: it keeps every position,
  // and runs its prompt in chunks all the same.)
  EXPECT_EQ(ring.make_cache(3 * per_seq + 1, 7, kPromptChunk).window(), 0);
  EXPECT_EQ(all.make_cache(3 * ((90 + 31) / 32 + 1), 3, kPromptChunk).window(), 0);
  KernelContext ctx(2);
  SamplerParams sp;
  sp.temp = 1.f, sp.top_k = 0, sp.top_p = 1.f, sp.min_p = 0.f, sp.seed = 11;
  const auto is_end = [](int32_t id) { return id == 0; };
  const auto a = sample_parallel(ring, ctx, prompt, 3, 20, sp, is_end);
  const auto b = sample_parallel(all, ctx, prompt, 3, 20, sp, is_end);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens) << "sample " << i;
    EXPECT_NEAR(a[i].logprob, b[i].logprob, 1e-4) << "sample " << i;
  }
  BeamParams bp;
  bp.beams = 3;
  const auto ba = beam_search(ring, ctx, prompt, 20, bp, is_end);
  const auto bb = beam_search(all, ctx, prompt, 20, bp, is_end);
  ASSERT_EQ(ba.size(), bb.size());
  for (size_t i = 0; i < ba.size(); ++i) {
    EXPECT_EQ(ba[i].tokens, bb[i].tokens) << "hypothesis " << i;
    EXPECT_NEAR(ba[i].logprob, bb[i].logprob, 1e-4) << "hypothesis " << i;
  }
}
