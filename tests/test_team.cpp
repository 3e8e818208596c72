// The persistent-team decode step (model/decode_team.cpp) against the
// region-per-matrix path: the same logits bit for bit, step after step, for
// every block variant it has to carry (GQA, MQA, biases, QK-norm, soft-caps,
// GPT-2's block, f16 cache, quantized and repacked weights) and thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/quant_mix.h"
#include "model/batch.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/synthetic.h"

using namespace tessera;

namespace {

TensorView floats(Weights& w, int64_t n, float base, float step) {
  std::vector<uint8_t> bytes(size_t(n) * 4);
  auto* f = reinterpret_cast<float*>(bytes.data());
  for (int64_t i = 0; i < n; ++i) f[i] = base + step * float(i % 7);
  return own_buffer(w, std::move(bytes), DType::F32, {n});
}

ModelConfig small(int64_t dim, int64_t hidden, int64_t heads, int64_t kv_heads) {
  ModelConfig c = synthetic_config("260k");
  c.dim = dim, c.hidden_dim = hidden, c.n_heads = heads, c.n_kv_heads = kv_heads, c.head_dim = dim / heads;
  c.n_layers = 2, c.vocab_size = 300, c.max_seq_len = 64;
  return c;
}

// Decodes 20 tokens with both paths and compares every step's logits.
void expect_same_decode(const Weights& w, int threads, bool kv_f16, const std::string& what) {
  RunOptions team, plain;
  team.kv_type = plain.kv_type = kv_f16 ? DType::F16 : DType::F32;
  team.max_threads = plain.max_threads = threads;
  plain.persistent_team = false;
  Model a(w, team), b(w, plain);
  KernelContext ctx(threads);
  ASSERT_TRUE(a.decodes_as_team(ctx)) << what;
  ASSERT_FALSE(b.decodes_as_team(ctx)) << what;
  const int64_t V = w.cfg.vocab_size;
  for (int64_t p = 0; p < 20; ++p) {
    const int32_t tok = int32_t((p * 37 + 11) % V);
    const float* la = a.forward(ctx, &tok, 1, p);
    std::vector<float> keep(la, la + V);
    const float* lb = b.forward(ctx, &tok, 1, p);
    ASSERT_EQ(0, std::memcmp(keep.data(), lb, size_t(V) * 4)) << what << ", step " << p;
  }
}

}  // namespace

TEST(TeamDecode, SameLogitsAsRegionPerMatrix) {
  if (detect_isa() == Isa::Scalar) GTEST_SKIP() << "no SIMD matrix-vector kernels on this CPU";
  struct Case {
    std::string name;
    ModelConfig cfg;
    DType type;
  };
  // Layers of at least ~181 x 181: smaller ones decode on one thread per matrix, without the team.
  std::vector<Case> cases{{"GQA f32", small(256, 344, 8, 4), DType::F32},
                          {"MQA f32", small(256, 344, 8, 1), DType::F32},
                          {"MHA f16", small(192, 160, 3, 3), DType::F16},
                          {"GQA bf16", small(256, 128, 4, 2), DType::BF16},
                          {"GQA q8_0", small(512, 1024, 8, 2), DType::Q8_0},
                          {"GQA q4_0", small(512, 1024, 8, 2), DType::Q4_0}};
  ModelConfig qwen = small(256, 344, 8, 2);
  qwen.qkv_bias = qwen.qk_norm = true;
  qwen.rope_style = ops::RopeStyle::HalfSplit;
  qwen.attn_softcap = 20.f;
  qwen.final_softcap = 15.f;
  cases.push_back({"biases, QK-norm, soft-caps", qwen, DType::F32});
  ModelConfig gpt2 = synthetic_config("gpt2-tiny");
  gpt2.dim = 256, gpt2.head_dim = 64, gpt2.hidden_dim = 1024;
  cases.push_back({"GPT-2 f32", gpt2, DType::F32});
  cases.push_back({"GPT-2 q8_0", gpt2, DType::Q8_0});
  ModelConfig geglu = small(256, 344, 8, 4), relu = gpt2;
  geglu.ffn_act = FfnAct::GeGLU, relu.ffn_act = FfnAct::ReLU;
  geglu.layer_cfg = sliding_window_layers(geglu.n_layers, 5, "even");  // decode past the window
  cases.push_back({"GeGLU, sliding window", geglu, DType::F32});
  cases.push_back({"GPT-2 ReLU", relu, DType::F32});
  ModelConfig post = small(256, 344, 8, 2), post_gpt2 = relu;
  post.norm_placement = post_gpt2.norm_placement = NormPlacement::Post;
  cases.push_back({"post-norm", post, DType::F32});
  cases.push_back({"GPT-2 post-norm ReLU", post_gpt2, DType::F32});
  // Mixture-of-experts layers: the selected experts' products over the team.
  cases.push_back({"MoE f32", synthetic_config("moe-tiny"), DType::F32});
  cases.push_back({"MoE shared expert, sigmoid router, dense first layer", synthetic_config("moe-tiny-shared"),
                   DType::F32});
  ModelConfig gemma = small(256, 344, 8, 4);  // Gemma 2's block: sandwich norms, scales, GeGLU, window, caps
  gemma.post_norms = true, gemma.embed_scale = 16.f, gemma.attn_scale = 0.1f, gemma.ffn_act = FfnAct::GeGLU;
  gemma.layer_cfg = sliding_window_layers(gemma.n_layers, 6, "even");
  gemma.attn_softcap = 30.f, gemma.final_softcap = 20.f;
  cases.push_back({"Gemma 2 block", gemma, DType::F32});
  cases.push_back({"MLA + MoE (DeepSeek-V3 shape)", synthetic_config("mla-tiny"), DType::F32});
  cases.push_back({"MLA + MoE q8_0", synthetic_config("mla-tiny"), DType::Q8_0});
  ModelConfig moe512 = synthetic_config("moe-tiny");
  moe512.dim = 512, moe512.head_dim = 64, moe512.moe_hidden = moe512.hidden_dim = 512;
  cases.push_back({"MoE q8_0", moe512, DType::Q8_0});
  cases.push_back({"MoE q4_0", moe512, DType::Q4_0});
  for (const Case& c : cases) {
    ModelConfig plain = c.cfg;
    plain.qkv_bias = plain.qk_norm = false;  // the generator makes neither; added below
    Weights w = make_random_weights(plain, c.type, 7, 2);
    w.cfg = c.cfg;
    if (c.cfg.qkv_bias)
      for (auto& L : w.layers) {
        L.bq = floats(w, c.cfg.q_dim(), -0.05f, 0.02f);
        L.bk = floats(w, c.cfg.kv_dim(), 0.03f, -0.01f);
        L.bv = floats(w, c.cfg.kv_dim(), -0.02f, 0.01f);
        L.q_norm = floats(w, c.cfg.head_dim, 0.9f, 0.03f);
        L.k_norm = floats(w, c.cfg.head_dim, 1.1f, -0.02f);
      }
    for (int threads : {2, 3}) {
      if (threads > omp_get_num_procs()) continue;  // the team is not used past the CPUs
      for (bool kv_f16 : {false, true})
        expect_same_decode(w, threads, kv_f16, c.name + ", " + std::to_string(threads) + " threads" +
                                                   (kv_f16 ? ", f16 cache" : ""));
    }
    if (c.type == DType::Q8_0 || c.type == DType::Q4_0) {
      if (repack_weights(w, detect_isa(), 2) > 0) expect_same_decode(w, 2, false, c.name + " repacked");
    }
  }
}

// A llama.cpp mix whose matrices quantize the activations differently within one
// product group (an 8-expert model's Q8_0 k / v beside Q4_K q): split team calls.
TEST(TeamDecode, MixedActivationQuantization) {
  if (detect_isa() == Isa::Scalar) GTEST_SKIP() << "no SIMD matrix-vector kernels on this CPU";
  ModelConfig c = synthetic_config("moe-tiny");
  c.dim = 512, c.head_dim = 64, c.moe_hidden = c.hidden_dim = 512, c.moe_experts = 8;
  const auto mix = quant_mix_from_name("q4_k_m");
  ASSERT_TRUE(mix);
  const Weights w = make_random_weights(c, *mix, 7, 2);
  ASSERT_EQ(w.layers[0].wk.dtype, DType::Q8_0);
  ASSERT_EQ(w.layers[0].wq.dtype, DType::Q4_K);
  expect_same_decode(w, 2, false, "q4_k_m, 8 experts");
}

// Small batches (up to Model::kTeamRows rows, several sequences, consecutive positions of one
// sequence as a speculative verification has them, some rows without logits) on the team:
// the same logits bit for bit as the region path, round after round.
TEST(TeamDecode, SmallBatchesSameAsRegionPerMatrix) {
  if (detect_isa() == Isa::Scalar) GTEST_SKIP() << "no SIMD matrix-vector kernels on this CPU";
  if (omp_get_num_procs() < 2) GTEST_SKIP() << "the team needs two CPUs";
  ModelConfig gpt2 = synthetic_config("gpt2-tiny");
  gpt2.dim = 256, gpt2.head_dim = 64, gpt2.hidden_dim = 1024;
  ModelConfig sparse = small(256, 344, 8, 4);
  LayerConfig pat;
  pat.window = 3, pat.dilation = 2, pat.global = 1, pat.random = 2, pat.seed = 5;
  sparse.layer_cfg = sparse_attention_layers(sparse.n_layers, pat, "odd", 3);
  const std::pair<ModelConfig, DType> cases[] = {{small(256, 344, 8, 4), DType::F32},
                                                 {small(512, 1024, 8, 2), DType::Q8_0},
                                                 {small(512, 1024, 8, 2), DType::Q4_0},
                                                 {gpt2, DType::F32},
                                                 {sparse, DType::F16}};
  for (const auto& [cfg, type] : cases) {
    const Weights w = make_random_weights(cfg, type, 7, 2);
    RunOptions team, plain;
    team.max_threads = plain.max_threads = 2;
    team.max_batch = plain.max_batch = 16;
    plain.persistent_team = false;
    team.own_cache = plain.own_cache = false;
    Model a(w, team), b(w, plain);
    KernelContext ctx(2);
    ASSERT_TRUE(a.decodes_as_team(ctx) && a.team_rows_ok(ctx, 6)) << dtype_name(type);
    KVCache ca = a.make_cache(16), cb = b.make_cache(16);
    const int64_t V = cfg.vocab_size;
    std::vector<int64_t> len(3, 0);
    for (int32_t s = 0; s < 3; ++s) {
      ASSERT_EQ(ca.add_seq(), s);
      ASSERT_EQ(cb.add_seq(), s);
    }
    for (int round = 0; round < 8; ++round) {
      Batch bt;
      const int64_t rows[3] = {1, round == 0 ? 4 : 3, 2};  // 7 rows: the team
      for (int32_t s = 0; s < 3; ++s)
        for (int64_t i = 0; i < rows[s]; ++i) {
          const int64_t p = len[size_t(s)]++;
          bt.add(int32_t((p * 31 + s * 7 + 3) % V), p, s, (p + s) % 3 != 1);
        }
      std::vector<float> oa(size_t(bt.n_logits() * V)), ob(oa.size());
      a.forward(ctx, bt, ca, oa.data());
      b.forward(ctx, bt, cb, ob.data());
      ASSERT_EQ(0, std::memcmp(oa.data(), ob.data(), oa.size() * 4)) << dtype_name(type) << ", round " << round;
    }
  }
}

TEST(TeamDecode, NotUsedWhereItCannotRun) {
  Weights w = make_random_weights(small(256, 344, 8, 4), DType::F32, 7, 1);
  Model m(w, RunOptions{});
  EXPECT_FALSE(m.decodes_as_team(KernelContext(1)));
  EXPECT_FALSE(m.decodes_as_team(KernelContext(2, Isa::Scalar)));
  RunOptions one;
  one.max_threads = 1;
  EXPECT_FALSE(Model(w, one).decodes_as_team(KernelContext(2)));
  RunOptions many;  // more threads than CPUs: the regions' path, which copes with oversubscription
  many.max_threads = omp_get_num_procs() + 1;
  EXPECT_FALSE(Model(w, many).decodes_as_team(KernelContext(omp_get_num_procs() + 1)));
  Weights tiny = make_random_weights(small(64, 172, 8, 4), DType::F32, 7, 1);  // 64 x 64 layers: one thread each
  EXPECT_FALSE(Model(tiny, RunOptions{}).decodes_as_team(KernelContext(2)));
}

// Split-K: three KV heads on a team of two leave one thread idle for the last
// head, so from 1024 cached positions each head's keys are cut into two chunks
// attended on both threads and merged by their log-sum-exps. Against the
// region path (one call per head over all keys): bit-identical before the
// split starts, within float rounding after; a sliding window of 700 on even
// layers (chunks start at the window).
TEST(TeamDecode, SplitKMatchesRegionPathAtLongContext) {
  if (detect_isa() == Isa::Scalar) GTEST_SKIP() << "no SIMD matrix-vector kernels on this CPU";
  if (omp_get_num_procs() < 2) GTEST_SKIP() << "the team needs two CPUs";
  ModelConfig c = small(192, 160, 3, 3);
  c.max_seq_len = 1300;
  c.layer_cfg = sliding_window_layers(c.n_layers, 1100, "even");
  const Weights w = make_random_weights(c, DType::F32, 9, 2);
  RunOptions team, plain;
  team.max_threads = plain.max_threads = 2;
  plain.persistent_team = false;
  Model a(w, team), b(w, plain);
  KernelContext ctx(2);
  ASSERT_TRUE(a.decodes_as_team(ctx));
  const int64_t V = c.vocab_size;
  double worst = 0;
  for (int64_t p = 0; p < 1300; ++p) {
    const int32_t tok = int32_t((p * 37 + 11) % V);
    const float* la = a.forward(ctx, &tok, 1, p);
    std::vector<float> keep(la, la + V);
    const float* lb = b.forward(ctx, &tok, 1, p);
    if (p < 1023) {
      ASSERT_EQ(0, std::memcmp(keep.data(), lb, size_t(V) * 4)) << "step " << p;
      continue;
    }
    for (int64_t i = 0; i < V; ++i) worst = std::max(worst, double(std::fabs(keep[size_t(i)] - lb[i])));
  }
  EXPECT_GT(worst, 0.0) << "the split path did not run";
  EXPECT_LT(worst, 1e-5);
}
