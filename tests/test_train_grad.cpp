// Gradients of every training block and of whole models against central
// finite differences in double precision; stories260K's gradients against an
// independent float64 model (tests/ref_llama.h); one AdamW step against the
// formula written out here.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <random>
#include <vector>

#include "formats/any_tokenizer.h"
#include "formats/llama2c.h"
#include "core/error.h"
#include "adapter_grad_util.h"
#include "grad_util.h"
#include "ref_llama.h"
#include "test_util.h"
#include "train/blocks.h"
#include "train/distill.h"
#include "train/optim.h"
#include "train/transformer.h"

using namespace tessera;
using namespace tessera::train;
using Vec = std::vector<double>;

namespace {

using test::dot;
using test::numgrad;
using test::randn;
using test::rel_err;

constexpr double kTol = 1e-4;

}  // namespace

TEST(TrainGrad, Linear) {
  std::mt19937_64 rng(1);
  const int64_t N = 3, I = 5, O = 4;
  Vec X = randn(N * I, rng), W = randn(O * I, rng), b = randn(O, rng), R = randn(N * O, rng);
  auto f = [&] {
    Vec Y(N * O);
    blk::linear_fwd(Y.data(), X.data(), W.data(), b.data(), N, I, O);
    return dot(Y, R);
  };
  Vec dX(N * I, 7.0), dW(O * I, 0.0), db(O, 0.0);
  blk::linear_bwd(dX.data(), dW.data(), db.data(), R.data(), X.data(), W.data(), N, I, O, false);
  EXPECT_LT(rel_err(dX, numgrad(X, f)), kTol);
  EXPECT_LT(rel_err(dW, numgrad(W, f)), kTol);
  EXPECT_LT(rel_err(db, numgrad(b, f)), kTol);
  Vec dX2(N * I, 1.0);  // accumulate adds to what is there
  Vec dW2(O * I, 0.0);
  blk::linear_bwd(dX2.data(), dW2.data(), (double*)nullptr, R.data(), X.data(), W.data(), N, I, O, true);
  for (size_t i = 0; i < dX.size(); ++i) EXPECT_NEAR(dX2[i], dX[i] + 1.0, 1e-12);
}

TEST(TrainGrad, EmbeddingWithPositions) {
  std::mt19937_64 rng(2);
  const int64_t V = 7, T = 3, C = 4, N = 6;
  const std::vector<int32_t> tok = {3, 1, 3, 6, 3, 0};  // repeated ids accumulate
  Vec E = randn(V * C, rng), P = randn(T * C, rng), R = randn(N * C, rng);
  auto f = [&] {
    Vec x(N * C);
    blk::embed_fwd(x.data(), E.data(), P.data(), tok.data(), N, T, C);
    return dot(x, R);
  };
  Vec dE(V * C, 0.0), dP(T * C, 0.0);
  blk::embed_bwd(dE.data(), dP.data(), R.data(), tok.data(), N, T, C);
  EXPECT_LT(rel_err(dE, numgrad(E, f)), kTol);
  EXPECT_LT(rel_err(dP, numgrad(P, f)), kTol);
}

TEST(TrainGrad, RmsNorm) {
  std::mt19937_64 rng(3);
  const int64_t N = 3, C = 6;
  Vec x = randn(N * C, rng), w = randn(C, rng), R = randn(N * C, rng);
  auto f = [&] {
    Vec y(N * C), r(N);
    blk::rmsnorm_fwd(y.data(), r.data(), x.data(), w.data(), N, C, 1e-5);
    return dot(y, R);
  };
  Vec y(N * C), r(N), dx(N * C), dw(C, 0.0);
  blk::rmsnorm_fwd(y.data(), r.data(), x.data(), w.data(), N, C, 1e-5);
  blk::rmsnorm_bwd(dx.data(), dw.data(), R.data(), x.data(), w.data(), r.data(), N, C, false);
  EXPECT_LT(rel_err(dx, numgrad(x, f)), kTol);
  EXPECT_LT(rel_err(dw, numgrad(w, f)), kTol);
}

TEST(TrainGrad, LayerNorm) {
  std::mt19937_64 rng(4);
  const int64_t N = 3, C = 6;
  Vec x = randn(N * C, rng), w = randn(C, rng), b = randn(C, rng), R = randn(N * C, rng);
  auto f = [&] {
    Vec y(N * C), m(N), r(N);
    blk::layernorm_fwd(y.data(), m.data(), r.data(), x.data(), w.data(), b.data(), N, C, 1e-5);
    return dot(y, R);
  };
  Vec y(N * C), m(N), r(N), dx(N * C), dw(C, 0.0), db(C, 0.0);
  blk::layernorm_fwd(y.data(), m.data(), r.data(), x.data(), w.data(), b.data(), N, C, 1e-5);
  blk::layernorm_bwd(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), m.data(), r.data(), N, C, false);
  EXPECT_LT(rel_err(dx, numgrad(x, f)), kTol);
  EXPECT_LT(rel_err(dw, numgrad(w, f)), kTol);
  EXPECT_LT(rel_err(db, numgrad(b, f)), kTol);
}

TEST(TrainGrad, RopeBothStyles) {
  std::mt19937_64 rng(5);
  const int64_t T = 4, N = 8, heads = 2, hd = 6, stride = 14;  // 2 spare columns per row
  std::vector<float> cs(T * hd / 2), sn(T * hd / 2);
  ops::rope_tables(cs.data(), sn.data(), T, hd, 10000.f);
  for (auto style : {ops::RopeStyle::Interleaved, ops::RopeStyle::HalfSplit}) {
    Vec x = randn(N * stride, rng), R = randn(N * stride, rng);
    auto f = [&] {
      Vec y = x;
      blk::rope(y.data(), N, T, heads, hd, stride, cs.data(), sn.data(), style, false);
      return dot(y, R);
    };
    Vec dx = R;
    blk::rope(dx.data(), N, T, heads, hd, stride, cs.data(), sn.data(), style, true);
    EXPECT_LT(rel_err(dx, numgrad(x, f)), kTol);
  }
}

// Causal GQA attention (strided rows; soft-cap on and off; full, a sliding
// window of 2 (keys [i - 1, i]) and packed segments; one row block and blocks
// of 4 rows, so the recomputed probabilities cross block edges) against
// central differences.
TEST(TrainGrad, AttentionGqaCausalSoftcapAndSlidingWindow) {
  std::mt19937_64 rng(6);
  const std::vector<int32_t> seg = {0, 0, 0, 3, 3, 3, 3, 3, 8, 0, 1, 1, 1, 1, 1, 1, 1, 1};  // (B, T) first keys
  for (int64_t rows : {64, 4})
    for (int64_t window : {0, 2, -1})  // -1: packed segments, no window
      for (float cap : {0.f, 1.5f}) {
        blk::AttnShape s;
        s.B = 2, s.T = 9, s.n_heads = 4, s.n_kv_heads = 2, s.hd = 3, s.softcap = cap, s.window = std::max<int64_t>(window, 0);
        s.q_stride = 13, s.kv_stride = 7;  // strided rows
        s.block_rows = rows;
        if (window < 0) s.seg = seg.data();
        const int64_t N = s.B * s.T, od = s.n_heads * s.hd;
        Vec q = randn(N * s.q_stride, rng), k = randn(N * s.kv_stride, rng), v = randn(N * s.kv_stride, rng);
        Vec R = randn(N * od, rng);
        Vec lse(s.B * s.n_heads * s.T);
        Vec scratch(size_t(omp_get_max_threads() * blk::attention_scratch(s.T, rows)));
        auto out = [&] {
          Vec o(N * od);
          blk::attention_fwd(o.data(), lse.data(), q.data(), k.data(), v.data(), s, scratch.data());
          return o;
        };
        auto f = [&] { return dot(out(), R); };
        if (window > 0) {  // queries 2.. of the first sequence do not see its first key
          const Vec o1 = out();
          for (int64_t e = 0; e < s.kv_stride; ++e) k[size_t(e)] += 1.0, v[size_t(e)] += 1.0;
          const Vec o2 = out();
          for (int64_t e = 0; e < s.kv_stride; ++e) k[size_t(e)] -= 1.0, v[size_t(e)] -= 1.0;
          for (int64_t i = window; i < s.T; ++i)
            for (int64_t e = 0; e < od; ++e) EXPECT_EQ(o1[size_t(i * od + e)], o2[size_t(i * od + e)]) << i;
        }
        f();
        Vec dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
        blk::attention_bwd(dq.data(), dk.data(), dv.data(), R.data(), lse.data(), q.data(), k.data(), v.data(), s,
                           scratch.data());
        // Spare columns of the strided layouts carry no gradient; the backward leaves them untouched (zero here).
        const std::string what = "cap " + std::to_string(cap) + " window " + std::to_string(window) + " rows " +
                                 std::to_string(rows);
        EXPECT_LT(rel_err(dq, numgrad(q, f)), kTol) << what;
        EXPECT_LT(rel_err(dk, numgrad(k, f)), kTol) << what;
        EXPECT_LT(rel_err(dv, numgrad(v, f)), kTol) << what;
      }
}

// The blocked forward against attention written out directly (double): the
// output and the saved log-sum-exp of every row, T = 23 in blocks of 5, GQA,
// soft-cap, window 7 and segments.
TEST(TrainGrad, AttentionForwardMatchesDirectFormula) {
  std::mt19937_64 rng(16);
  std::vector<int32_t> seg(46);
  for (int64_t i = 0; i < 46; ++i) seg[size_t(i)] = int32_t(i % 23 < 11 ? 0 : 11);
  for (int pass = 0; pass < 3; ++pass) {
    blk::AttnShape s;
    s.B = 2, s.T = 23, s.n_heads = 6, s.n_kv_heads = 2, s.hd = 4, s.q_stride = 24, s.kv_stride = 8, s.block_rows = 5;
    s.softcap = pass == 1 ? 2.f : 0.f;
    s.window = pass == 1 ? 7 : 0;
    s.seg = pass == 2 ? seg.data() : nullptr;
    const int64_t N = s.B * s.T, od = s.n_heads * s.hd;
    Vec q = randn(N * s.q_stride, rng, 2.0), k = randn(N * s.kv_stride, rng), v = randn(N * s.kv_stride, rng);
    Vec o(N * od), lse(s.B * s.n_heads * s.T), scratch(size_t(omp_get_max_threads() * blk::attention_scratch(s.T, 5)));
    blk::attention_fwd(o.data(), lse.data(), q.data(), k.data(), v.data(), s, scratch.data());
    double worst = 0;
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.n_heads; ++h)
        for (int64_t i = 0; i < s.T; ++i) {
          int64_t lo = s.window > 0 ? std::max<int64_t>(0, i - s.window + 1) : 0;
          if (s.seg) lo = std::max<int64_t>(lo, s.seg[size_t(b * s.T + i)]);
          std::vector<double> sc;
          const double* qi = &q[size_t((b * s.T + i) * s.q_stride + h * s.hd)];
          for (int64_t j = lo; j <= i; ++j) {
            const double* kj = &k[size_t((b * s.T + j) * s.kv_stride + h / 3 * s.hd)];
            double d = 0;
            for (int64_t e = 0; e < s.hd; ++e) d += qi[e] * kj[e];
            d /= std::sqrt(double(s.hd));
            if (s.softcap > 0) d = s.softcap * std::tanh(d / s.softcap);
            sc.push_back(d);
          }
          const double mx = *std::max_element(sc.begin(), sc.end());
          double z = 0;
          for (double x : sc) z += std::exp(x - mx);
          worst = std::max(worst, std::fabs(lse[size_t((b * s.n_heads + h) * s.T + i)] - (mx + std::log(z))));
          for (int64_t e = 0; e < s.hd; ++e) {
            double acc = 0;
            for (int64_t j = lo; j <= i; ++j)
              acc += std::exp(sc[size_t(j - lo)] - mx) / z * v[size_t((b * s.T + j) * s.kv_stride + h / 3 * s.hd + e)];
            worst = std::max(worst, std::fabs(o[size_t((b * s.T + i) * od + h * s.hd + e)] - acc));
          }
        }
    EXPECT_LT(worst, 1e-12) << "pass " << pass;
  }
}

TEST(TrainGrad, SwiGluAndGelu) {
  std::mt19937_64 rng(7);
  const int64_t n = 20;
  Vec g = randn(n, rng, 2.0), u = randn(n, rng), R = randn(n, rng);
  auto fs = [&] {
    Vec h(n);
    blk::swiglu_fwd(h.data(), g.data(), u.data(), n);
    return dot(h, R);
  };
  Vec dg(n), du(n);
  blk::swiglu_bwd(dg.data(), du.data(), R.data(), g.data(), u.data(), n);
  EXPECT_LT(rel_err(dg, numgrad(g, fs)), kTol);
  EXPECT_LT(rel_err(du, numgrad(u, fs)), kTol);
  auto fg = [&] {
    Vec y(n);
    blk::gelu_fwd(y.data(), g.data(), n);
    return dot(y, R);
  };
  Vec dx(n);
  blk::gelu_bwd(dx.data(), R.data(), g.data(), n);
  EXPECT_LT(rel_err(dx, numgrad(g, fg)), kTol);
}

TEST(TrainGrad, CrossEntropyZLossSoftcap) {
  std::mt19937_64 rng(8);
  const int64_t N = 4, V = 7;
  const std::vector<int32_t> tgt = {2, -1, 6, 0};
  for (float cap : {0.f, 3.f}) {
    blk::CeOptions o;
    o.z_loss = 0.01f, o.softcap = cap, o.scale = 1.f;
    Vec z = randn(N * V, rng, 2.0);
    auto f = [&] {
      Vec w = z;
      const auto r = blk::cross_entropy(w.data(), tgt.data(), N, V, o);
      return r.loss_sum + double(o.z_loss) * r.z_sum;
    };
    Vec g = z;
    const auto r = blk::cross_entropy(g.data(), tgt.data(), N, V, o);
    EXPECT_EQ(r.count, 3);
    EXPECT_LT(rel_err(g, numgrad(z, f)), kTol) << "cap " << cap;
    for (int64_t v = 0; v < V; ++v) EXPECT_EQ(g[V + v], 0.0);  // ignored row
  }
}

namespace {

// Whole-model check: every parameter of a tiny model against central differences.
void check_model(ModelConfig c, const ModelOptions& mo, uint64_t dropout_key = 0, const int32_t* seg = nullptr) {
  const test::OneThread one_thread;
  Layout L(c);
  std::mt19937_64 rng(9);
  Vec p = randn(L.total, rng, 0.3);
  const int64_t B = 2, T = 5;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(rng() % uint64_t(c.vocab_size));
  for (size_t i = 0; i < tgt.size(); ++i) tgt[i] = i % 4 == 3 ? -1 : int32_t(rng() % uint64_t(c.vocab_size));
  Transformer<double> m(L, B, T, mo);
  m.set_segments(seg);
  auto f = [&] {
    const auto r = m.forward(p.data(), tok.data(), tgt.data(), dropout_key);
    const double mtp = c.mtp_depth > 0 ? double(mo.mtp_weight) / double(c.mtp_depth) * r.mtp_sum : 0.0;
    return (r.loss_sum + double(mo.z_loss) * r.z_sum + double(mo.moe_balance) * r.moe_balance_sum +
            double(mo.moe_router_z) * r.moe_z_sum + mtp) /
           double(r.count);
  };
  const int64_t count = std::count_if(tgt.begin(), tgt.end(), [](int32_t t) { return t >= 0; });
  Vec g(L.total, 0.0);
  m.forward_backward(p.data(), g.data(), tok.data(), tgt.data(), 1.f / float(count), dropout_key);
  const Vec num = numgrad(p, f);
  for (const auto& t : L.tensors) {
    Vec a(g.begin() + long(t.offset), g.begin() + long(t.offset + t.numel));
    Vec b(num.begin() + long(t.offset), num.begin() + long(t.offset + t.numel));
    EXPECT_LT(rel_err(a, b), kTol) << t.name;
  }
}

ModelConfig tiny_llama() {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 8, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 2, c.hidden_dim = 12;
  c.vocab_size = 11, c.max_seq_len = 8, c.tied_embeddings = false, c.qkv_bias = true;
  return c;
}

}  // namespace

TEST(TrainGrad, WholeLlamaGqaModelMatchesFiniteDifferences) {
  ModelOptions mo;
  mo.z_loss = 1e-3f, mo.logit_rows = 3;
  ModelConfig c = tiny_llama();
  c.attn_softcap = 2.f, c.final_softcap = 5.f;
  check_model(c, mo);
}

TEST(TrainGrad, WholeLlamaTiedQkNormWithRecomputeMatchesFiniteDifferences) {
  ModelConfig c = tiny_llama();
  c.tied_embeddings = true, c.qkv_bias = false, c.rope_style = ops::RopeStyle::HalfSplit, c.qk_norm = true;
  ModelOptions mo;
  mo.recompute = true;
  check_model(c, mo);
}

// Gemma-2's pattern: sliding-window attention on alternate layers.
TEST(TrainGrad, WholeLlamaWithSlidingWindowLayersMatchesFiniteDifferences) {
  ModelConfig c = tiny_llama();
  c.layer_cfg.resize(2);
  c.layer_cfg[0].attn = AttnKind::SlidingWindow, c.layer_cfg[0].window = 2;
  check_model(c, ModelOptions{});
}

// Packed examples (SFT --pack): attention confined to each example's span of its row.
TEST(TrainGrad, PackedExamplesMatchFiniteDifferences) {
  const int32_t seg[10] = {0, 0, 2, 2, 2, 0, 1, 1, 3, 3};  // rows of 5: examples [0,2) [2,5); [0,1) [1,3) [3,5)
  check_model(tiny_llama(), ModelOptions{}, 0, seg);
}

TEST(TrainGrad, WholeLlamaGeGluAndGpt2ReluMatchFiniteDifferences) {
  ModelConfig c = tiny_llama();
  c.ffn_act = FfnAct::GeGLU;
  check_model(c, ModelOptions{});
  ModelConfig g;
  g.arch = Arch::GPT2;
  g.dim = 8, g.n_layers = 2, g.n_heads = 2, g.n_kv_heads = 2, g.head_dim = 4, g.hidden_dim = 12;
  g.vocab_size = 11, g.max_seq_len = 8, g.tied_embeddings = true, g.ffn_act = FfnAct::ReLU;
  check_model(g, ModelOptions{});
}

TEST(TrainGrad, PostNormModelsMatchFiniteDifferences) {
  ModelConfig c = tiny_llama();
  c.norm_placement = NormPlacement::Post;
  ModelOptions mo;
  mo.dropout = 0.2f;  // the residual dropout sites sit before the post-norms
  check_model(c, mo, 777);
  ModelConfig g;  // the original Transformer's block: LayerNorm after each residual, ReLU MLP with biases
  g.arch = Arch::GPT2;
  g.dim = 8, g.n_layers = 2, g.n_heads = 2, g.n_kv_heads = 2, g.head_dim = 4, g.hidden_dim = 12;
  g.vocab_size = 11, g.max_seq_len = 8, g.tied_embeddings = true, g.ffn_act = FfnAct::ReLU;
  g.norm_placement = NormPlacement::Post;
  ModelOptions rc;
  rc.recompute = true;
  check_model(g, rc);
}

// Multi-token prediction modules (train/mtp.cpp): two depths, their blocks, projections and
// norms, the shared output head and embedding, the gradient into the main model; untied and
// tied, with recomputation and dropout, and on a mixture-of-experts model.
TEST(TrainGrad, MultiTokenPredictionMatchesFiniteDifferences) {
  ModelConfig c = tiny_llama();
  c.mtp_depth = 2;
  ModelOptions mo;
  mo.mtp_weight = 0.7f, mo.logit_rows = 4;
  check_model(c, mo);
  c.tied_embeddings = true, c.qkv_bias = false;
  ModelOptions rc = mo;
  rc.recompute = true, rc.dropout = 0.2f;
  check_model(c, rc, 4242);
  ModelConfig moe = tiny_llama();
  moe.mtp_depth = 1, moe.qkv_bias = false;
  moe.moe_experts = 4, moe.moe_used = 2, moe.moe_hidden = 6, moe.moe_norm_topk = true;
  moe.set_moe_layers();
  check_model(moe, mo);
}

TEST(TrainGrad, WholeLlamaWithDropoutMatchesFiniteDifferences) {
  ModelOptions mo;
  mo.dropout = 0.3f;
  check_model(tiny_llama(), mo, 12345);
  mo.recompute = true;  // recomputation repeats the same masks
  check_model(tiny_llama(), mo, 12345);
}

// Mixture-of-experts blocks (train/moe_train.cpp): the router through softmax or
// sigmoid (top-k selection held fixed: the step is far below every routing margin),
// renormalised or not, scaled, plain or gated shared experts, a leading dense layer,
// the balance loss and the router z-loss, with recomputation and dropout.
TEST(TrainGrad, MixtureOfExpertsMatchesFiniteDifferences) {
  ModelConfig mix = tiny_llama();  // Mixtral: softmax, top-2 of 4, renormalised
  mix.qkv_bias = false;
  mix.moe_experts = 4, mix.moe_used = 2, mix.moe_hidden = 6, mix.moe_norm_topk = true;
  mix.set_moe_layers();
  ModelOptions mo;
  mo.moe_balance = 0.3f, mo.moe_router_z = 0.2f;
  check_model(mix, mo);
  ModelConfig qwen = tiny_llama();  // Qwen2-MoE: not renormalised, gated shared expert, dense first layer
  qwen.moe_experts = 5, qwen.moe_used = 2, qwen.moe_hidden = 4, qwen.moe_shared_hidden = 6;
  qwen.moe_shared_gate = true, qwen.moe_first_dense = 1;
  qwen.set_moe_layers();
  check_model(qwen, mo);
  ModelConfig ds = tiny_llama();  // sigmoid, renormalised, x2.5, ungated shared expert, top-3
  ds.moe_experts = 6, ds.moe_used = 3, ds.moe_hidden = 4, ds.moe_shared_hidden = 4;
  ds.moe_gate = MoeGate::Sigmoid, ds.moe_norm_topk = true, ds.moe_scale = 2.5f;
  ds.ffn_act = FfnAct::GeGLU;
  ds.set_moe_layers();
  ModelOptions rc = mo;
  rc.recompute = true, rc.dropout = 0.2f;
  check_model(ds, rc, 99);
  // DeepSeek-V3's router: sigmoid, a selection bias (no gradient: it only chooses), renormalised.
  ModelConfig v3 = ds;
  v3.moe_score_bias = true, v3.ffn_act = FfnAct::Default;
  check_model(v3, mo, 5);
  // Hash routing (no router; each of k experts weighs 1/k) by (previous token, token).
  ModelConfig hash = mix;
  hash.moe_routing = MoeRouting::HashBigram;
  check_model(hash, ModelOptions{});
  // A capacity factor that drops slots: 10 rows x 2 slots over 4 experts, at most ceil(0.5 x 20 / 4) = 3 each.
  ModelOptions cap = mo;
  cap.moe_capacity = 0.5f;
  check_model(mix, cap);
  Layout L(mix);
  std::vector<double> p(L.total, 0.0);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd(0.0, 0.5);
  for (auto& x : p) x = nd(rng);
  Transformer<double> m(L, 2, 5, cap);
  std::vector<int32_t> tok(10, 3), tgt(10, 4);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t(i % 11);
  m.forward(p.data(), tok.data(), tgt.data());
  EXPECT_GE(m.take_dropped(), 2 * (20 - 12)) << "two MoE layers, each keeping at most 4 x 3 of 20 slots";
}

// Multi-head latent attention (train/mla_train.cpp): q through its LoRA and norm or a
// plain attn_q, the latent and its norm, kv_b's per-head keys and values (values
// narrower than keys), the shared RoPE key, with a sliding window, recomputation, dropout
// and experts; the LoRA adapters an MLA model takes (output projection, feed-forward).
ModelConfig tiny_mla(int64_t q_lora) {
  ModelConfig c = tiny_llama();
  c.qkv_bias = false, c.n_kv_heads = c.n_heads;
  c.head_dim = 6, c.mla_rope = 2, c.mla_v_dim = 3, c.mla_kv_lora = 5, c.mla_q_lora = q_lora;
  return c;
}

TEST(TrainGrad, LatentAttentionMatchesFiniteDifferences) {
  check_model(tiny_mla(3), ModelOptions{});
  ModelConfig plain = tiny_mla(0);
  plain.rope_style = ops::RopeStyle::HalfSplit;
  plain.layer_cfg.resize(2);
  plain.layer_cfg[1].attn = AttnKind::SlidingWindow, plain.layer_cfg[1].window = 3;
  ModelOptions rc;
  rc.recompute = true, rc.dropout = 0.2f;
  check_model(plain, rc, 7);
  ModelConfig moe = tiny_mla(4);  // DeepSeek-V2's block: latent attention and shared + routed experts
  moe.moe_experts = 4, moe.moe_used = 2, moe.moe_hidden = 4, moe.moe_shared_hidden = 4, moe.moe_first_dense = 1;
  moe.set_moe_layers();
  check_model(moe, ModelOptions{});
  LoraConfig lc;
  lc.rank = 2, lc.alpha = 3.f, lc.targets = parse_lora_targets("all");
  test::check_adapter_grads(plain, lc, ModelOptions{}, 0, "lora");
  test::check_adapter_grads(tiny_mla(3), lc, ModelOptions{}, 0, "lora");
}

// LoRA (train/lora.h): the adapter's gradients with the base frozen (no base gradient
// formed, MoE models included), through dropout on the adapter input and
// recomputation, for Llama (every target) and GPT-2 (its fused qkv).
void check_lora(ModelConfig c, LoraConfig lc, const ModelOptions& mo, uint64_t key = 0) {
  test::check_adapter_grads(c, lc, mo, key, "lora");
}

TEST(TrainGrad, LoraAdaptersMatchFiniteDifferences) {
  LoraConfig lc;
  lc.rank = 2, lc.alpha = 3.f, lc.targets = parse_lora_targets("all");
  check_lora(tiny_llama(), lc, ModelOptions{});
  ModelOptions rc;
  rc.recompute = true;
  lc.dropout = 0.3f;
  check_lora(tiny_llama(), lc, rc, 4242);
  ModelConfig g;
  g.arch = Arch::GPT2;
  g.dim = 8, g.n_layers = 2, g.n_heads = 2, g.n_kv_heads = 2, g.head_dim = 4, g.hidden_dim = 12;
  g.vocab_size = 11, g.max_seq_len = 8, g.tied_embeddings = true;
  LoraConfig gl;
  gl.rank = 3, gl.targets = parse_lora_targets("q,o,up,down");
  EXPECT_TRUE(LoraLayout(Layout(g), gl).lora.targets_site(LoraSite::Qkv));
  check_lora(g, gl, ModelOptions{});
  ModelConfig mix = tiny_llama();  // MoE: the attention adapted, experts untouched
  mix.moe_experts = 4, mix.moe_used = 2, mix.moe_hidden = 6, mix.moe_first_dense = 1;
  mix.set_moe_layers();
  check_lora(mix, lc, ModelOptions{});
  gl.targets = parse_lora_targets("gate");
  EXPECT_THROW(LoraLayout(Layout(g), gl), Error);
  EXPECT_THROW(parse_lora_targets("q,ffn"), Error);
}

// A fresh adapter (B = 0) computes the base model exactly; a merged adapter
// (W + (alpha/r) B A) computes what the adapter does.
TEST(TrainGrad, LoraZeroBIsTheBaseAndMergingIsExact) {
  ModelConfig c = tiny_llama();
  Layout L(c);
  LoraConfig lc;
  lc.rank = 4, lc.alpha = 8.f, lc.targets = parse_lora_targets("all");
  LoraLayout LL(L, lc);
  ParamVec pf(L.total), af(LL.total);
  init_params(L, pf.data(), 5);
  init_lora(LL, af.data(), 6);
  const std::vector<int32_t> tok = {1, 2, 3, 4, 5, 6}, tgt = {2, 3, 4, 5, 6, 7};
  Transformer<float> base(L, 1, 6, ModelOptions{}), ad(L, 1, 6, ModelOptions{});
  ad.attach_lora(LL);
  ad.set_lora_params(af.data(), nullptr);
  EXPECT_EQ(base.forward(pf.data(), tok.data(), tgt.data()).loss_sum,
            ad.forward(pf.data(), tok.data(), tgt.data()).loss_sum);
  std::mt19937_64 rng(8);
  Vec p = randn(L.total, rng, 0.3), a = randn(LL.total, rng, 0.3);
  Transformer<double> bd(L, 1, 6, ModelOptions{}), md(L, 1, 6, ModelOptions{});
  md.attach_lora(LL);
  md.set_lora_params(a.data(), nullptr);
  const double with_adapter = md.forward(p.data(), tok.data(), tgt.data()).loss_sum;
  std::vector<float> p32(p.begin(), p.end()), a32(a.begin(), a.end());
  merge_lora(L, LL, a32.data(), p32.data());
  const Vec merged(p32.begin(), p32.end());
  EXPECT_NEAR(bd.forward(merged.data(), tok.data(), tgt.data()).loss_sum, with_adapter, 1e-5 * std::abs(with_adapter));
  EXPECT_NE(bd.forward(p.data(), tok.data(), tgt.data()).loss_sum, with_adapter);
}

// Distillation (train/distill.h): (1 - alpha) CE + alpha tau^2 KL, forward and reverse,
// against central differences of the whole model.
TEST(TrainGrad, DistillationLossMatchesFiniteDifferences) {
  const test::OneThread one_thread;
  ModelConfig c = tiny_llama();
  Layout L(c);
  std::mt19937_64 rng(17);
  Vec p = randn(L.total, rng, 0.3);
  const int64_t B = 2, T = 5, N = B * T, V = c.vocab_size;
  std::vector<int32_t> tok(N), tgt(N);
  for (int64_t i = 0; i < N; ++i) tok[i] = int32_t(rng() % uint64_t(V)), tgt[i] = i % 4 == 3 ? -1 : int32_t(rng() % uint64_t(V));
  std::vector<float> tl(size_t(N * V));  // a teacher: log softmax of random logits / tau
  for (const float temp : {1.f, 2.5f})
    for (const bool reverse : {false, true}) {
      KdOptions kd;
      kd.teacher = "t", kd.alpha = 0.7f, kd.temp = temp, kd.reverse = reverse;
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        std::vector<double> z(static_cast<size_t>(V));
        for (auto& x : z) s += std::exp(x = 2.0 * std::normal_distribution<double>(0, 1)(rng) / temp);
        for (int64_t v = 0; v < V; ++v) tl[size_t(n * V + v)] = float(z[size_t(v)] - std::log(s));
      }
      Transformer<double> m(L, B, T, ModelOptions{});
      m.set_teacher(tl.data(), kd);
      auto f = [&] {
        const auto r = m.forward(p.data(), tok.data(), tgt.data());
        return ((1 - double(kd.alpha)) * r.loss_sum + double(kd.alpha) * r.kd_sum) / double(r.count);
      };
      const int64_t count = std::count_if(tgt.begin(), tgt.end(), [](int32_t t) { return t >= 0; });
      Vec g(L.total, 0.0);
      m.forward_backward(p.data(), g.data(), tok.data(), tgt.data(), 1.f / float(count));
      const Vec num = numgrad(p, f);
      EXPECT_LT(rel_err(g, num), kTol) << "tau " << temp << (reverse ? " reverse" : " forward");
      EXPECT_GT(m.forward(p.data(), tok.data(), tgt.data()).kd_sum, 0.0);
    }
}

TEST(TrainGrad, DropoutMasksFollowTheKey) {
  std::vector<double> a(1000, 1.0), b(1000, 1.0), c(1000, 1.0);
  blk::dropout(a.data(), 1000, 0.25f, 7);
  blk::dropout(b.data(), 1000, 0.25f, 7);
  blk::dropout(c.data(), 1000, 0.25f, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const auto zeros = std::count(a.begin(), a.end(), 0.0);
  EXPECT_GT(zeros, 200);
  EXPECT_LT(zeros, 300);
  for (double x : a) EXPECT_TRUE(x == 0.0 || std::abs(x - 1 / 0.75) < 1e-12);
  // In the model: a key changes the training forward; no key (evaluation) is dropout-free.
  Layout L(tiny_llama());
  std::mt19937_64 rng(3);
  Vec p = randn(L.total, rng, 0.3);
  ModelOptions mo;
  mo.dropout = 0.3f;
  Transformer<double> m(L, 1, 4, mo), m0(L, 1, 4, ModelOptions{});
  const std::vector<int32_t> tok = {1, 2, 3, 4}, tgt = {2, 3, 4, 5};
  const double eval = m.forward(p.data(), tok.data(), tgt.data()).loss_sum;
  EXPECT_EQ(eval, m0.forward(p.data(), tok.data(), tgt.data()).loss_sum);
  EXPECT_NE(eval, m.forward(p.data(), tok.data(), tgt.data(), 99).loss_sum);
}

TEST(TrainGrad, WholeGpt2ModelMatchesFiniteDifferences) {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.dim = 8, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 2, c.head_dim = 4, c.hidden_dim = 16;
  c.vocab_size = 9, c.max_seq_len = 6, c.tied_embeddings = true;
  check_model(c, ModelOptions{});
}

// stories260K: production float gradients against central differences of the
// independent float64 model in tests/ref_llama.h, on a batch of real text.
TEST(TrainGrad, Stories260KGradientsMatchIndependentFloat64Model) {
  TESSERA_REQUIRE_SHARED("models/stories260K.bin");
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  const std::string path = test::shared_path("models/stories260K.bin");
  Weights w = load_llama2c(path);
  Tokenizer tok = load_any_tokenizer(test::shared_path("models/tok512.bin"));
  std::ifstream in(test::shared_path("data/tinystories_val.txt"));
  std::string text(2000, '\0');
  in.read(text.data(), std::streamsize(text.size()));
  std::vector<int32_t> ids = tok.encode(text);
  const int64_t T = 24;
  ids.resize(size_t(T + 1));

  Layout L(w.cfg);
  std::vector<float> p(L.total), g(L.total, 0.f);
  params_from_weights(L, w, p.data());
  Transformer<float> m(L, 1, T, ModelOptions{});
  std::vector<int32_t> x(ids.begin(), ids.end() - 1), y(ids.begin() + 1, ids.end());
  const auto r = m.forward_backward(p.data(), g.data(), x.data(), y.data(), 1.f / float(T));

  test::RefLlama ref(path);
  EXPECT_NEAR(ref.loss(ids), r.loss_sum / double(r.count), 1e-5);
  // For each tensor: its 3 largest-gradient coordinates and 3 random ones.
  struct Slot {
    const char* name;
    std::vector<double>* arr;
    size_t per_layer;
  };
  const int64_t C = w.cfg.dim, H = w.cfg.hidden_dim, kvd = w.cfg.kv_dim();
  const Slot slots[] = {{"attn_norm.weight", &ref.att_norm, size_t(C)},   {"attn_q.weight", &ref.wq, size_t(C * C)},
                        {"attn_k.weight", &ref.wk, size_t(kvd * C)},       {"attn_v.weight", &ref.wv, size_t(kvd * C)},
                        {"attn_output.weight", &ref.wo, size_t(C * C)},    {"ffn_norm.weight", &ref.ffn_norm, size_t(C)},
                        {"ffn_gate.weight", &ref.w1, size_t(H * C)},       {"ffn_down.weight", &ref.w2, size_t(H * C)},
                        {"ffn_up.weight", &ref.w3, size_t(H * C)}};
  std::mt19937_64 rng(10);
  auto check = [&](const ParamInfo& t, std::vector<double>& arr, size_t base) {
    std::vector<size_t> idx(t.numel);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(),
                      [&](size_t a, size_t b) { return std::abs(g[t.offset + a]) > std::abs(g[t.offset + b]); });
    idx.resize(3);
    for (int i = 0; i < 3; ++i) idx.push_back(rng() % t.numel);
    Vec a, num;
    for (size_t i : idx) {
      const double x0 = arr[base + i], h = 1e-4;
      arr[base + i] = x0 + h;
      const double fp = ref.loss(ids);
      arr[base + i] = x0 - h;
      const double fm = ref.loss(ids);
      arr[base + i] = x0;
      a.push_back(g[t.offset + i]);
      num.push_back((fp - fm) / (2 * h));
    }
    EXPECT_LT(rel_err(a, num), kTol) << t.name;
  };
  for (int64_t l = 0; l < w.cfg.n_layers; ++l)
    for (const auto& s : slots) {
      const ParamInfo* t = L.find("blk." + std::to_string(l) + "." + s.name);
      ASSERT_NE(t, nullptr) << s.name;
      check(*t, *s.arr, size_t(l) * s.per_layer);
    }
  check(*L.find("output_norm.weight"), ref.final_norm, 0);
  check(*L.find("token_embd.weight"), ref.emb, 0);  // tied: embedding + classifier gradient

  // One AdamW step (from zero moments) against the formula in double.
  AdamWConfig ac;
  ac.weight_decay = 0.1f;
  const auto mask = decay_mask(L, ac);
  std::vector<float> p1 = p, m1(L.total, 0.f), v1(L.total, 0.f);
  adamw_step(p1.data(), g.data(), m1.data(), v1.data(), mask.data(), L.total, 1, 1e-3f, ac);
  double worst = 0;
  for (size_t i = 0; i < L.total; ++i) {
    const double gi = g[i], lr = 1e-3, wd = mask[i] ? 0.1 : 0.0;
    const double m = 0.1 * gi, v = 0.05 * gi * gi;
    const double mh = m / (1 - 0.9), vh = v / (1 - 0.95);
    const double want = double(p[i]) * (1 - lr * wd) - lr * mh / (std::sqrt(vh) + 1e-8);
    worst = std::max(worst, std::abs(want - double(p1[i])) / std::max(1e-3, std::abs(want)));
  }
  EXPECT_LT(worst, 1e-4);
}
