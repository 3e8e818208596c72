// Training and inference agree: the training transformer's loss equals the one
// computed from the inference engine's logits on the same parameters, and the
// model survives GGUF and safetensors round trips, for the config features
// training adds (QK-norm, soft-capping) as well as GQA, biases and GPT-2.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/load.h"
#include "formats/model_io.h"
#include "model/model.h"
#include "model/moe_hash.h"
#include "model/synthetic.h"
#include "formats/rope_scaling.h"
#include "model_test_util.h"
#include "test_util.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/transformer.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

std::vector<float> logits_of(const Weights& w, const std::vector<int32_t>& tok) {
  RunOptions ro;
  ro.n_ctx = int64_t(tok.size());
  ro.max_batch = 10;  // two chunks, and both attention paths (BLAS for >= 8 rows, scalar below)
  Model m(w, ro);
  KernelContext ctx(2);
  std::vector<float> out(tok.size() * size_t(w.cfg.vocab_size));
  m.forward_all(ctx, tok.data(), int64_t(tok.size()), 0, out.data());
  return out;
}

using test::mean_nll;

void check_agreement(const ModelConfig& c, bool hf_too = true) {
  train::Layout L(c);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 11);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (auto& x : p) x += nd(rng);  // away from the initialisation's symmetric values
  const int64_t T = 12;
  std::vector<int32_t> tok(T), tgt(T);
  for (auto& t : tok) t = int32_t(rng() % uint32_t(c.vocab_size));
  for (int64_t i = 0; i < T; ++i) tgt[size_t(i)] = tok[size_t((i + 1) % T)];
  train::Transformer<float> tm(L, 1, T, train::ModelOptions{});
  const auto r = tm.forward(p.data(), tok.data(), tgt.data());
  const double train_loss = r.loss_sum / double(r.count);

  const Weights w = train::weights_view(L, p.data());
  const std::vector<float> z = logits_of(w, tok);
  EXPECT_NEAR(mean_nll(z, tgt, c.vocab_size), train_loss, 1e-4 * std::abs(train_loss));

  const std::string g = test::temp_path("agree.gguf"), hf = test::temp_path("agree_hf");
  save_gguf(w, nullptr, g);
  std::vector<std::string> paths = {g};
  if (hf_too) save_hf(w, hf), paths.push_back(hf);
  for (const std::string& path : paths) {
    LoadedModel lm = load_model(path);
    EXPECT_EQ(lm.weights.cfg.qk_norm, c.qk_norm) << path;
    EXPECT_EQ(lm.weights.cfg.layer_cfg, c.layer_cfg) << path;
    EXPECT_EQ(lm.weights.cfg.activation(), c.activation()) << path;
    EXPECT_EQ(lm.weights.cfg.norm_placement, c.norm_placement) << path;
    EXPECT_EQ(lm.weights.cfg.attn_softcap, c.attn_softcap) << path;
    EXPECT_EQ(lm.weights.cfg.final_softcap, c.final_softcap) << path;
    ASSERT_EQ(lm.weights.cfg.rope_freq_factors.size(), c.rope_freq_factors.size()) << path;
    for (size_t i = 0; i < c.rope_freq_factors.size(); ++i)
      EXPECT_NEAR(lm.weights.cfg.rope_freq_factors[i], c.rope_freq_factors[i], 1e-6) << path;
    const std::vector<float> z2 = logits_of(lm.weights, tok);
    double worst = 0;
    for (size_t i = 0; i < z.size(); ++i) worst = std::max(worst, double(std::abs(z2[i] - z[i])));
    EXPECT_LT(worst, 1e-4) << path;
  }
  fs::remove(g);
  fs::remove_all(hf);
}

}  // namespace

TEST(TrainInfer, LlamaGqaBiasQkNormSoftcapsAgree) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = false, c.qkv_bias = true, c.qk_norm = true;
  c.attn_softcap = 3.f, c.final_softcap = 8.f;
  // GGUF only: soft-caps without Gemma 2's sandwich norms are no transformers class (save_hf refuses them).
  check_agreement(c, false);
  c.attn_softcap = c.final_softcap = 0.f;
  check_agreement(c);
}

// Latent attention (DeepSeek-V2): the training forward (expanded keys and values) and the
// engine (absorbed decode / expanded prefill over the latent cache) agree, with and without
// a q LoRA, with experts, and through GGUF (deepseek2) and DeepseekV2ForCausalLM.
TEST(TrainInfer, LatentAttentionAgrees) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = false;
  c.head_dim = 12, c.mla_rope = 4, c.mla_v_dim = 8, c.mla_kv_lora = 16, c.mla_q_lora = 12;
  check_agreement(c);
  c.mla_q_lora = 0;
  check_agreement(c);
  c.moe_experts = 4, c.moe_used = 2, c.moe_hidden = 16, c.moe_shared_hidden = 16, c.moe_first_dense = 1;
  c.moe_gate = MoeGate::Softmax, c.moe_norm_topk = false;
  c.set_moe_layers();
  check_agreement(c);
}

// Sliding-window attention on alternate layers (Gemma 2's pattern), with a window
// shorter than the sequence: the training forward, the inference prefill (GEMM
// rows and one-at-a-time rows) and the GGUF / safetensors round trips agree.
// Mixture-of-experts models: the training forward, the inference engine and the files agree.
TEST(TrainInfer, MixtureOfExpertsAgree) {
  ModelConfig mix = synthetic_config("260k");  // Mixtral-shaped: also through safetensors
  mix.moe_experts = 4, mix.moe_used = 2, mix.moe_hidden = mix.hidden_dim, mix.moe_norm_topk = true;
  mix.set_moe_layers();
  check_agreement(mix);
  ModelConfig qwen = synthetic_config("260k");  // gated shared expert, leading dense layer, not renormalised
  qwen.moe_experts = 6, qwen.moe_used = 2, qwen.moe_hidden = 48, qwen.moe_shared_hidden = 96;
  qwen.moe_shared_gate = true, qwen.moe_first_dense = 1;
  qwen.set_moe_layers();
  check_agreement(qwen, false);
  ModelConfig sig = synthetic_config("260k");  // sigmoid router, renormalised, scaled
  sig.moe_experts = 8, sig.moe_used = 3, sig.moe_hidden = 32;
  sig.moe_gate = MoeGate::Sigmoid, sig.moe_norm_topk = true, sig.moe_scale = 2.f;
  sig.set_moe_layers();
  check_agreement(sig, false);
  sig.moe_score_bias = true;  // DeepSeek-V3's selection bias (random values here: it changes the choices)
  check_agreement(sig, false);
}

// Multi-token prediction modules ride along: the main model's loss is the engine's (which
// runs the n_layers only), the GGUF export keeps the modules (llama.cpp's nextn names,
// block_count counting them) and loads with the same logits; safetensors refuses them.
TEST(TrainInfer, MultiTokenPredictionModulesRideAlong) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = false, c.mtp_depth = 2;
  check_agreement(c, false);
  train::Layout L(c);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 3);
  const Weights w = train::weights_view(L, p.data());
  const std::string g = test::temp_path("mtp.gguf");
  save_gguf(w, nullptr, g);
  {
    const auto f = gguf::File::open(g);
    EXPECT_EQ(f->get_int("llama.block_count"), 4);
    EXPECT_EQ(f->get_int("llama.nextn_predict_layers"), 2);
    EXPECT_NE(f->find_tensor("blk.3.nextn.eh_proj.weight"), nullptr);
    EXPECT_NE(f->find_tensor("blk.3.attn_q.weight"), nullptr);
    const LoadedModel lm = load_model(g);
    EXPECT_EQ(lm.weights.cfg.n_layers, 2);
    EXPECT_EQ(lm.weights.cfg.mtp_depth, 2);
    EXPECT_EQ(lm.weights.layers[2].mtp_eh_proj.shape[1], 64);
  }
  fs::remove(g);
  try {
    save_hf(w, test::temp_path("mtp_hf"));
    ADD_FAILURE() << "saved multi-token prediction modules as safetensors";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GGUF only"), std::string::npos) << e.what();
  }
}

// Drafting with the MTP modules (Model::mtp_draft): the engine's logits of both modules at
// every position give the training forward's loss of both depths, after a chunked prefill
// and after a rewind that replaced a token (the modules' K/V and states of the dropped
// positions are written again).
TEST(TrainInfer, MtpDraftMatchesTheTrainedModules) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = false, c.mtp_depth = 2;
  train::Layout L(c);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 11);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (auto& x : p) x += nd(rng);
  const int64_t T = 12;
  std::vector<int32_t> tok(T), tgt(T);
  for (auto& t : tok) t = int32_t(rng() % uint32_t(c.vocab_size));
  for (int64_t i = 0; i < T; ++i) tgt[size_t(i)] = i + 1 < T ? tok[size_t(i + 1)] : -1;
  train::Transformer<float> tm(L, 1, T, train::ModelOptions{});
  const auto r = tm.forward(p.data(), tok.data(), tgt.data());
  ASSERT_EQ(r.mtp_count, (T - 2) + (T - 3));
  const Weights w = train::weights_view(L, p.data());
  for (bool rewind : {false, true}) {
    RunOptions ro;
    ro.n_ctx = T, ro.max_batch = 5, ro.mtp_draft = true;
    Model m(w, ro);
    KernelContext ctx(2);
    std::vector<float> out(size_t(T * c.vocab_size));
    if (rewind) {
      m.forward_all(ctx, tok.data(), 7, 0, out.data());
      const int32_t other = (tok[7] + 1) % int32_t(c.vocab_size);
      m.forward(ctx, &other, 1, 7);  // a token later rejected...
      m.forward_all(ctx, tok.data() + 7, T - 7, 7, out.data());  // ...rewound and replaced
    } else {
      m.forward_all(ctx, tok.data(), T, 0, out.data());
    }
    const auto ce = [&](const float* z, int32_t target) {
      double mx = z[0], s = 0;
      for (int64_t v = 1; v < c.vocab_size; ++v) mx = std::max(mx, double(z[v]));
      for (int64_t v = 0; v < c.vocab_size; ++v) s += std::exp(double(z[v]) - mx);
      return mx + std::log(s) - z[target];
    };
    double nll = 0;
    for (int64_t i = 0; i + 2 < T; ++i) {  // module 1 at i reads t_{i+1}; module 2 its state and t_{i+2}
      nll += ce(m.mtp_draft(ctx, tok[size_t(i + 1)], i + 1, 1), tok[size_t(i + 2)]);
      if (i + 3 < T) nll += ce(m.mtp_draft(ctx, tok[size_t(i + 2)], i + 1, 2), tok[size_t(i + 3)]);
    }
    EXPECT_NEAR(nll, r.mtp_sum, 1e-4 * std::abs(r.mtp_sum)) << "rewind " << rewind;
    EXPECT_EQ(m.drafts_mtp(), 2);
    EXPECT_THROW(m.mtp_draft(ctx, 1, 1, 3), Error);
  }
  RunOptions plain;
  Model m(w, plain);
  KernelContext ctx(1);
  EXPECT_THROW(m.mtp_draft(ctx, 1, 1), Error);
}

// DeepSeek-V3's auxiliary-loss-free balancing (train/optim.h): each bias moves by the
// rate toward the layer's mean load; layers without a bias and equal loads stay put.
TEST(TrainInfer, SelectionBiasMovesTowardEvenLoads) {
  ModelConfig c = synthetic_config("260k");
  c.moe_experts = 4, c.moe_used = 2, c.moe_hidden = 32, c.moe_gate = MoeGate::Sigmoid, c.moe_norm_topk = true;
  c.moe_score_bias = true, c.moe_first_dense = 1;
  c.set_moe_layers();
  train::Layout L(c);
  ASSERT_EQ(L.layers[0].router_bias, train::kAbsent);
  ASSERT_NE(L.layers[1].router_bias, train::kAbsent);
  std::vector<float> p(L.total, 0.f);
  std::vector<double> counts(size_t(c.n_layers * 4), 0.0);
  const double l1[4] = {10, 30, 20, 20}, l2[4] = {5, 5, 5, 5};  // layer 1: mean 20; layer 2: even
  std::copy(l1, l1 + 4, counts.begin() + 4), std::copy(l2, l2 + 4, counts.begin() + 8);
  train::moe_bias_update(L, p.data(), counts, 0.25f);
  const float* b1 = p.data() + L.layers[1].router_bias;
  EXPECT_EQ(std::vector<float>(b1, b1 + 4), std::vector<float>({0.25f, -0.25f, 0.f, 0.f}));
  const float* b2 = p.data() + L.layers[2].router_bias;
  EXPECT_EQ(std::vector<float>(b2, b2 + 4), std::vector<float>(4, 0.f));
  // Never decayed by AdamW, even with --decay-norms.
  train::AdamWConfig a;
  a.decay_norms = true;
  const std::vector<uint8_t> m = train::decay_mask(L, a);
  EXPECT_EQ(m[L.layers[1].router_bias], 0);
  EXPECT_EQ(m[L.layers[1].ffn_norm], 1);
}

// Hash routing (model/moe_hash.h), every rule: the training forward routes each token
// as the engine does (prefill in two chunks: the previous token of a chunk's first
// row comes from the KV cache) and as the GGUF export does; the rules route differently.
TEST(TrainInfer, HashRoutedMixtureOfExpertsAgree) {
  ModelConfig c = synthetic_config("260k");
  c.moe_experts = 6, c.moe_used = 2, c.moe_hidden = 32, c.moe_shared_hidden = 32, c.moe_shared_gate = true;
  c.set_moe_layers();
  std::vector<double> losses;
  for (MoeRouting r : {MoeRouting::HashRandom, MoeRouting::HashBalanced, MoeRouting::HashBigram,
                       MoeRouting::HashPrevToken, MoeRouting::HashPosition}) {
    SCOPED_TRACE(moe_routing_name(r));
    ModelConfig h = c;
    h.moe_routing = r;
    if (r == MoeRouting::HashBalanced) {
      std::vector<int64_t> counts(size_t(h.vocab_size));
      for (size_t t = 0; t < counts.size(); ++t) counts[t] = int64_t((t * 7919) % 101);
      h.moe_hash_table = moe_balanced_table(h, counts);
    }
    check_agreement(h, false);
    train::Layout L(h);
    EXPECT_EQ(L.total, train::Layout(c).total - h.n_layers * h.moe_experts * h.dim) << "no router tensors";
    std::vector<float> p(L.total);
    train::init_params(L, p.data(), 11);
    const std::vector<int32_t> tok = {1, 5, 9, 2, 7, 3, 8, 4, 6, 10, 12, 11}, tgt = {5, 9, 2, 7, 3, 8, 4, 6, 10, 12, 11, 1};
    train::Transformer<float> tm(L, 1, int64_t(tok.size()), train::ModelOptions{});
    const auto res = tm.forward(p.data(), tok.data(), tgt.data());
    losses.push_back(res.loss_sum);
  }
  for (size_t i = 0; i < losses.size(); ++i)
    for (size_t j = 0; j < i; ++j) EXPECT_NE(losses[i], losses[j]) << i << " " << j;
}

TEST(TrainInfer, LlamaSlidingWindowLayersAgree) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = false;
  c.layer_cfg = sliding_window_layers(c.n_layers, 3, "even");
  check_agreement(c);
  // And the window changes the model (else the test above would prove nothing).
  train::Layout L(c);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 11);
  const std::vector<int32_t> tok = {1, 5, 9, 2, 7, 3, 8, 4, 6, 10, 12, 11};
  ModelConfig full = c;
  full.layer_cfg.clear();
  const auto a = logits_of(train::weights_view(L, p.data()), tok);
  const train::Layout Lf(full);
  const auto b = logits_of(train::weights_view(Lf, p.data()), tok);
  double d_early = 0, d_late = 0;  // positions 0..2, the others
  for (size_t i = 0; i < a.size(); ++i) {
    double& d = i < 3 * size_t(c.vocab_size) ? d_early : d_late;
    d = std::max(d, double(std::abs(a[i] - b[i])));
  }
  EXPECT_EQ(d_early, 0.0);  // positions 0..2 see at most 3 keys: the window changes nothing there
  EXPECT_GT(d_late, 1e-4);
}

TEST(TrainInfer, LlamaGeGluAgrees) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true, c.ffn_act = FfnAct::GeGLU;
  check_agreement(c);
}

// The original Transformer's ReLU MLP with biases, max(0, x W1 + b1) W2 + b2, on the GPT-2 block.
TEST(TrainInfer, Gpt2ReluAgrees) {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8, c.hidden_dim = 64;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true, c.ffn_act = FfnAct::ReLU;
  check_agreement(c);
  ModelConfig bad = c;
  bad.ffn_act = FfnAct::SwiGLU;  // GPT-2's MLP is not gated
  EXPECT_THROW(bad.validate("test"), Error);
}

// Post-norm blocks, norm(x + f(x)): the original Transformer's (GPT-2 block with
// ReLU) and a Llama-family one; GGUF only (config.json has no key for it).
TEST(TrainInfer, PostNormAgreesThroughGguf) {
  ModelConfig t;
  t.arch = Arch::GPT2;
  t.dim = 32, t.n_layers = 2, t.n_heads = 4, t.n_kv_heads = 4, t.head_dim = 8, t.hidden_dim = 64;
  t.vocab_size = 40, t.max_seq_len = 16, t.tied_embeddings = true, t.ffn_act = FfnAct::ReLU;
  t.norm_placement = NormPlacement::Post;
  check_agreement(t, false);
  ModelConfig l;
  l.arch = Arch::Llama;
  l.dim = 32, l.n_layers = 2, l.n_heads = 4, l.n_kv_heads = 2, l.head_dim = 8, l.hidden_dim = 48;
  l.vocab_size = 40, l.max_seq_len = 16, l.tied_embeddings = false, l.norm_placement = NormPlacement::Post;
  check_agreement(l, false);
  train::Layout L(l);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 1);
  EXPECT_THROW(save_hf(train::weights_view(L, p.data()), test::temp_path("post_hf")), Error);
}

TEST(TrainInfer, Gpt2SlidingWindowAgreesThroughGguf) {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8, c.hidden_dim = 64;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true;
  c.layer_cfg = sliding_window_layers(c.n_layers, 4, "all");
  train::Layout L(c);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 3);
  const int64_t T = 12;
  std::vector<int32_t> tok(T), tgt(T);
  for (int64_t i = 0; i < T; ++i) tok[size_t(i)] = int32_t((i * 7 + 3) % c.vocab_size), tgt[size_t(i)] = tok[size_t((i + 1) % T)];
  train::Transformer<float> tm(L, 1, T, train::ModelOptions{});
  const auto r = tm.forward(p.data(), tok.data(), tgt.data());
  const Weights w = train::weights_view(L, p.data());
  EXPECT_NEAR(mean_nll(logits_of(w, tok), tgt, c.vocab_size), r.loss_sum / double(r.count), 1e-4);
  const std::string g = test::temp_path("gpt2_window.gguf");
  save_gguf(w, nullptr, g);
  EXPECT_EQ(load_model(g).weights.cfg.layer_cfg, c.layer_cfg);
  EXPECT_THROW(save_hf(w, test::temp_path("gpt2_window_hf")), Error);  // config.json cannot say it for GPT-2
  fs::remove(g);
}

TEST(TrainInfer, LlamaTiedInterleavedAgree) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8, c.hidden_dim = 64;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true;
  check_agreement(c);
}

TEST(TrainInfer, LlamaRopeScalingAgree) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true;
  Llama3RopeScaling s;  // head size 8: divisors {1, 1, 1.9, 4}
  s.factor = 4, s.low_freq_factor = 2, s.high_freq_factor = 32;
  c.rope_freq_factors = llama3_rope_factors(s, c.rope_theta, c.head_dim);
  check_agreement(c);
}

TEST(TrainInfer, Qwen3QkNormAgreeAndIsWrittenAsQwen3) {
  // Qwen3's shape: QK-norm, no biases, head_dim * heads != dim.
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.hidden_dim = 48;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true, c.qk_norm = true, c.rope_theta = 1e6f;
  check_agreement(c);
  // The architecture names llama.cpp and transformers use for it.
  train::Layout L(c);
  std::vector<float> p(L.total);
  train::init_params(L, p.data(), 3);
  const Weights w = train::weights_view(L, p.data());
  const std::string g = test::temp_path("qwen3.gguf"), hf = test::temp_path("qwen3_hf");
  save_gguf(w, nullptr, g);
  save_hf(w, hf);
  auto f = gguf::File::open(g);
  EXPECT_EQ(f->get_string("general.architecture"), "qwen3");
  EXPECT_EQ(f->get_int("qwen3.attention.key_length"), 16);
  EXPECT_NE(f->find_tensor("blk.1.attn_k_norm.weight"), nullptr);
  std::ifstream in(hf + "/config.json");
  const auto cfg = nlohmann::json::parse(in);
  EXPECT_EQ(cfg["architectures"][0], "Qwen3ForCausalLM");
  EXPECT_EQ(cfg["model_type"], "qwen3");
  EXPECT_EQ(cfg["head_dim"], 16);
  EXPECT_EQ(load_model(g).weights.cfg.rope_style, ops::RopeStyle::HalfSplit);
  fs::remove(g);
  fs::remove_all(hf);
}

TEST(TrainInfer, Gpt2Agree) {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8, c.hidden_dim = 64;
  c.vocab_size = 40, c.max_seq_len = 16, c.tied_embeddings = true;
  check_agreement(c);
}

namespace {
std::vector<int32_t> random_tokens(size_t n, uint32_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(rng() % vocab);
  return t;
}
// ||a - b|| / ||b||
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += double(a[i] - b[i]) * (a[i] - b[i]), den += double(b[i]) * b[i];
  return std::sqrt(num / den);
}
}  // namespace

// bf16 mixed precision: the same step's loss and gradients as fp32, to bf16's precision.
TEST(TrainInfer, Bf16ProductsGiveFp32GradientsToBf16Precision) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.hidden_dim = 96;
  c.vocab_size = 50, c.max_seq_len = 16, c.tied_embeddings = true;
  train::Layout L(c);
  std::vector<float> p(L.total), g32(L.total, 0.f), g16(L.total, 0.f);
  train::init_params(L, p.data(), 3);
  const auto tok = random_tokens(32, 50, 9), tgt = random_tokens(32, 50, 19);
  train::ModelOptions mo;
  train::Transformer<float> m32(L, 2, 16, mo);
  mo.bf16 = true;
  train::Transformer<float> m16(L, 2, 16, mo);
  const auto r32 = m32.forward_backward(p.data(), g32.data(), tok.data(), tgt.data(), 1.f / 32);
  const auto r16 = m16.forward_backward(p.data(), g16.data(), tok.data(), tgt.data(), 1.f / 32);
  EXPECT_NEAR(r16.loss_sum, r32.loss_sum, 1e-2 * r32.loss_sum);
  const double d = rel_diff(g16, g32);
  EXPECT_LT(d, 2e-2);
  EXPECT_GT(d, 0.0);  // the bf16 path really ran
}

// With more rows than one logit chunk, the output layer's weight is packed
// once per pass (gemm_pack_b) and its products read the packed panels: the
// loss and gradients equal those of one chunk holding every row (packed in the
// products), fp32 and bf16, untied and tied output.
TEST(TrainInfer, PrePackedOutputLayerGivesTheSameGradients) {
  for (bool tied : {false, true})
    for (bool bf16 : {false, true}) {
      ModelConfig c;
      c.arch = Arch::Llama;
      c.dim = 48, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 12, c.hidden_dim = 64;
      c.vocab_size = 301, c.max_seq_len = 32, c.tied_embeddings = tied;
      train::Layout L(c);
      std::vector<float> p(L.total), ga(L.total, 0.f), gb(L.total, 0.f);
      train::init_params(L, p.data(), 5);
      const auto tok = random_tokens(96, 301, 10), tgt = random_tokens(96, 301, 20);
      train::ModelOptions mo;
      mo.bf16 = bf16;
      mo.logit_rows = 96;  // one chunk: nothing pre-packed
      train::Transformer<float> one(L, 3, 32, mo);
      mo.logit_rows = 40;  // three chunks (40, 40, 16): pre-packed where the AVX-512 GEMM runs
      train::Transformer<float> chunked(L, 3, 32, mo);
      const auto ra = one.forward_backward(p.data(), ga.data(), tok.data(), tgt.data(), 1.f / 96);
      const auto rb = chunked.forward_backward(p.data(), gb.data(), tok.data(), tgt.data(), 1.f / 96);
      EXPECT_NEAR(rb.loss_sum, ra.loss_sum, 1e-5 * ra.loss_sum);
      EXPECT_LT(rel_diff(gb, ga), 1e-5) << "tied " << tied << " bf16 " << bf16;
    }
}

// forward_backward(overwrite): a buffer full of NaN comes back holding exactly
// the gradients that zeroing it and accumulating gives (every element written,
// padding included), and a second, accumulating micro-batch agrees too. For
// Llama (untied, q/k/v biases, QK-norm) and GPT-2 (tied, learned positions),
// fp32 on our GEMM and bf16, with and without recomputation, and in double (BLAS).
namespace {
template <class T>
void check_overwrite(const ModelConfig& c, bool bf16, bool recompute) {
  train::Layout L(c);
  std::vector<float> pf(L.total);
  train::init_params(L, pf.data(), 7);
  const std::vector<T> p(pf.begin(), pf.end());
  std::vector<T> ga(L.total, T(NAN)), gb(L.total, T(0));
  const auto tok = random_tokens(48, int(c.vocab_size), 3), tgt = random_tokens(48, int(c.vocab_size), 4);
  const auto tok2 = random_tokens(48, int(c.vocab_size), 5), tgt2 = random_tokens(48, int(c.vocab_size), 6);
  train::ModelOptions mo;
  mo.bf16 = bf16, mo.recompute = recompute, mo.logit_rows = 20;  // three logit chunks
  train::Transformer<T> m(L, 3, 16, mo);
  const std::string what = std::string(c.arch == Arch::GPT2 ? "gpt2" : "llama") + (bf16 ? " bf16" : "") +
                           (recompute ? " recompute" : "") + (sizeof(T) == 8 ? " double" : "");
  const auto ra = m.forward_backward(p.data(), ga.data(), tok.data(), tgt.data(), 1.f / 48, 0, true);
  const auto rb = m.forward_backward(p.data(), gb.data(), tok.data(), tgt.data(), 1.f / 48);
  EXPECT_EQ(ra.loss_sum, rb.loss_sum) << what;
  size_t bad = 0, nonzero = 0;
  for (size_t i = 0; i < L.total; ++i) bad += !(ga[i] == gb[i]), nonzero += gb[i] != T(0);
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_GT(nonzero, L.total / 2) << what;
  m.forward_backward(p.data(), ga.data(), tok2.data(), tgt2.data(), 1.f / 48);
  m.forward_backward(p.data(), gb.data(), tok2.data(), tgt2.data(), 1.f / 48);
  bad = 0;
  for (size_t i = 0; i < L.total; ++i) bad += !(ga[i] == gb[i]);
  EXPECT_EQ(bad, 0u) << what << " (second micro-batch)";
}
}  // namespace

TEST(TrainInfer, OverwriteBackwardWritesEveryGradient) {
  ModelConfig llama;
  llama.arch = Arch::Llama;
  llama.dim = 48, llama.n_layers = 2, llama.n_heads = 4, llama.n_kv_heads = 2, llama.head_dim = 12;
  llama.hidden_dim = 64, llama.vocab_size = 77, llama.max_seq_len = 16;
  llama.tied_embeddings = false, llama.qkv_bias = true, llama.qk_norm = true;
  ModelConfig gpt2 = llama;
  gpt2.arch = Arch::GPT2, gpt2.n_kv_heads = 4, gpt2.tied_embeddings = true, gpt2.qkv_bias = false;
  gpt2.qk_norm = false;
  for (const ModelConfig& c : {llama, gpt2}) {
    for (bool bf16 : {false, true})
      for (bool recompute : {false, true}) check_overwrite<float>(c, bf16, recompute);
    check_overwrite<double>(c, false, false);
  }
}
