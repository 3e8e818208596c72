// Prefix tuning (train/lora.h LoraConfig::prefix_len): the merged attention over learned
// prefix keys and the causal keys against attention written out in double; gradients of
// every input and of the prefix rows by central differences (block and whole model, Llama
// and GPT-2); a prefix made of the base model's keys/values of P tokens computes exactly
// what the model does after reading those tokens, in training and in the engine; the PEFT
// PREFIX_TUNING files round-trip. (The command line: tests/test_lora.cpp.)
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>

#include "core/error.h"
#include "formats/lora_adapter.h"
#include "kernels/kernels.h"
#include "model/batch.h"
#include "model/model.h"
#include "adapter_grad_util.h"
#include "test_util.h"
#include "train/blocks.h"
#include "train/lora.h"
#include "train/params.h"
#include "train/transformer.h"

using namespace tessera;
using namespace tessera::train;
using Vec = std::vector<double>;
namespace fs = std::filesystem;

namespace {

using test::numgrad;
using test::randn;
using test::rel_err;

// The attention of one block's inputs with a prefix: attention_fwd then prefix_attention_fwd.
struct PrefixAttn {
  blk::AttnShape s;
  int64_t P;
  Vec q, k, v, pk, pv, lse, scratch;
  Vec out() {
    Vec o(size_t(s.B * s.T * s.n_heads * s.hd));
    blk::attention_fwd(o.data(), lse.data(), q.data(), k.data(), v.data(), s, scratch.data());
    blk::prefix_attention_fwd(o.data(), lse.data(), q.data(), pk.data(), pv.data(), P, s, scratch.data());
    return o;
  }
};

PrefixAttn make_attn(std::mt19937_64& rng, int64_t P, int64_t rows, float cap, const int32_t* seg) {
  PrefixAttn a;
  blk::AttnShape& s = a.s;
  s.B = 2, s.T = 9, s.n_heads = 4, s.n_kv_heads = 2, s.hd = 3, s.softcap = cap, s.q_stride = 13, s.kv_stride = 7;
  s.block_rows = rows, s.seg = seg;
  a.P = P;
  const int64_t N = s.B * s.T;
  a.q = randn(size_t(N * s.q_stride), rng), a.k = randn(size_t(N * s.kv_stride), rng);
  a.v = randn(size_t(N * s.kv_stride), rng);
  a.pk = randn(size_t(P * s.n_kv_heads * s.hd), rng), a.pv = randn(size_t(P * s.n_kv_heads * s.hd), rng);
  a.lse.assign(size_t(s.B * s.n_heads * s.T), 0.0);
  a.scratch.assign(size_t(omp_get_max_threads() * blk::attention_scratch(std::max(s.T, P), rows)), 0.0);
  return a;
}

}  // namespace

// Output and log-sum-exp of every row against the softmax over [prefix keys; visible keys]
// written out in double: GQA, strided rows, soft-cap, packed segments (the prefix is seen by
// every segment), blocks smaller than T and a prefix longer than T.
TEST(PrefixTuning, MergedAttentionMatchesDirectFormula) {
  std::mt19937_64 rng(31);
  const std::vector<int32_t> seg = {0, 0, 0, 3, 3, 3, 3, 3, 8, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  for (int pass = 0; pass < 4; ++pass) {
    const int64_t P = pass == 2 ? 12 : pass == 3 ? 4 : 3;
    PrefixAttn a = make_attn(rng, P, pass == 0 ? 64 : 4, pass == 1 ? 1.5f : 0.f, pass == 1 ? seg.data() : nullptr);
    a.s.window = pass == 3 ? 6 : 0;  // prefix rows fall out of the window from query 2 on
    const blk::AttnShape& s = a.s;
    const Vec o = a.out();
    const int64_t od = s.n_heads * s.hd, grp = s.n_heads / s.n_kv_heads, pd = s.n_kv_heads * s.hd;
    double worst = 0;
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.n_heads; ++h)
        for (int64_t i = 0; i < s.T; ++i) {
          const int64_t kh = h / grp;
          int64_t lo = s.seg ? s.seg[b * s.T + i] : 0, plo = 0;  // first token key, first prefix row
          if (s.window > 0) lo = std::max<int64_t>(lo, i - s.window + 1), plo = std::max<int64_t>(0, P + i - s.window + 1);
          const double* qi = &a.q[size_t((b * s.T + i) * s.q_stride + h * s.hd)];
          std::vector<const double*> keys, vals;
          for (int64_t j = plo; j < P; ++j) keys.push_back(&a.pk[size_t(j * pd + kh * s.hd)]), vals.push_back(&a.pv[size_t(j * pd + kh * s.hd)]);
          for (int64_t j = lo; j <= i; ++j)
            keys.push_back(&a.k[size_t((b * s.T + j) * s.kv_stride + kh * s.hd)]),
                vals.push_back(&a.v[size_t((b * s.T + j) * s.kv_stride + kh * s.hd)]);
          std::vector<double> sc;
          for (const double* kj : keys) {
            double d = 0;
            for (int64_t e = 0; e < s.hd; ++e) d += qi[e] * kj[e];
            d /= std::sqrt(double(s.hd));
            if (s.softcap > 0) d = s.softcap * std::tanh(d / s.softcap);
            sc.push_back(d);
          }
          const double mx = *std::max_element(sc.begin(), sc.end());
          double z = 0;
          for (double x : sc) z += std::exp(x - mx);
          worst = std::max(worst, std::fabs(a.lse[size_t((b * s.n_heads + h) * s.T + i)] - (mx + std::log(z))));
          for (int64_t e = 0; e < s.hd; ++e) {
            double acc = 0;
            for (size_t j = 0; j < sc.size(); ++j) acc += std::exp(sc[j] - mx) / z * vals[j][e];
            worst = std::max(worst, std::fabs(o[size_t((b * s.T + i) * od + h * s.hd + e)] - acc));
          }
        }
    EXPECT_LT(worst, 1e-12) << "pass " << pass;
  }
}

// attention_bwd with the merged lse and delta, then prefix_attention_bwd: every input's gradient.
TEST(PrefixTuning, AttentionGradientsMatchFiniteDifferences) {
  std::mt19937_64 rng(32);
  const std::vector<int32_t> seg = {0, 0, 0, 3, 3, 3, 3, 3, 8, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  for (int pass = 0; pass < 4; ++pass) {
    PrefixAttn a = make_attn(rng, pass == 2 ? 11 : pass == 3 ? 4 : 2, pass == 0 ? 64 : 4, pass == 1 || pass == 3 ? 1.5f : 0.f,
                             pass == 1 ? seg.data() : nullptr);
    a.s.window = pass == 3 ? 6 : 0;
    const blk::AttnShape& s = a.s;
    const int64_t N = s.B * s.T, od = s.n_heads * s.hd;
    const Vec R = randn(size_t(N * od), rng);
    auto f = [&] {
      const Vec o = a.out();
      double d = 0;
      for (size_t i = 0; i < o.size(); ++i) d += o[i] * R[i];
      return d;
    };
    const Vec o = a.out();
    Vec dq(a.q.size()), dk(a.k.size()), dv(a.v.size()), dpk(a.pk.size(), 0.0), dpv(a.pv.size(), 0.0);
    Vec delta(a.lse.size());
    blk::attention_delta(delta.data(), R.data(), o.data(), s);
    blk::attention_bwd(dq.data(), dk.data(), dv.data(), R.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), s,
                       a.scratch.data(), delta.data());
    blk::prefix_attention_bwd(dq.data(), dpk.data(), dpv.data(), R.data(), a.lse.data(), delta.data(), a.q.data(),
                              a.pk.data(), a.pv.data(), a.P, s, a.scratch.data());
    EXPECT_LT(rel_err(dq, numgrad(a.q, f)), 1e-6) << pass;
    EXPECT_LT(rel_err(dk, numgrad(a.k, f)), 1e-6) << pass;
    EXPECT_LT(rel_err(dv, numgrad(a.v, f)), 1e-6) << pass;
    EXPECT_LT(rel_err(dpk, numgrad(a.pk, f)), 1e-6) << pass;
    EXPECT_LT(rel_err(dpv, numgrad(a.pv, f)), 1e-6) << pass;
  }
}

// The whole frozen model with a prefix: the prefix rows' gradients (the only trained ones).
TEST(PrefixTuning, WholeModelPrefixGradientsMatchFiniteDifferences) {
  for (Arch arch : {Arch::Llama, Arch::GPT2})
    for (bool recompute : {false, true}) {
      const ModelConfig c = test::tiny_adapter_model(arch);
      LoraConfig lc;
      lc.prefix_len = 3;
      const LoraLayout LL(Layout(c), lc);
      EXPECT_EQ(LL.n_params, size_t(2 * 3 * c.n_layers * (arch == Arch::GPT2 ? c.dim : c.kv_dim())));
      ModelOptions mo;
      mo.recompute = recompute;
      test::check_adapter_grads(c, lc, mo, 0, std::string(arch_name(arch)) + (recompute ? " recompute" : ""), 33, 0.5);
    }
}

// Prefix = the base model's K/V of tokens x (after RoPE, at positions 0..P-1): the model with
// that prefix on tokens t computes what the base model computes on x followed by t, in
// training (Transformer, positions P..) and in the engine (Model, KvPrefix, through the PEFT
// files, whose keys are stored in Hugging Face's RoPE order and read back into the model's).
TEST(PrefixTuning, APrefixOfTokensKeysIsTheModelHavingReadThem) {
  for (int variant = 0; variant < 3; ++variant) {
    const Arch arch = variant == 1 ? Arch::GPT2 : Arch::Llama;
    ModelConfig c = test::tiny_adapter_model(arch);
    c.dim = 32, c.n_heads = 4, c.n_kv_heads = arch == Arch::GPT2 ? 4 : 2, c.head_dim = 8, c.hidden_dim = 48;
    c.vocab_size = 37, c.max_seq_len = 32, c.rope_style = ops::RopeStyle::Interleaved;
    if (variant == 2) c.layer_cfg = sliding_window_layers(c.n_layers, 6, "even");  // the prefix leaves the window
    const Layout L(c);
    ParamVec p(L.total);
    init_params(L, p.data(), 9);
    for (const auto& ti : L.tensors)  // sharp attention, so that positions and prefix rows matter
      if (ti.name.find("attn_q") != std::string::npos || ti.name.find("attn_k") != std::string::npos)
        for (size_t i = 0; i < ti.numel; ++i) p[ti.offset + i] *= 12.f;
    const int64_t P = 5, T = 7;
    const std::vector<int32_t> x = {3, 14, 15, 9, 26}, t = {5, 35, 8, 9, 7, 9, 3};
    std::vector<int32_t> xt(x), none(size_t(P + T), -1), tgt(size_t(P + T), -1), tgt_t(size_t(T), -1);
    xt.insert(xt.end(), t.begin(), t.end());
    for (int64_t i = 0; i + 1 < T; ++i) tgt[size_t(P + i)] = t[size_t(i + 1)], tgt_t[size_t(i)] = t[size_t(i + 1)];
    Transformer<float> reader(L, 1, P, ModelOptions{}), full(L, 1, P + T, ModelOptions{}), tuned(L, 1, T, ModelOptions{});
    reader.forward(p.data(), x.data(), none.data());
    LoraConfig lc;
    lc.prefix_len = P;
    const LoraLayout LL(L, lc);
    ParamVec a(LL.total);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      int64_t stride = 0;
      const auto [k, v] = reader.layer_kv(l, &stride);
      for (int64_t i = 0; i < P; ++i)
        for (int64_t e = 0; e < LL.prefix_dim; ++e)
          a[LL.prefix[size_t(l)].first + size_t(i * LL.prefix_dim + e)] = k[i * stride + e],
                                                     a[LL.prefix[size_t(l)].second + size_t(i * LL.prefix_dim + e)] = v[i * stride + e];
    }
    std::vector<double> nll_full(static_cast<size_t>(P + T)), nll_bare(static_cast<size_t>(T)), nll(nll_bare);
    full.set_row_nll(nll_full.data());
    full.forward(p.data(), xt.data(), tgt.data());
    tuned.set_row_nll(nll_bare.data());
    tuned.forward(p.data(), t.data(), tgt_t.data());  // no prefix: what the tokens alone give
    tuned.attach_lora(LL);
    tuned.set_lora_params(a.data(), nullptr);
    tuned.set_row_nll(nll.data());
    tuned.forward(p.data(), t.data(), tgt_t.data());
    double worst = 0, apart = 0;
    for (int64_t i = 0; i + 1 < T; ++i)
      worst = std::max(worst, std::fabs(nll[size_t(i)] - nll_full[size_t(P + i)])),
      apart = std::max(apart, std::fabs(nll_bare[size_t(i)] - nll_full[size_t(P + i)]));
    EXPECT_LT(worst, 2e-5) << arch_name(arch);
    EXPECT_GT(apart, 1e-2) << arch_name(arch) << ": the prefix must matter";

    // The engine: the prefix written as PEFT files and read back, against the base reading x first.
    const std::string dir = test::temp_path("prefix_peft");
    fs::remove_all(dir);
    const KvPrefix px = to_prefix(LL, a.data());
    write_prefix_peft(px, c, dir, "tiny");
    EXPECT_TRUE(is_prefix_adapter(dir));
    const KvPrefix back = read_prefix_adapter(dir, c);
    EXPECT_EQ(back.kv, px.kv);
    const Weights w = weights_view(L, p.data());
    KernelContext ctx(1);
    RunOptions ro;
    ro.n_ctx = 24, ro.max_threads = 1;
    Model base(w, ro);
    std::vector<float> lb(size_t((P + T) * c.vocab_size)), lt(size_t(T * c.vocab_size));
    base.forward_all(ctx, xt.data(), P + T, 0, lb.data());
    ro.prefix = std::make_shared<KvPrefix>(back);
    Model with(w, ro);
    EXPECT_EQ(with.n_ctx(), 24);
    with.forward_all(ctx, t.data(), 3, 0, lt.data());  // a prefill, then one token at a time
    for (int64_t i = 3; i < T; ++i) with.forward_all(ctx, &t[size_t(i)], 1, i, lt.data() + i * c.vocab_size);
    worst = 0;
    for (int64_t i = 0; i < T * c.vocab_size; ++i)
      worst = std::max(worst, double(std::fabs(lt[size_t(i)] - lb[size_t(P * c.vocab_size + i)])));
    EXPECT_LT(worst, 1e-4) << arch_name(arch);
    std::vector<float> l0(size_t(T * c.vocab_size));
    base.forward_all(ctx, t.data(), T, 0, l0.data());
    apart = 0;
    for (int64_t i = 0; i < T * c.vocab_size; ++i) apart = std::max(apart, double(std::fabs(l0[size_t(i)] - lt[size_t(i)])));
    EXPECT_GT(apart, 1e-2) << arch_name(arch) << ": the prefix must matter";
    EXPECT_THROW(with.forward_all(ctx, t.data(), 1, 24, lt.data()), Error);  // past the usable context

    // The batched forward over a cache the model makes: two sequences in one batch, each
    // starting with the prefix (shared blocks), then a fork rewound to one token and extended.
    RunOptions rb = ro;
    rb.own_cache = false;
    Model mb(w, rb);
    KVCache cache = mb.make_cache(4);
    const int32_t s0 = cache.add_seq(), s1 = cache.add_seq();
    EXPECT_EQ(cache.length(s0), 0);
    Batch bt;
    for (int64_t i = 0; i < T; ++i) bt.add(t[size_t(i)], i, s0, true);
    for (int64_t i = 0; i < 3; ++i) bt.add(t[size_t(i)], i, s1, i == 2);
    std::vector<float> lbat(size_t((T + 1) * c.vocab_size));
    mb.forward(ctx, bt, cache, lbat.data());
    EXPECT_EQ(cache.length(s0), T);
    EXPECT_EQ(cache.length(s1), 3);
    worst = 0;
    for (int64_t i = 0; i < T * c.vocab_size; ++i) worst = std::max(worst, double(std::fabs(lbat[size_t(i)] - lt[size_t(i)])));
    for (int64_t v = 0; v < c.vocab_size; ++v)
      worst = std::max(worst, double(std::fabs(lbat[size_t(T * c.vocab_size + v)] - lt[size_t(2 * c.vocab_size + v)])));
    const int32_t s2 = cache.fork(s1);
    cache.truncate(s2, 1);
    EXPECT_EQ(cache.length(s2), 1);
    bt.clear();
    bt.add(t[1], 1, s2, true);
    mb.forward(ctx, bt, cache, lbat.data());
    for (int64_t v = 0; v < c.vocab_size; ++v)
      worst = std::max(worst, double(std::fabs(lbat[size_t(v)] - lt[size_t(c.vocab_size + v)])));
    EXPECT_LT(worst, 1e-4) << arch_name(arch) << ": batched";
    cache.free_seq(s0), cache.free_seq(s1), cache.free_seq(s2);
    EXPECT_EQ(cache.free_blocks(), cache.n_blocks() - (P + 31) / 32);  // only the prefix's blocks stay taken
    c.n_layers = 3;
    EXPECT_THROW(read_prefix_adapter(dir, c), Error);  // an adapter for another model
    fs::remove_all(dir);
  }
}

TEST(PrefixTuning, UnsupportedModelsAndMixturesAreRefused) {
  ModelConfig c = test::tiny_adapter_model(Arch::Llama);
  LoraConfig lc;
  lc.prefix_len = 2;
  lc.rank = 4;
  EXPECT_THROW(LoraLayout(Layout(c), lc), Error);  // LoRA and a prefix in one run
  lc.rank = 0;
  c.mtp_depth = 1;
  EXPECT_THROW(LoraLayout(Layout(c), lc), Error);
  const nlohmann::json j = lora_to_json(lc);
  EXPECT_EQ(lora_from_json(j, "here").prefix_len, 2);
  EXPECT_THROW(lora_from_json(nlohmann::json{{"prefix_len", 0}}, "here"), Error);
}
