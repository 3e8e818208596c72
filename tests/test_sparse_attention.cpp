// Sparse attention patterns (AttnKind::Sparse: dilated windows, global positions, BigBird's
// random keys): the pattern's definition, its gradients by central differences, the
// training forward against the engine (prefill and decode, every cache type), the GGUF
// round trip, and the command line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "cli_util.h"
#include "core/error.h"
#include "formats/load.h"
#include "formats/model_io.h"
#include "grad_util.h"
#include "model/model.h"
#include "model_test_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/params.h"
#include "train/transformer.h"

using namespace tessera;
using tessera::test::q;
using tessera::test::run_cli;

namespace {

LayerConfig sparse(int64_t window, int64_t dilation, int64_t global, int64_t random, uint32_t seed = 7) {
  LayerConfig lc;
  lc.attn = AttnKind::Sparse, lc.window = window, lc.dilation = dilation, lc.global = global, lc.random = random;
  lc.seed = seed;
  return lc;
}

ModelConfig small_llama(int64_t n_layers) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = n_layers, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 64, c.tied_embeddings = false;
  return c;
}

using test::mean_nll;

// Parameters near init (seed), T tokens of a 40-token vocabulary and their next tokens, and
// the training forward's mean loss on them.
struct Case {
  std::vector<float> p;
  std::vector<int32_t> tok, tgt;
  double loss = 0;
};
Case make_case(const train::Layout& L, int64_t T, uint64_t seed) {
  Case k;
  k.p.resize(L.total);
  train::init_params(L, k.p.data(), seed);
  std::mt19937 rng(uint32_t(seed * 7 + 1));
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (auto& x : k.p) x += nd(rng);
  k.tok.resize(size_t(T)), k.tgt.resize(size_t(T));
  for (auto& t : k.tok) t = int32_t(rng() % 40);
  for (int64_t i = 0; i < T; ++i) k.tgt[size_t(i)] = k.tok[size_t((i + 1) % T)];
  train::Transformer<float> tm(L, 1, T, train::ModelOptions{});
  const auto r = tm.forward(k.p.data(), k.tok.data(), k.tgt.data());
  k.loss = r.loss_sum / double(r.count);
  return k;
}

}  // namespace

// The definition written out: which keys a query sees, by hand, and visible_keys == the keys
// sees() accepts for many patterns and positions.
TEST(SparseAttention, PatternDefinition) {
  const LayerConfig d = sparse(3, 4, 0, 0);  // keys i, i-4, i-8
  std::vector<int64_t> keys(64);
  const int64_t n = d.visible_keys(20, keys.data());
  EXPECT_EQ(std::vector<int64_t>(keys.begin(), keys.begin() + n), (std::vector<int64_t>{12, 16, 20}));
  EXPECT_TRUE(d.sees(20, 12));
  EXPECT_FALSE(d.sees(20, 8));   // past the receptive field (3 x 4)
  EXPECT_FALSE(d.sees(20, 18));  // between the dilated keys
  EXPECT_EQ(d.receptive_field(), 12);
  EXPECT_EQ(d.first_key(20), 12);
  const LayerConfig g = sparse(2, 1, 3, 0);  // positions 0..2 global
  EXPECT_TRUE(g.sees(30, 1));
  EXPECT_TRUE(g.sees(2, 0));   // a global query sees every earlier key
  EXPECT_FALSE(g.sees(30, 5));
  EXPECT_FALSE(g.sees(5, 6));  // causal
  const LayerConfig r = sparse(1, 1, 0, 3);
  EXPECT_EQ(r.visible_keys(10, keys.data()), 1) << "block 0 has no earlier block to draw from";
  std::set<int64_t> drawn;
  for (int64_t t = 0; t < 3; ++t) drawn.insert(r.random_key(2, t));
  for (int64_t j : drawn) {
    EXPECT_LT(j, 32);
    for (int64_t i = 32; i < 48; ++i) EXPECT_TRUE(r.sees(i, j)) << "the whole block shares its random keys";
  }
  EXPECT_NE(sparse(1, 1, 0, 3, 8).random_key(2, 0) + sparse(1, 1, 0, 3, 8).random_key(3, 1),
            r.random_key(2, 0) + r.random_key(3, 1)) << "another seed, other keys";
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const LayerConfig p = sparse(1 + rng() % 6, 1 + rng() % 4, rng() % 4, rng() % 4, uint32_t(rng()));
    for (int64_t i = 0; i < 70; ++i) {
      keys.assign(size_t(p.visible_bound(i + 1)), -1);
      const int64_t m = p.visible_keys(i, keys.data());
      std::vector<int64_t> want;
      for (int64_t j = 0; j <= i; ++j)
        if (p.sees(i, j)) want.push_back(j);
      ASSERT_EQ(std::vector<int64_t>(keys.begin(), keys.begin() + m), want) << "trial " << trial << " query " << i;
      ASSERT_GE(p.first_key(i), 0);
      if (!want.empty()) {
        ASSERT_LE(p.first_key(i), want.front());
      }
      ASSERT_TRUE(p.sees(i, i));
    }
  }
  // Per-head dilations: head h's keys are its own dilated window; the layer's (h < 0) are their union.
  LayerConfig ph = sparse(3, 4, 1, 2);
  ph.head_dilation = {1, 4, 2, 4};
  LayerConfig local = ph;
  local.global = local.random = 0;
  EXPECT_EQ(local.first_key(40), 32);  // the largest dilation's reach
  EXPECT_EQ(ph.receptive_field(), 12);
  keys.assign(64, -1);
  const int64_t n0 = ph.visible_keys(20, keys.data(), 0);
  std::vector<int64_t> k0(keys.begin(), keys.begin() + n0);
  EXPECT_TRUE(std::find(k0.begin(), k0.end(), 19) != k0.end() && std::find(k0.begin(), k0.end(), 16) == k0.end());
  const int64_t n1 = ph.visible_keys(20, keys.data(), 1);
  std::vector<int64_t> k1(keys.begin(), keys.begin() + n1);
  EXPECT_TRUE(std::find(k1.begin(), k1.end(), 16) != k1.end() && std::find(k1.begin(), k1.end(), 19) == k1.end());
  for (int64_t i = 0; i < 70; ++i)
    for (int64_t h = 0; h < 4; ++h) {
      keys.assign(size_t(ph.visible_bound(i + 1)), -1);
      const int64_t m = ph.visible_keys(i, keys.data(), h);
      std::vector<int64_t> want;
      for (int64_t j = 0; j <= i; ++j) {
        const bool any = ph.sees(i, j, 0) || ph.sees(i, j, 1) || ph.sees(i, j, 2) || ph.sees(i, j, 3);
        ASSERT_EQ(ph.sees(i, j), any) << i << " " << j;
        if (ph.sees(i, j, h)) want.push_back(j);
      }
      ASSERT_EQ(std::vector<int64_t>(keys.begin(), keys.begin() + m), want) << "head " << h << " query " << i;
      ASSERT_LE(ph.first_key(i), want.front());
    }
  ModelConfig c = small_llama(1);
  c.layer_cfg = {ph};
  EXPECT_NO_THROW(c.validate("m"));
  c.layer_cfg[0].head_dilation = {1, 2, 4};  // one per query head
  EXPECT_THROW(c.validate("m"), Error);
  c.layer_cfg[0].head_dilation = {1, 2, 2, 2};  // the layer's dilation (4) must be the largest
  EXPECT_THROW(c.validate("m"), Error);
  c.layer_cfg = {sparse(0, 1, 0, 0)};
  EXPECT_THROW(c.validate("m"), Error);
  c.layer_cfg = {sparse(2, 0, 0, 0)};
  EXPECT_THROW(c.validate("m"), Error);
}

// Every parameter against central differences with dilated (per head), Longformer and BigBird
// layers (T = 40 reaches two random-key blocks), soft-capped scores, GQA, recomputation.
TEST(SparseAttention, GradientsMatchFiniteDifferences) {
  const test::OneThread one_thread;
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 8, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 2, c.hidden_dim = 8;
  c.vocab_size = 7, c.max_seq_len = 40, c.tied_embeddings = true, c.attn_softcap = 3.f;
  c.layer_cfg = {sparse(3, 2, 0, 0), sparse(2, 3, 2, 0), sparse(2, 1, 1, 2)};
  c.layer_cfg[0].head_dilation = {1, 2, 2, 1};  // Longformer's per-head dilations on layer 0
  for (bool recompute : {false, true}) {
    train::Layout L(c);
    std::mt19937_64 rng(9);
    test::Vec p = test::randn(L.total, rng, 0.4);
    const int64_t B = 1, T = 40;
    std::vector<int32_t> tok(B * T), tgt(B * T);
    for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(rng() % 7), tgt[i] = int32_t(rng() % 7);
    train::ModelOptions mo;
    mo.recompute = recompute;
    train::Transformer<double> m(L, B, T, mo);
    auto f = [&] {
      const auto r = m.forward(p.data(), tok.data(), tgt.data());
      return r.loss_sum / double(r.count);
    };
    test::Vec g(L.total, 0.0);
    m.forward_backward(p.data(), g.data(), tok.data(), tgt.data(), 1.f / float(T));
    const test::Vec num = test::numgrad(p, f);
    for (const auto& t : L.tensors) {
      const test::Vec a(g.begin() + long(t.offset), g.begin() + long(t.offset + t.numel));
      const test::Vec b(num.begin() + long(t.offset), num.begin() + long(t.offset + t.numel));
      EXPECT_LT(test::rel_err(a, b), 1e-4) << t.name << (recompute ? " (recompute)" : "");
    }
  }
}

// GPT-2's blocks (fused qkv rows, learned positions) with a Longformer layer: training and engine agree.
TEST(SparseAttention, Gpt2TrainingAndEngineAgree) {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8, c.hidden_dim = 64;
  c.vocab_size = 40, c.max_seq_len = 48, c.tied_embeddings = true;
  c.layer_cfg = {sparse(3, 2, 2, 0), sparse(4, 1, 1, 2, 9)};
  train::Layout L(c);
  const int64_t T = 48;
  const Case k = make_case(L, T, 4);
  const Weights w = train::weights_view(L, k.p.data());
  for (int64_t chunk : {int64_t(48), int64_t(1)}) {
    RunOptions o;
    o.n_ctx = 48, o.max_batch = chunk;
    Model m(w, o);
    KernelContext ctx(2);
    std::vector<float> z(size_t(T * 40));
    for (int64_t p0 = 0; p0 < T; p0 += chunk) m.forward_all(ctx, k.tok.data() + p0, std::min(chunk, T - p0), p0, z.data() + p0 * 40);
    EXPECT_NEAR(mean_nll(z, k.tgt, 40), k.loss, 1e-5 * k.loss) << "chunk " << chunk;
  }
}

// The training forward (dense scores with the pattern's mask) and the engine (each row over
// its gathered visible keys) give the same loss, in one prefill, in chunks of 7 and token by
// token (the team path), with f32 / f16 caches; and again after a GGUF round trip. The
// pattern matters: the same model with full attention gives another loss.
TEST(SparseAttention, TrainingAndEngineAgree) {
  ModelConfig c = small_llama(3);
  c.layer_cfg = {sparse(4, 3, 0, 0), sparse(3, 2, 2, 2, 11), sparse(5, 1, 1, 3, 12)};
  c.layer_cfg[0].head_dilation = {1, 3, 3, 2};  // per-head: the two heads of a KV head differ
  train::Layout L(c);
  const int64_t T = 60;
  const Case k = make_case(L, T, 11);
  const std::vector<int32_t>& tok = k.tok;
  const double train_loss = k.loss;
  auto nll = [&](const std::vector<float>& z) { return mean_nll(z, k.tgt, 40); };
  const Weights w = train::weights_view(L, k.p.data());
  for (int64_t chunk : {int64_t(60), int64_t(7), int64_t(1)}) {
    RunOptions o;
    o.n_ctx = 64, o.max_batch = chunk;
    for (DType kv : {DType::F32, DType::F16}) {
      o.kv_type = kv;
      Model m(w, o);
      KernelContext ctx(2);
      std::vector<float> z(size_t(T * 40));
      for (int64_t p0 = 0; p0 < T; p0 += chunk) m.forward_all(ctx, tok.data() + p0, std::min(chunk, T - p0), p0, z.data() + p0 * 40);
      EXPECT_NEAR(nll(z), train_loss, (kv == DType::F32 ? 1e-5 : 1e-3) * train_loss) << "chunk " << chunk;
    }
  }
  const std::string g = test::temp_path("sparse.gguf");
  save_gguf(w, nullptr, g);
  const LoadedModel lm = load_model(g);
  EXPECT_EQ(lm.weights.cfg.layer_cfg, c.layer_cfg);
  EXPECT_NEAR(nll(test::chunked_logits(lm.weights, tok, 16)), train_loss, 1e-5 * train_loss);
  // Blocks of 4, token by token: layer 0's dilated window (no global or random keys, reach
  // (4 - 1) x 3 + 1 = 10) keeps a ring of 4 blocks of the KV cache (model/kv_cache.h).
  {
    RunOptions o;
    o.n_ctx = 64, o.max_batch = 1, o.kv_block_size = 4;
    KVCacheOptions ko;
    ko.n_blocks = 16, ko.block_size = 4, ko.window_seqs = 1, ko.window_rows = ko.rewind = 1;
    int64_t reach = 0;
    EXPECT_EQ(KVCache::window_pool_blocks(c, ko, &reach), 4);
    EXPECT_EQ(reach, 10);
    EXPECT_NEAR(nll(test::chunked_logits(w, tok, 1, 2, 4)), train_loss, 1e-5 * train_loss);
  }
  std::filesystem::remove(g);
  EXPECT_THROW(save_hf(w, test::temp_path("sparse_hf")), Error);
  ModelConfig full = c;
  full.layer_cfg.clear();
  const train::Layout Lf(full);
  train::Transformer<float> tfull(Lf, 1, T, train::ModelOptions{});
  const auto rf = tfull.forward(k.p.data(), k.tok.data(), k.tgt.data());
  EXPECT_GT(std::abs(rf.loss_sum / double(rf.count) - train_loss), 1e-3);
}
