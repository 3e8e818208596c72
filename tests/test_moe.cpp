// Mixture-of-experts inference (model/moe.cpp): logits against llama.cpp's on
// the Mixtral- and Qwen2-MoE-shaped fixtures of ../shared/reference/arch (one
// batch, token by token, odd chunks), the same models through safetensors and
// back, the router's semantics (sigmoid, selection bias, renormalisation,
// scale, gated shared expert, leading dense layer) against a float64
// reference written here, quantized and repacked experts, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "model_test_util.h"
#include "core/error.h"
#include "formats/load.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "model/arch.h"
#include "model/model.h"
#include "model/moe_hash.h"
#include "model/synthetic.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/params.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

// (n, V) logits of a reference file.
std::vector<float> read_logits(const std::string& path, int64_t& n, int64_t& V) {
  std::ifstream in(path);
  in >> n >> V;
  std::vector<float> v(size_t(n * V));
  for (float& x : v) in >> x;
  return v;
}

std::vector<float> run(const Weights& w, const std::vector<int32_t>& ids, int64_t chunk, int threads = 2) {
  return test::chunked_logits(w, ids, chunk, threads);
}

std::vector<int32_t> read_ids(const std::string& path) { return test::read_token_ids(path); }

double max_diff(const std::vector<float>& a, const std::vector<float>& b) { return test::max_abs_diff(a, b); }

}  // namespace

TEST(MoE, MatchesLlamaCppLogits) {
  TESSERA_REQUIRE_SHARED("reference/arch/mixtral.gguf");
  // DeepSeek-V2 (softmax, no renormalisation, x1.5) and -V3 (sigmoid, selection bias,
  // renormalised, x2.5) routers with a leading dense layer, on latent attention (model/mla.cpp).
  for (const std::string name : {"mixtral", "qwen2moe", "deepseek2", "deepseek2_v3"}) {
    const LoadedModel lm = load_model(test::shared_path("reference/arch/" + name + ".gguf"));
    ASSERT_TRUE(lm.weights.cfg.is_moe()) << name;
    const auto ids = read_ids(test::shared_path("reference/arch/" + name + ".tokens.txt"));
    int64_t n = 0, V = 0;
    const auto ref = read_logits(test::shared_path("reference/arch/" + name + ".logits.txt"), n, V);
    ASSERT_EQ(n, int64_t(ids.size()));
    ASSERT_EQ(V, lm.weights.cfg.vocab_size);
    // The reference's 6 significant digits leave up to 5e-5 of rounding at |x| >= 10.
    for (int64_t chunk : {int64_t(40), int64_t(1), int64_t(7)})
      EXPECT_LT(max_diff(run(lm.weights, ids, chunk), ref), 1e-4) << name << ", chunks of " << chunk;
    EXPECT_LT(max_diff(run(lm.weights, ids, 40, 1), ref), 1e-4) << name << ", one thread";
  }
}

TEST(MoE, SafetensorsRoundTrip) {
  TESSERA_REQUIRE_SHARED("reference/arch/mixtral.gguf");
  // DeepSeek-V2 (softmax, x scale) and -V3 (sigmoid, selection bias, renormalised, x scale) with
  // latent attention and a leading dense layer: DeepseekV2ForCausalLM / DeepseekV3ForCausalLM.
  for (const std::string name : {"mixtral", "qwen2moe", "deepseek2", "deepseek2_v3"}) {
    const LoadedModel lm = load_model(test::shared_path("reference/arch/" + name + ".gguf"));
    const auto ids = read_ids(test::shared_path("reference/arch/" + name + ".tokens.txt"));
    const std::string dir = test::temp_path("moe_hf_" + name), back = dir + ".gguf";
    fs::remove_all(dir);
    save_hf(lm.weights, dir);
    const Weights hf = load_hf_weights(dir);
    const ModelConfig &hc = hf.cfg, &gc = lm.weights.cfg;
    EXPECT_EQ(hc.moe_experts, gc.moe_experts);
    EXPECT_EQ(hc.moe_norm_topk, gc.moe_norm_topk) << name;
    EXPECT_EQ(hc.moe_shared_hidden, gc.moe_shared_hidden) << name;
    EXPECT_EQ(hc.router_desc(), gc.router_desc()) << name;
    EXPECT_EQ(hc.moe_first_dense, gc.moe_first_dense) << name;
    EXPECT_EQ(hc.mla_kv_lora, gc.mla_kv_lora) << name;
    EXPECT_EQ(hc.mla_q_lora, gc.mla_q_lora) << name;
    EXPECT_EQ(hc.head_dim, gc.head_dim) << name;
    const auto a = run(lm.weights, ids, 40), b = run(hf, ids, 40);
    // Mixtral's GGUF q/k rows are in llama.cpp's interleaved RoPE order, the HF ones half-split:
    // the same math in another order. Qwen2-MoE is half-split in both: identical.
    if (name == "mixtral") EXPECT_LT(max_diff(a, b), 1e-4);
    else EXPECT_EQ(max_diff(a, b), 0.0);
    save_gguf(hf, nullptr, back);
    const LoadedModel again = load_model(back, test::shared_path("reference/arch/" + name + ".gguf"));
    EXPECT_EQ(max_diff(run(again.weights, ids, 40), a), 0.0) << name << ": GGUF -> safetensors -> GGUF";
    fs::remove_all(dir);
    fs::remove(back);
  }
}

// A DeepSeek-V3 directory with its multi-token prediction layer (num_nextn_predict_layers,
// layer num_hidden_layers in the files): the layer is skipped, the model loads as without
// it; the same tensor without the key is refused by name.
TEST(MoE, DeepSeekV3DirectorySkipsItsMtpLayer) {
  TESSERA_REQUIRE_SHARED("reference/arch/deepseek2_v3.gguf");
  const LoadedModel lm = load_model(test::shared_path("reference/arch/deepseek2_v3.gguf"));
  const std::string dir = test::temp_path("moe_hf_v3_mtp");
  fs::remove_all(dir);
  save_hf(lm.weights, dir);
  const std::vector<float> ref = run(load_hf_weights(dir), {1, 2, 3, 4}, 4);
  const std::string mtp = "model.layers." + std::to_string(lm.weights.cfg.n_layers) + ".eh_proj.weight";
  const std::vector<float> data(4, 0.5f);
  safetensors::Writer w;
  w.add_tensor(mtp, make_view(DType::F32, {2, 2}, data.data()));
  w.write(dir + "/mtp.safetensors");
  nlohmann::json index;
  for (const std::string& name : safetensors::Collection::open(dir + "/model.safetensors").names())
    index["weight_map"][name] = "model.safetensors";
  index["weight_map"][mtp] = "mtp.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  try {
    load_hf_weights(dir);
    ADD_FAILURE() << "an unexpected layer loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(mtp), std::string::npos) << e.what();
  }
  nlohmann::json cfg = nlohmann::json::parse(test::slurp(dir + "/config.json"));
  cfg["num_nextn_predict_layers"] = 1;
  std::ofstream(dir + "/config.json") << cfg.dump();
  EXPECT_EQ(max_diff(run(load_hf_weights(dir), {1, 2, 3, 4}, 4), ref), 0.0);
  fs::remove_all(dir);
}

namespace {

// Float64 reference of a one-layer model whose attention output is zero (wo = 0), so the
// layer is x + moe(rms(x)): written from the router description in model/config.h.
std::vector<double> ref_moe_logits(const Weights& w, int32_t token) {
  const auto& c = w.cfg;
  const int64_t C = c.dim, E = c.moe_experts, He = c.moe_hidden, Hs = c.moe_shared_hidden;
  const auto& L = w.layers[0];
  auto row = [](const TensorView& t, int64_t r) {
    std::vector<float> f(size_t(t.cols()));
    dequantize_row(t, r, f.data());
    return std::vector<double>(f.begin(), f.end());
  };
  auto rms = [&](const std::vector<double>& x, const TensorView& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / double(C) + double(c.norm_eps));
    std::vector<double> o(x.size());
    for (int64_t i = 0; i < C; ++i) o[size_t(i)] = x[size_t(i)] * s * double(g.f32()[i]);
    return o;
  };
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  auto silu = [](double z) { return z / (1 + std::exp(-z)); };
  // swiglu of an (H, C) gate / up and a (C, H) down, given as row readers.
  auto ffn = [&](const std::vector<double>& h, int64_t H, auto gate_row, auto up_row, auto down_row) {
    std::vector<double> a(static_cast<size_t>(H)), y(static_cast<size_t>(C));
    for (int64_t j = 0; j < H; ++j) a[size_t(j)] = silu(dot(gate_row(j), h)) * dot(up_row(j), h);
    for (int64_t i = 0; i < C; ++i) y[size_t(i)] = dot(down_row(i), a);
    return y;
  };
  std::vector<double> x = row(w.tok_embd, token);
  const std::vector<double> h = rms(x, L.ffn_norm);
  std::vector<double> p(static_cast<size_t>(E)), score(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    const double r = dot(row(L.router, e), h);
    p[size_t(e)] = 1 / (1 + std::exp(-r));  // sigmoid gate
    score[size_t(e)] = p[size_t(e)] + (L.router_bias.empty() ? 0.0 : double(L.router_bias.f32()[e]));
  }
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) order[size_t(e)] = e;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[size_t(a)] > score[size_t(b)]; });
  double sum = 0;
  for (int64_t i = 0; i < c.moe_used; ++i) sum += p[size_t(order[size_t(i)])];
  for (int64_t i = 0; i < c.moe_used; ++i) {
    const int64_t e = order[size_t(i)];
    const double wt = p[size_t(e)] / sum * double(c.moe_scale);
    const auto y = ffn(
        h, He, [&](int64_t j) { return row(L.gate_exps, e * He + j); }, [&](int64_t j) { return row(L.up_exps, e * He + j); },
        [&](int64_t j) { return row(L.down_exps, e * C + j); });
    for (int64_t j = 0; j < C; ++j) x[size_t(j)] += wt * y[size_t(j)];
  }
  const double g = 1 / (1 + std::exp(-dot(row(L.sh_gate, 0), h)));
  const auto s = ffn(
      h, Hs, [&](int64_t j) { return row(L.gate_sh, j); }, [&](int64_t j) { return row(L.up_sh, j); },
      [&](int64_t j) { return row(L.down_sh, j); });
  for (int64_t j = 0; j < C; ++j) x[size_t(j)] += g * s[size_t(j)];
  const auto xo = rms(x, w.out_norm);
  std::vector<double> logits(static_cast<size_t>(c.vocab_size));
  for (int64_t v = 0; v < c.vocab_size; ++v) logits[size_t(v)] = dot(row(w.output, v), xo);
  return logits;
}

}  // namespace

TEST(MoE, RouterSemanticsAgainstFloat64) {
  // DeepSeek-V3's router (sigmoid, selection bias, renormalised, x2.5) with a gated shared expert.
  ModelConfig c = synthetic_config("moe-tiny-shared");
  c.n_layers = 1, c.moe_first_dense = 0, c.vocab_size = 64;
  c.layer_cfg.clear();
  c.set_moe_layers();
  Weights w = make_random_weights(c, DType::F32, 3, 1);
  auto& L = w.layers[0];
  std::vector<uint8_t> zero(size_t(L.wo.nbytes()), 0);
  L.wo = own_buffer(w, std::move(zero), DType::F32, {L.wo.shape[0], L.wo.shape[1]});
  // A router scaled up (decisive scores) and a selection bias large enough to change which experts win.
  std::vector<uint8_t> rb(size_t(L.router.nbytes()));
  for (int64_t i = 0; i < L.router.numel(); ++i) reinterpret_cast<float*>(rb.data())[i] = 8.f * L.router.f32()[i];
  L.router = own_buffer(w, std::move(rb), DType::F32, {c.moe_experts, c.dim});
  std::vector<uint8_t> bias(size_t(c.moe_experts) * 4), gate(size_t(c.dim) * 4);
  for (int64_t e = 0; e < c.moe_experts; ++e) reinterpret_cast<float*>(bias.data())[e] = e % 2 ? 0.4f : -0.3f;
  for (int64_t i = 0; i < c.dim; ++i) reinterpret_cast<float*>(gate.data())[i] = 0.05f * float(i % 5) - 0.1f;
  L.router_bias = own_buffer(w, std::move(bias), DType::F32, {c.moe_experts});
  L.sh_gate = own_buffer(w, std::move(gate), DType::F32, {c.dim});
  int changed = 0;  // tokens whose experts the bias changes (else the test would not see it)
  Model m(w, RunOptions{});
  KernelContext ctx(2);
  for (int32_t tok = 0; tok < 24; ++tok) {
    const float* got = m.forward(ctx, &tok, 1, 0);
    const auto want = ref_moe_logits(w, tok);
    double d = 0, mx = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      d = std::max(d, std::fabs(double(got[v]) - want[size_t(v)]));
      mx = std::max(mx, std::fabs(want[size_t(v)]));
    }
    EXPECT_LT(d, 1e-4 * std::max(1.0, mx)) << "token " << tok;
    // Without the bias: do the selections differ?
    Weights nb = w;
    nb.layers[0].router_bias = {};
    nb.cfg.moe_score_bias = false;
    const auto plain = ref_moe_logits(nb, tok);
    double dp = 0;
    for (size_t v = 0; v < plain.size(); ++v) dp = std::max(dp, std::fabs(plain[v] - want[v]));
    changed += dp > 1e-3;
  }
  EXPECT_GT(changed, 3) << "the selection bias should change some tokens' experts";
}

namespace {
// Router rows times `f` (f32 routers): larger gaps between expert scores, so that
// float-level differences between two paths cannot flip a selection.
void scale_routers(Weights& w, float f) {
  for (auto& L : w.layers) {
    if (L.router.empty()) continue;
    std::vector<uint8_t> b(size_t(L.router.nbytes()));
    for (int64_t i = 0; i < L.router.numel(); ++i) reinterpret_cast<float*>(b.data())[i] = f * L.router.f32()[i];
    L.router = own_buffer(w, std::move(b), DType::F32, {L.router.shape[0], L.router.shape[1]});
  }
}
}  // namespace

TEST(MoE, QuantizedAndRepackedExperts) {
  ModelConfig c = synthetic_config("moe-tiny");
  c.dim = 512, c.head_dim = 64, c.moe_hidden = c.hidden_dim = 512;
  const std::vector<int32_t> ids{3, 17, 250, 9, 77, 401, 12, 5, 88, 300, 41};
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::F16, DType::BF16}) {
    Weights w = make_random_weights(c, t, 11, 2);
    scale_routers(w, 6.f);
    EXPECT_EQ(w.layers[0].gate_exps.dtype, t);
    EXPECT_EQ(w.layers[0].router.dtype, DType::F32);
    const auto plain = run(w, ids, 11), steps = run(w, ids, 1);
    EXPECT_LT(max_diff(plain, steps), 2e-3) << dtype_name(t) << ": prefill vs decode";
    Weights r = w;
    const int n = repack_weights(r, detect_isa(), 2);
    if (n > 0) {
      EXPECT_NE(r.layers[0].gate_exps.dtype, t) << "the experts were not repacked";
      EXPECT_EQ(r.layers[0].gate_exps.ndim, 3);
      const auto rp = run(r, ids, 11), rs = run(r, ids, 1);
      EXPECT_LT(max_diff(rp, rs), 2e-3) << dtype_name(t) << " repacked: prefill vs decode";
      // The R4 kernels round the activations their own way (dense models move as much).
      EXPECT_LT(max_diff(rp, plain), 6e-2) << dtype_name(t) << " repacked vs as stored";
    }
  }
}

TEST(MoE, ConvertKeepsRoutersAndCountsActiveParameters) {
  TESSERA_REQUIRE_SHARED("reference/arch/mixtral.gguf");
  const std::string out = test::temp_path("moe_q8.gguf");
  const auto r = test::run_cli("convert " + test::q(test::shared_path("reference/arch/qwen2moe.gguf")) + " " +
                               test::q(out) + " --type q8_0");
  ASSERT_EQ(r.code, 0) << r.err;
  const LoadedModel lm = load_model(out);
  EXPECT_EQ(lm.weights.layers[0].router.dtype, DType::F32);
  EXPECT_TRUE(lm.weights.cfg.moe_shared_gate);
  const auto info = test::run_cli("info -m " + test::q(out));
  ASSERT_EQ(info.code, 0) << info.err;
  EXPECT_NE(info.out.find("experts:        4 routed, 2 active per token, width 64"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("router:         softmax -> top-2 -> no renormalisation"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("shared expert:  width 96, gated"), std::string::npos) << info.out;
  // Two of four experts of width 64 per MoE layer are idle: 2 layers x 2 x 3 x 48 x 64 fewer.
  EXPECT_NE(info.out.find("active params:  " + std::to_string(3186544 - 2 * 2 * 3 * 48 * 64)), std::string::npos)
      << info.out;
  fs::remove(out);
}

TEST(MoE, BadInput) {
  Weights w = make_random_weights(synthetic_config("moe-tiny"), DType::F32, 1, 1);
  w.cfg.moe_used = 5;  // of 4 experts
  const std::string path = test::temp_path("moe_bad.gguf");
  save_gguf(w, nullptr, path);
  try {
    load_model(path);
    ADD_FAILURE() << "a model selecting 5 of 4 experts loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert_used_count (5) exceeds expert_count (4)"), std::string::npos) << e.what();
  }
  // No transformers class computes DeepSeek-V3's router: safetensors output refuses it.
  Weights ds = make_random_weights(synthetic_config("moe-tiny-shared"), DType::F32, 1, 1);
  try {
    save_hf(ds, test::temp_path("moe_bad_hf"));
    ADD_FAILURE() << "saved a sigmoid-routed model as safetensors";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("write GGUF instead"), std::string::npos) << e.what();
  }
  // What training does not compute is refused by name: MLA with QK-norm (no DeepSeek model has it).
  try {
    ModelConfig c = synthetic_config("mla-tiny");
    c.qk_norm = true;
    train::Layout layout(c);
    ADD_FAILURE() << "a training layout for MLA with QK-norm";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("QK-norm"), std::string::npos) << e.what();
  }
}

TEST(MoE, DeepSeekGgufRoundTrip) {
  TESSERA_REQUIRE_SHARED("reference/arch/deepseek2_v3.gguf");
  const std::string src = test::shared_path("reference/arch/deepseek2_v3.gguf");
  const LoadedModel lm = load_model(src);
  EXPECT_TRUE(lm.weights.cfg.mla());
  EXPECT_EQ(lm.weights.cfg.mla_rope, 8);
  const std::string path = test::temp_path("ds_rt.gguf");
  save_gguf(lm.weights, nullptr, path);
  const LoadedModel back = load_model(path, src);
  const auto ids = read_ids(test::shared_path("reference/arch/deepseek2_v3.tokens.txt"));
  EXPECT_EQ(max_diff(run(lm.weights, ids, 40), run(back.weights, ids, 40)), 0.0);
  const auto info = test::run_cli("info -m " + test::q(path));
  EXPECT_NE(info.out.find("latent (MLA): q LoRA rank 40, kv LoRA rank 24, key 24 (16 + 8 RoPE), value 16"),
            std::string::npos)
      << info.out;
  // Cache bytes per token (f16, 3 layers): the latent (24 + 8) x 3 x 2 B = 192 B; MHA of the same
  // heads 3 x 4 x (24 + 16) x 2 B = 960 B, 5x the latent.
  EXPECT_NE(info.out.find("kv per token:   192 B (f16, latent: (kv LoRA rank 24 + RoPE 8) x 3 layers); "
                          "MHA of these heads would need 960 B (5.0x)"),
            std::string::npos)
      << info.out;
  // What no transformers DeepSeek class computes is refused, not written wrong.
  Weights capped = lm.weights;
  capped.cfg.attn_softcap = 30.f;
  try {
    save_hf(capped, test::temp_path("ds_hf"));
    ADD_FAILURE() << "wrote a soft-capped MLA model as safetensors";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no transformers DeepSeek class"), std::string::npos) << e.what();
  }
  // config.json routing this engine does not compute: refused, naming the field.
  const std::string dir = test::temp_path("ds_hf_cfg");
  fs::remove_all(dir);
  save_hf(lm.weights, dir);
  const std::string cfg_path = dir + "/config.json";
  std::ifstream in(cfg_path);
  nlohmann::json cfg = nlohmann::json::parse(in);
  in.close();
  for (const auto& [key, value, want] :
       {std::tuple{"topk_group", nlohmann::json(1), std::string("topk_group 1 of n_group 8")},
        std::tuple{"scoring_func", nlohmann::json("tanh"), std::string("scoring_func 'tanh'")},
        std::tuple{"moe_layer_freq", nlohmann::json(2), std::string("moe_layer_freq")}}) {
    nlohmann::json bad = cfg;
    bad[key] = value;
    if (std::string(key) == "topk_group") bad["n_group"] = 8;
    std::ofstream(cfg_path) << bad.dump();
    try {
      load_hf_weights(dir);
      ADD_FAILURE() << "loaded config.json with " << key << " = " << value.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
  fs::remove(path);
}

TEST(MoE, GgufRoundTripKeepsTheRouter) {
  // Sigmoid router with a selection bias, renormalised and scaled; gated shared expert; a dense first layer.
  const Weights w = make_random_weights(synthetic_config("moe-tiny-shared"), DType::F32, 5, 1);
  const std::string path = test::temp_path("moe_rt.gguf");
  save_gguf(w, nullptr, path);
  const LoadedModel lm = load_model(path);
  const auto& c = lm.weights.cfg;
  EXPECT_EQ(c.moe_gate, MoeGate::Sigmoid);
  EXPECT_TRUE(c.moe_norm_topk && c.moe_score_bias && c.moe_shared_gate);
  EXPECT_EQ(c.moe_scale, 2.5f);
  EXPECT_EQ(c.moe_first_dense, 1);
  EXPECT_FALSE(c.moe_layer(0));
  EXPECT_TRUE(c.moe_layer(1));
  const std::vector<int32_t> ids{1, 2, 3, 100, 200, 300, 400};
  // Written as "qwen2moe" (a gated shared expert), whose q/k rows llama.cpp rotates half-split:
  // the synthetic model's interleaved rows are permuted, the same math in another order.
  EXPECT_LT(max_diff(run(w, ids, 7), run(lm.weights, ids, 7)), 1e-4);
  fs::remove(path);
}

TEST(MoE, LlamaCppQuantMixRules) {
  const auto m = quant_mix_from_name("q4_k_m"), q40 = quant_mix_from_name("q4_0");
  ASSERT_TRUE(m && q40);
  const MoeMixInfo eight{8, 32}, four{4, 32};
  // llama_tensor_get_type: 8-expert models keep attention k / v in Q8_0 (every mix) and the
  // attention output in Q5_K (the low-bit K mixes); routers are never quantized.
  EXPECT_EQ(quant_mix_tensor_type(*m, "attn_v.weight", 3, 32, 4096, 4, true, nullptr, eight), DType::Q8_0);
  EXPECT_EQ(quant_mix_tensor_type(*q40, "attn_k.weight", 3, 32, 4096, 4, true, nullptr, eight), DType::Q8_0);
  EXPECT_EQ(quant_mix_tensor_type(*m, "attn_output.weight", 3, 32, 4096, 4, true, nullptr, eight), DType::Q5_K);
  EXPECT_EQ(quant_mix_tensor_type(*q40, "attn_output.weight", 3, 32, 4096, 4, true, nullptr, eight), DType::Q4_0);
  EXPECT_EQ(quant_mix_tensor_type(*m, "attn_k.weight", 3, 32, 4096, 4, true, nullptr, four), DType::Q4_K);
  EXPECT_EQ(quant_mix_tensor_type(*m, "ffn_gate_inp.weight", 3, 32, 4096, 4, true, nullptr, eight), DType::F32);
  // ffn_down_exps of layer 3 among 32 down projections (16 layers, routed + shared): more_bits(3, 32)
  // (the first eighth) -> Q6_K; among 16 it is not (3 >= 16 / 8 and (3 - 2) % 3 != 2) -> Q4_K.
  EXPECT_EQ(quant_mix_tensor_type(*m, "ffn_down_exps.weight", 3, 16, 4096, 4, true, nullptr, {4, 32}), DType::Q6_K);
  EXPECT_EQ(quant_mix_tensor_type(*m, "ffn_down_exps.weight", 3, 16, 4096, 4, true, nullptr, {4, 16}), DType::Q4_K);
  EXPECT_EQ(moe_mix_info(synthetic_config("moe-tiny-shared")).n_ffn_down, 1 + 2 * 2);  // dense + (routed, shared) x 2
}

TEST(MoE, UpcyclingStartsAsTheDenseModel) {
  // Sparse upcycling: E copies of each dense FFN and a fresh router; the renormalised top-k
  // weights sum to 1, so without noise the MoE model computes the dense one.
  const Weights dense = make_random_weights(synthetic_config("260k"), DType::F32, 4, 1);
  const Weights up = train::upcycle_weights(dense, 4, 2, 0.f, 1);
  EXPECT_EQ(up.cfg.moe_experts, 4);
  EXPECT_TRUE(up.cfg.moe_layer(0));
  EXPECT_EQ(up.layers[0].gate_exps.shape[0], 4);
  const std::vector<int32_t> ids{1, 5, 9, 100, 200, 300, 33, 77};
  EXPECT_LT(max_diff(run(dense, ids, 8), run(up, ids, 8)), 2e-5);
  const Weights noisy = train::upcycle_weights(dense, 4, 2, 0.1f, 1);
  EXPECT_GT(max_diff(run(dense, ids, 8), run(noisy, ids, 8)), 1e-3);
  // It trains: the layout takes it, and the parameters copy over.
  train::Layout L(up.cfg);
  std::vector<float> p(L.total);
  train::params_from_weights(L, up, p.data());
  EXPECT_EQ(max_diff(run(train::weights_view(L, p.data()), ids, 8), run(up, ids, 8)), 0.0);
  try {
    train::upcycle_weights(up, 4, 2, 0.f, 1);
    ADD_FAILURE() << "upcycled an MoE model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already MoE"), std::string::npos) << e.what();
  }
}

TEST(MoE, EveryNthLayer) {
  // --moe-every 2 (Qwen2-MoE's decoder_sparse_step): layers 1 and 3 of 4 have experts.
  ModelConfig c = synthetic_config("moe-tiny");
  c.n_layers = 4, c.moe_every = 2;
  c.layer_cfg.clear();
  c.set_moe_layers();
  EXPECT_FALSE(c.moe_layer(0));
  EXPECT_TRUE(c.moe_layer(1));
  EXPECT_FALSE(c.moe_layer(2));
  EXPECT_TRUE(c.moe_layer(3));
  const Weights w = make_random_weights(c, DType::F32, 2, 1);
  EXPECT_FALSE(w.layers[0].w_up.empty());
  EXPECT_FALSE(w.layers[1].up_exps.empty());
  const std::string path = test::temp_path("moe_every.gguf");
  save_gguf(w, nullptr, path);
  const LoadedModel lm = load_model(path);
  EXPECT_EQ(lm.weights.cfg.moe_every, 2);
  EXPECT_EQ(lm.weights.cfg.layer_cfg, c.layer_cfg);
  const std::vector<int32_t> ids{1, 2, 3, 4, 5, 6};
  EXPECT_EQ(max_diff(run(w, ids, 6), run(lm.weights, ids, 6)), 0.0);
  const auto info = test::run_cli("info -m " + test::q(path));
  EXPECT_NE(info.out.find("MoE layers 1,3"), std::string::npos) << info.out;
  // A training layout and its checkpoint config keep it.
  const train::Layout L(c);
  EXPECT_NE(L.layers[1].up_exps, train::kAbsent);
  EXPECT_EQ(L.layers[2].up_exps, train::kAbsent);
  try {
    save_hf(w, test::temp_path("moe_every_hf"));
    ADD_FAILURE() << "wrote a Mixtral with dense layers between MoE ones";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dense layers between"), std::string::npos) << e.what();
  }
  fs::remove(path);
}

// Hash routing (model/moe_hash.h) in the engine: one prefill, token by token, odd
// chunks and a batch of two interleaved sequences, one forked from the other, give
// the same logits (the previous token of a chunk's first row comes from the KV
// cache, shared blocks included); the GGUF round trip keeps the rule and the
// hash-balanced table; safetensors refuses them; a bad table is named.
TEST(MoE, HashRoutingAcrossChunksSequencesAndFiles) {
  const std::vector<int32_t> ids = {1, 17, 300, 42, 42, 9, 511, 3, 77, 150, 2, 8, 64, 5};
  const int64_t n = int64_t(ids.size());
  for (MoeRouting r : {MoeRouting::HashBigram, MoeRouting::HashPrevToken, MoeRouting::HashBalanced}) {
    SCOPED_TRACE(moe_routing_name(r));
    ModelConfig c = synthetic_config("moe-tiny");
    c.moe_routing = r;
    if (r == MoeRouting::HashBalanced) {
      std::vector<int64_t> counts(size_t(c.vocab_size));
      for (size_t t = 0; t < counts.size(); ++t) counts[t] = int64_t(1000 / (t + 1));  // Zipf-like
      c.moe_hash_table = moe_balanced_table(c, counts);
    }
    const Weights w = make_random_weights(c, DType::F32, 3, 1);
    EXPECT_TRUE(w.layers[0].router.empty());
    const std::vector<float> ref = run(w, ids, n);
    EXPECT_LT(max_diff(run(w, ids, 1), ref), 1e-4);
    EXPECT_LT(max_diff(run(w, ids, 5), ref), 1e-4);
    // Sequence a: ids; sequence b: forks a after 6 tokens, then its own tokens. Rows interleaved.
    std::vector<int32_t> b_ids(ids.begin(), ids.begin() + 6);
    for (int32_t t : {400, 12, 12, 99}) b_ids.push_back(t);
    const std::vector<float> ref_b = run(w, b_ids, int64_t(b_ids.size()));
    RunOptions o;
    o.n_ctx = 64, o.max_batch = 7, o.own_cache = false, o.kv_block_size = 4;
    Model m(w, o);
    KVCache cache = m.make_cache(16);
    KernelContext ctx(2);
    const int64_t V = c.vocab_size;
    const int32_t a = cache.add_seq();
    std::vector<float> out(size_t(n * V));
    Batch bt;
    for (int64_t p = 0; p < 6; ++p) bt.add(ids[size_t(p)], p, a, true);
    m.forward(ctx, bt, cache, out.data());
    const int32_t b = cache.fork(a);
    bt.clear();
    for (int64_t p = 6; p < n; ++p) {
      bt.add(ids[size_t(p)], p, a, true);
      if (p < int64_t(b_ids.size())) bt.add(b_ids[size_t(p)], p, b, true);
    }
    std::vector<float> out2(size_t(bt.size() * V));
    m.forward(ctx, bt, cache, out2.data());
    double worst = 0;
    for (int64_t i = 0, p = 6; p < n; ++p) {
      for (int64_t v = 0; v < V; ++v)
        worst = std::max(worst, double(std::abs(out2[size_t(i * V + v)] - ref[size_t(p * V + v)])));
      ++i;
      if (p < int64_t(b_ids.size())) {
        for (int64_t v = 0; v < V; ++v)
          worst = std::max(worst, double(std::abs(out2[size_t(i * V + v)] - ref_b[size_t(p * V + v)])));
        ++i;
      }
    }
    EXPECT_LT(worst, 1e-4);
    // Files.
    const std::string g = test::temp_path("moe_hash.gguf");
    save_gguf(w, nullptr, g);
    {
      const LoadedModel lm = load_model(g);
      EXPECT_EQ(lm.weights.cfg.moe_routing, r);
      EXPECT_EQ(lm.weights.cfg.moe_hash_table, c.moe_hash_table);
      EXPECT_EQ(max_diff(run(lm.weights, ids, n), ref), 0.0);
      EXPECT_NE(lm.weights.cfg.router_desc().find(std::string(moe_routing_name(r)) + " -> 2 experts -> weights 0.5 each"),
                std::string::npos)
          << lm.weights.cfg.router_desc();
    }
    fs::remove(g);
    try {
      save_hf(w, test::temp_path("moe_hash_hf"));
      ADD_FAILURE() << "saved a hash-routed model as safetensors";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no transformers class routes experts by a hash"), std::string::npos) << e.what();
    }
  }
  ModelConfig bad = synthetic_config("moe-tiny");
  bad.moe_routing = MoeRouting::HashBalanced;
  bad.moe_hash_table.assign(size_t(bad.vocab_size * bad.moe_used), 0);  // every token to expert 0 twice
  try {
    bad.validate("bad.gguf");
    ADD_FAILURE() << "a table routing to one expert twice validated";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.gguf: the expert hash table sends token 0 to expert 0 twice"),
              std::string::npos)
        << e.what();
  }
  bad.moe_hash_table.pop_back();
  EXPECT_THROW(bad.validate("bad.gguf"), Error);
}

// Hash-balanced routing spreads the training tokens evenly: the table built from
// TinyStories' token counts (the 260K model's tokenizer) gives every expert a load
// within 10% of the others', where hashing token ids at random does not.
TEST(MoE, HashBalancedTableEvensTheLoads) {
  TESSERA_REQUIRE_SHARED("data/tinystories_val.txt");
  TESSERA_REQUIRE_SHARED("models/tok512.bin");
  const Tokenizer tok = load_llama2c_tokenizer(test::shared_path("models/tok512.bin"), 512);
  const std::vector<int32_t> ids = tok.encode(test::slurp(test::shared_path("data/tinystories_val.txt")));
  ASSERT_GT(ids.size(), 100000u);
  ModelConfig c = synthetic_config("moe-tiny");
  std::vector<int64_t> counts(size_t(c.vocab_size), 0);
  for (int32_t t : ids) ++counts[size_t(t)];
  for (auto [E, k] : {std::pair<int64_t, int64_t>{8, 2}, {8, 1}, {16, 2}}) {
    c.moe_experts = E, c.moe_used = k;
    c.moe_routing = MoeRouting::HashBalanced;
    c.moe_hash_table = moe_balanced_table(c, counts);
    c.validate("balanced");
    std::vector<int64_t> load = moe_hash_loads(c, counts);
    auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    EXPECT_LE(double(*hi), 1.10 * double(*lo)) << "E " << E << " k " << k;
    // The same loads when the engine's rule routes every token of the text.
    std::vector<int64_t> routed(size_t(E), 0);
    std::vector<int32_t> sel(static_cast<size_t>(k));
    for (int32_t t : ids) {
      moe_hash_select(c, t, -1, 0, sel.data());
      for (int32_t e : sel) ++routed[size_t(e)];
    }
    EXPECT_EQ(routed, load);
    c.moe_routing = MoeRouting::HashRandom, c.moe_hash_table.clear();
    load = moe_hash_loads(c, counts);
    std::tie(lo, hi) = std::minmax_element(load.begin(), load.end());
    EXPECT_GT(double(*hi), 1.10 * double(*lo)) << "random hashing is this uneven, E " << E << " k " << k;
  }
}
