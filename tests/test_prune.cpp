// Pruning (train/prune.h): a structurally pruned model computes exactly what the
// original computes with the removed heads, channels and layers switched off;
// unstructured and 2:4 sparsity zero what they say; `tessera prune` writes a
// smaller model the engine runs; recovery training keeps the zeros.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "cli_util.h"
#include "core/error.h"
#include "formats/load.h"
#include "train/prune.h"
#include "train/transformer.h"

using namespace tessera;
using namespace tessera::train;
using tessera::test::q;
using tessera::test::run_cli;
namespace fs = std::filesystem;

namespace {

ModelConfig small(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.dim = 16, c.n_layers = 3, c.n_heads = arch == Arch::GPT2 ? 4 : 8, c.n_kv_heads = arch == Arch::GPT2 ? 4 : 4;
  c.head_dim = arch == Arch::GPT2 ? 4 : 2, c.hidden_dim = 24, c.vocab_size = 13, c.max_seq_len = 8;
  c.tied_embeddings = false, c.qkv_bias = arch == Arch::Llama;
  return c;
}

double loss(const Layout& L, const float* p) {
  Transformer<double> m(L, 1, 8, ModelOptions{});
  std::vector<double> pd(p, p + L.total);
  const std::vector<int32_t> x = {1, 4, 2, 8, 5, 7, 3, 9}, y = {4, 2, 8, 5, 7, 3, 9, 11};
  return m.forward(pd.data(), x.data(), y.data()).loss_sum;
}

}  // namespace

// Removing head groups, FFN channels and a layer = zeroing their output paths
// (the output projection's columns of those heads, the down projection's
// columns of those channels, both projections of the layer: pre-norm blocks
// then pass their input through).
TEST(Prune, StructuredPruningEqualsSwitchingThePartsOff) {
  for (Arch arch : {Arch::Llama, Arch::GPT2}) {
    const ModelConfig c = small(arch);
    const Layout L(c);
    ParamVec p(L.total);
    init_params(L, p.data(), 3);
    std::mt19937 rng(5);
    for (auto& x : p) x += 0.05f * std::normal_distribution<float>(0, 1)(rng);  // non-trivial norms and biases
    PruneOptions o;
    o.hidden = 10, o.layers = 2;
    if (arch == Arch::Llama) o.kv_heads = 2;
    ParamVec out;
    const PruneReport rep = prune(L, p.data(), nullptr, o, out);
    EXPECT_EQ(rep.cfg.n_layers, 2);
    EXPECT_EQ(rep.cfg.hidden_dim, 10);
    if (arch == Arch::Llama) {
      EXPECT_EQ(rep.cfg.n_kv_heads, 2);
      EXPECT_EQ(rep.cfg.n_heads, 4);
    }
    EXPECT_LT(rep.params_after, rep.params_before);
    // The original with the removed parts switched off.
    ParamVec off = p;
    const int64_t grp = c.n_heads / c.n_kv_heads, hd = c.head_dim, qd = c.n_heads * hd, H = c.hidden_dim, C = c.dim;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const auto& lo = L.layers[size_t(l)];
      const auto it = std::find(rep.kept_layers.begin(), rep.kept_layers.end(), l);
      if (it == rep.kept_layers.end()) {  // the whole layer
        for (size_t off_w : {lo.wo, lo.w_down, lo.bo, lo.b_down}) {
          if (off_w == kAbsent) continue;
          const ParamInfo* t = nullptr;
          for (const auto& ti : L.tensors)
            if (ti.offset == off_w) t = &ti;
          std::fill(off.begin() + long(off_w), off.begin() + long(off_w + t->numel), 0.f);
        }
        continue;
      }
      const size_t nl = size_t(it - rep.kept_layers.begin());
      const auto& g = rep.kept_groups[nl];
      if (!g.empty())
        for (int64_t gi = 0; gi < c.n_kv_heads; ++gi)
          if (std::find(g.begin(), g.end(), gi) == g.end())
            for (int64_t r = 0; r < C; ++r)
              for (int64_t k = gi * grp * hd; k < (gi + 1) * grp * hd; ++k) off[lo.wo + size_t(r * qd + k)] = 0.f;
      const auto& ch = rep.kept_channels[nl];
      for (int64_t j = 0; j < H; ++j)
        if (std::find(ch.begin(), ch.end(), j) == ch.end())
          for (int64_t r = 0; r < C; ++r) off[lo.w_down + size_t(r * H + j)] = 0.f;
    }
    const double a = loss(Layout(rep.cfg), out.data()), b = loss(L, off.data());
    EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << arch_name(arch);
    EXPECT_GT(std::abs(b - loss(L, p.data())), 1e-4) << "the pruning changed the model";
  }
  PruneOptions bad;
  bad.kv_heads = 2;
  ParamVec out;
  EXPECT_THROW(prune(Layout(small(Arch::GPT2)), std::vector<float>(Layout(small(Arch::GPT2)).total).data(), nullptr,
                     bad, out),
               Error);
}

TEST(Prune, UnstructuredAndTwoFourSparsity) {
  const ModelConfig c = small(Arch::Llama);
  const Layout L(c);
  ParamVec p(L.total), out;
  init_params(L, p.data(), 4);
  PruneOptions o;
  o.sparsity = 0.6;
  auto rep = prune(L, p.data(), nullptr, o, out);
  int64_t n = 0;
  float max_zeroed = 0, min_kept = 1e9f;
  for (const auto& t : L.tensors) {
    if (!t.matrix || t.name.rfind("blk.", 0) != 0) continue;
    n += int64_t(t.numel);
    for (size_t i = 0; i < t.numel; ++i) {
      const float w = std::abs(p[t.offset + i]);
      if (out[t.offset + i] == 0.f) max_zeroed = std::max(max_zeroed, w);
      else min_kept = std::min(min_kept, w);
    }
  }
  EXPECT_EQ(rep.zeros, int64_t(double(n) * 0.6));
  EXPECT_LE(max_zeroed, min_kept) << "global magnitude: every zeroed weight is smaller than every kept one";
  EXPECT_EQ(out[L.tok_embd], p[L.tok_embd]) << "embeddings are not pruned";
  o = PruneOptions{};
  o.two_four = true;
  rep = prune(L, p.data(), nullptr, o, out);
  EXPECT_EQ(rep.zeros, n / 2);
  const auto& wq = *L.find("blk.1.attn_q.weight");
  for (size_t g = wq.offset; g < wq.offset + wq.numel; g += 4) {
    int zeros = 0;
    for (size_t i = g; i < g + 4; ++i) zeros += out[i] == 0.f;
    EXPECT_EQ(zeros, 2);
  }
}

TEST(Prune, CommandLinePruneThenRecoverWithTheZerosHeld) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string dir = test::temp_path("prune");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string tok = test::shared_path("models/tok512.bin"), base = test::shared_path("models/stories260K.bin");
  test::copy_shared_prefix("data/tinystories_val.txt", 120000, dir + "/ts.txt");
  ASSERT_EQ(run_cli("data prepare --tokenizer " + q(tok) + " -o " + q(dir + "/data") + " " + q(dir + "/ts.txt")).code, 0);
  auto r = run_cli("prune " + q(base) + " --tokenizer " + q(tok) + " -o " + q(dir + "/small.gguf") +
                   " --kv-heads 2 --hidden 128 --layers 4 --score taylor --data " + q(dir + "/data"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("layers 5 -> 4, kv heads 4 -> 2 (query 8 -> 4), FFN 172 -> 128"), std::string::npos) << r.err;
  const auto lm = load_model(dir + "/small.gguf");
  EXPECT_EQ(lm.weights.cfg.n_layers, 4);
  EXPECT_EQ(lm.weights.cfg.hidden_dim, 128);
  r = run_cli("generate -m " + q(dir + "/small.gguf") + " -p 'Once upon a time' -n 8 --temp 0");
  EXPECT_EQ(r.code, 0) << r.err;
  r = run_cli("prune " + q(base) + " --tokenizer " + q(tok) + " -o " + q(dir + "/sparse.gguf") + " --sparsity 0.5");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli("train --init " + q(dir + "/sparse.gguf") + " --data " + q(dir + "/data") + " -o " + q(dir + "/rec") +
              " --keep-sparsity --steps 20 --batch 4 --seq 64 --lr 1e-3 -t 2 --eval-interval 20");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("keep-sparsity:"), std::string::npos) << r.err;
  ASSERT_EQ(run_cli("export " + q(dir + "/rec") + " -o " + q(dir + "/rec.gguf")).code, 0);
  const auto before = load_model(dir + "/sparse.gguf"), after = load_model(dir + "/rec.gguf");
  const Layout L(before.weights.cfg);
  ParamVec a(L.total), b(L.total);
  params_from_weights(L, before.weights, a.data());
  params_from_weights(L, after.weights, b.data());
  int64_t zeros = 0, moved = 0;
  const auto mask = sparsity_mask(L, a.data());
  for (size_t i = 0; i < L.total; ++i) {
    if (mask[i] == 0) {
      ++zeros;
      EXPECT_EQ(b[i], 0.f);
    }
    moved += a[i] != b[i];
  }
  EXPECT_GT(zeros, 50000);
  EXPECT_GT(moved, 1000) << "the kept weights trained";
  r = run_cli("prune " + q(base) + " --tokenizer " + q(tok) + " -o " + q(dir + "/x.gguf"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("nothing to prune"), std::string::npos) << r.err;
  r = run_cli("prune " + q(base) + " --tokenizer " + q(tok) + " -o " + q(dir + "/x.gguf") + " --kv-heads 9");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("the model has 4"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
