// Multi-sequence batches over the paged KV cache (model/kv_cache.h,
// Model::forward(ctx, batch, cache, out)): interleaved sequences get the
// logits they get alone; fork + truncate reproduces a fresh run; the block
// pool's bookkeeping (copy-on-write, reuse, a full pool) and the decode
// attention kernel on a shuffled block table against its reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "kernels/attention.h"
#include "model/model.h"
#include "model/synthetic.h"

using namespace tessera;

namespace {

ModelConfig small(Arch arch) {
  ModelConfig c = synthetic_config(arch == Arch::Llama ? "260k" : "gpt2-tiny");
  c.n_layers = 2, c.vocab_size = 300, c.max_seq_len = 96;
  if (arch == Arch::Llama) c.dim = 64, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 160;
  return c;
}

std::vector<int32_t> tokens(int64_t n, int salt, int64_t V) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t((i * 31 + salt * 17 + 5) % V);
  return t;
}

// Logits of every position of toks run alone from position 0.
std::vector<float> alone(const Weights& w, const std::vector<int32_t>& toks, int threads) {
  RunOptions ro;
  ro.max_threads = threads;
  Model m(w, ro);
  KernelContext ctx(threads);
  std::vector<float> out(toks.size() * size_t(w.cfg.vocab_size));
  m.forward_all(ctx, toks.data(), int64_t(toks.size()), 0, out.data());
  return out;
}

// |a - b| <= rel * max(1, max |b|) elementwise over n values.
void expect_close(const float* a, const float* b, int64_t n, double rel, const std::string& what) {
  double scale = 1;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, double(std::fabs(b[i])));
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  EXPECT_LE(worst, rel * scale) << what;
}

class BatchForward : public ::testing::TestWithParam<std::tuple<Arch, int>> {};

// Three sequences of lengths 37, 12 and 25: first a prefill of each in one
// batch (whole runs, then interleaved rows), then decode steps of all three
// in one batch; every row's logits against the sequence run alone.
TEST_P(BatchForward, InterleavedSequencesMatchRunningAlone) {
  const auto [arch, threads] = GetParam();
  const ModelConfig cfg = small(arch);
  const Weights w = make_random_weights(cfg, DType::F32, 3, 2);
  const int64_t V = cfg.vocab_size;
  const int64_t len[3] = {37, 12, 25};
  std::vector<int32_t> toks[3];
  std::vector<float> ref[3];
  for (int s = 0; s < 3; ++s) {
    toks[s] = tokens(len[s], s, V);
    ref[s] = alone(w, toks[s], threads);
  }
  RunOptions ro;
  ro.max_threads = threads, ro.own_cache = false, ro.kv_block_size = 8, ro.max_batch = 48;
  Model m(w, ro);
  KVCache cache = m.make_cache(64);
  KernelContext ctx(threads);
  int32_t id[3];
  for (auto& i : id) i = cache.add_seq();
  // Prefill the first 20 / 8 / 15 tokens: sequence 0 as a run (GEMM attention),
  // 1 and 2 interleaved row by row (one at a time).
  const int64_t pre[3] = {20, 8, 15};
  Batch b;
  for (int64_t p = 0; p < pre[0]; ++p) b.add(toks[0][size_t(p)], p, id[0], true);
  for (int64_t p = 0; p < std::max(pre[1], pre[2]); ++p)
    for (int s = 1; s < 3; ++s)
      if (p < pre[s]) b.add(toks[s][size_t(p)], p, id[s], true);
  std::vector<float> out(size_t(b.size() * V));
  m.forward(ctx, b, cache, out.data());
  for (int64_t r = 0; r < b.size(); ++r) {
    const int s = b.seq[size_t(r)] == id[0] ? 0 : b.seq[size_t(r)] == id[1] ? 1 : 2;
    expect_close(out.data() + r * V, ref[s].data() + b.pos[size_t(r)] * V, V, 1e-5,
                 "prefill row " + std::to_string(r) + " (sequence " + std::to_string(s) + ")");
  }
  // Then the rest, a few positions per step from each live sequence, only the last row's logits wanted.
  int64_t at[3] = {pre[0], pre[1], pre[2]};
  for (int step = 0; at[0] < len[0] || at[1] < len[1] || at[2] < len[2]; ++step) {
    b.clear();
    for (int s = 2; s >= 0; --s) {
      const int64_t k = std::min<int64_t>(1 + (step + s) % 3, len[s] - at[s]);
      for (int64_t i = 0; i < k; ++i) b.add(toks[s][size_t(at[s] + i)], at[s] + i, id[s], i == k - 1);
    }
    out.resize(size_t(b.n_logits() * V));
    m.forward(ctx, b, cache, out.data());
    int64_t o = 0;
    for (int s = 2; s >= 0; --s) {
      const int64_t k = std::min<int64_t>(1 + (step + s) % 3, len[s] - at[s]);
      if (k <= 0) continue;
      at[s] += k;
      expect_close(out.data() + o * V, ref[s].data() + (at[s] - 1) * V, V, 1e-5,
                   "step " + std::to_string(step) + " sequence " + std::to_string(s));
      ++o;
    }
  }
  for (int s = 0; s < 3; ++s) EXPECT_EQ(cache.length(id[s]), len[s]);
}

INSTANTIATE_TEST_SUITE_P(Archs, BatchForward,
                         ::testing::Combine(::testing::Values(Arch::Llama, Arch::GPT2), ::testing::Values(1, 2)));

// A fork shares the prefix; truncating it and going on differently gives what
// a fresh run of that text gives, and the original is untouched.
TEST(BatchForward, ForkAndTruncateReproduceAFreshRun) {
  const ModelConfig cfg = small(Arch::Llama);
  const Weights w = make_random_weights(cfg, DType::F32, 5, 2);
  const int64_t V = cfg.vocab_size;
  RunOptions ro;
  ro.own_cache = false, ro.kv_block_size = 8;
  Model m(w, ro);
  KVCache cache = m.make_cache(32);
  KernelContext ctx(2);
  const auto a = tokens(30, 1, V);
  const int32_t sa = cache.add_seq();
  Batch b;
  for (int64_t p = 0; p < 30; ++p) b.add(a[size_t(p)], p, sa, p == 29);
  std::vector<float> out(static_cast<size_t>(V));
  m.forward(ctx, b, cache, out.data());
  const int64_t used = cache.n_blocks() - cache.free_blocks();
  EXPECT_EQ(used, 4);  // 30 positions in blocks of 8

  const int32_t sb = cache.fork(sa);
  EXPECT_EQ(cache.free_blocks(), cache.n_blocks() - used);  // shared, nothing copied
  cache.truncate(sb, 19);  // keeps positions 0..18: blocks 0-2 still shared, the third partly
  std::vector<int32_t> fresh(a.begin(), a.begin() + 19);
  const auto tail = tokens(9, 7, V);
  fresh.insert(fresh.end(), tail.begin(), tail.end());
  b.clear();
  for (int64_t i = 0; i < 9; ++i) b.add(tail[size_t(i)], 19 + i, sb, true);
  std::vector<float> got(size_t(9 * V));
  m.forward(ctx, b, cache, got.data());
  const auto ref = alone(w, fresh, 2);
  for (int64_t i = 0; i < 9; ++i)
    expect_close(got.data() + i * V, ref.data() + (19 + i) * V, V, 1e-5, "forked row " + std::to_string(i));

  // The original goes on as if nothing happened (its third block was copied before the fork wrote to it).
  const auto more = tokens(3, 9, V);
  std::vector<int32_t> whole(a);
  whole.insert(whole.end(), more.begin(), more.end());
  b.clear();
  for (int64_t i = 0; i < 3; ++i) b.add(more[size_t(i)], 30 + i, sa, true);
  got.resize(size_t(3 * V));
  m.forward(ctx, b, cache, got.data());
  const auto ref_a = alone(w, whole, 2);
  for (int64_t i = 0; i < 3; ++i)
    expect_close(got.data() + i * V, ref_a.data() + (30 + i) * V, V, 1e-5, "original row " + std::to_string(i));

  // Rewinding a sequence through the batch (its first row before its end) works too.
  b.clear();
  for (int64_t i = 0; i < 4; ++i) b.add(tail[size_t(i)], 19 + i, sa, i == 3);
  out.assign(size_t(V), 0.f);
  m.forward(ctx, b, cache, out.data());
  expect_close(out.data(), ref.data() + 22 * V, V, 1e-5, "rewound original");
  cache.free_seq(sa);
  cache.free_seq(sb);
  EXPECT_EQ(cache.free_blocks(), cache.n_blocks());
}

TEST(BatchForward, BadBatchesAreErrorsAndLeaveTheCacheAlone) {
  const ModelConfig cfg = small(Arch::Llama);
  const Weights w = make_random_weights(cfg, DType::F32, 5, 2);
  RunOptions ro;
  ro.own_cache = false, ro.kv_block_size = 8;
  Model m(w, ro);
  KVCache cache = m.make_cache(3);  // 24 positions in all
  KernelContext ctx(2);
  const int32_t s = cache.add_seq();
  std::vector<float> out(size_t(cfg.vocab_size) * 30);
  auto expect_error = [&](const Batch& b, const std::string& what) {
    try {
      m.forward(ctx, b, cache, out.data());
      ADD_FAILURE() << "no error; expected: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  Batch b;
  for (int64_t p = 0; p < 25; ++p) b.add(1, p, s, false);
  expect_error(b, "KV cache full");
  EXPECT_EQ(cache.length(s), 0);
  b.clear();
  b.add(1, 3, s, true);
  expect_error(b, "a gap");
  b.clear();
  b.add(1, 0, s, true), b.add(2, 2, s, true);
  expect_error(b, "consecutive positions");
  b.clear();
  b.add(1, 0, 7, true);
  expect_error(b, "sequence 7");
  b.clear();
  b.add(int32_t(cfg.vocab_size), 0, s, true);
  expect_error(b, "outside the vocabulary");
  EXPECT_EQ(cache.free_blocks(), 3);
  EXPECT_THROW(cache.truncate(s, 1), Error);
  EXPECT_THROW(cache.fork(9), Error);
  RunOptions own;
  Model with_own(w, own);
  EXPECT_THROW(with_own.forward(ctx, b, cache, out.data()), Error);  // token out of range, not a crash
  const int32_t t = 1;
  Model none(w, ro);
  EXPECT_THROW(none.forward(ctx, &t, 1, 0), Error);  // no own cache
}

// The decode kernel reading a shuffled block table gives the reference's
// result on the same table, and the contiguous layout's result.
TEST(BatchForward, DecodeAttentionOnAShuffledBlockTable) {
  const int64_t hd = 64, kvd = 128, bs = 16, n = 150, n_blocks = 12;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> q(size_t(2 * hd)), pool(size_t(n_blocks * bs * kvd)), flat(size_t(n * kvd)),
      vpool(pool.size()), vflat(flat.size());
  for (auto& x : q) x = nd(rng);
  std::vector<int32_t> table(static_cast<size_t>(n_blocks));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::sort(table.begin() + 4, table.begin() + 7);  // a run of consecutive blocks among shuffled ones
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < kvd; ++i) {
      const float kx = nd(rng), vx = nd(rng);
      const int64_t row = int64_t(table[size_t(j / bs)]) * bs + j % bs;
      pool[size_t(row * kvd + i)] = flat[size_t(j * kvd + i)] = kx;
      vpool[size_t(row * kvd + i)] = vflat[size_t(j * kvd + i)] = vx;
    }
  std::vector<float> scores(size_t(2 * n)), o_paged(size_t(2 * hd)), o_ref(o_paged.size()), o_flat(o_paged.size());
  DecodeAttnArgs a;
  a.q = q.data(), a.q_stride = hd, a.G = 2, a.hd = hd, a.kv_stride = kvd, a.n = n, a.scale = 0.125f;
  a.scores = scores.data(), a.out_stride = hd;
  a.k = pool.data() + hd, a.v = vpool.data() + hd;  // the second KV head
  a.blocks = table.data(), a.block_size = bs;
  a.out = o_paged.data();
  attend_decode(detect_isa(), a);
  a.out = o_ref.data();
  ref::attend_decode(a);
  a.k = flat.data() + hd, a.v = vflat.data() + hd, a.blocks = nullptr, a.out = o_flat.data();
  attend_decode(detect_isa(), a);
  for (int64_t i = 0; i < 2 * hd; ++i) {
    EXPECT_NEAR(o_paged[size_t(i)], o_ref[size_t(i)], 1e-5) << i;
    EXPECT_NEAR(o_paged[size_t(i)], o_flat[size_t(i)], 1e-5) << i;
  }
  // A sliding window: keys [start, n) only, against the reference and against
  // the contiguous layout cut to the same keys.
  a.start = 37;
  a.k = pool.data() + hd, a.v = vpool.data() + hd, a.blocks = table.data(), a.out = o_paged.data();
  attend_decode(detect_isa(), a);
  a.out = o_ref.data();
  ref::attend_decode(a);
  a.k = flat.data() + 37 * kvd + hd, a.v = vflat.data() + 37 * kvd + hd, a.blocks = nullptr, a.start = 0;
  a.n = n - 37, a.out = o_flat.data();
  attend_decode(detect_isa(), a);
  for (int64_t i = 0; i < 2 * hd; ++i) {
    EXPECT_NEAR(o_paged[size_t(i)], o_ref[size_t(i)], 1e-5) << "window " << i;
    EXPECT_NEAR(o_paged[size_t(i)], o_flat[size_t(i)], 1e-5) << "window " << i;
  }
}

}  // namespace
