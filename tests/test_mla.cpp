// Multi-head latent attention (model/mla.cpp) in its absorbed form: the whole
// model against a float64 reference written here from the expanded definition
// (per-head keys and values decompressed from the latent, no absorption), past
// one prefill key tile, token by token and in chunks, with f32, f16 and Q8_0
// latent caches; the cache holding only [c | k_pe] per token and layer; and
// dense latent-attention models through Hugging Face's DeepseekV2ForCausalLM.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "formats/model_io.h"
#include "model/model.h"
#include "model/synthetic.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace tessera;

namespace {

// mla-tiny's attention (q LoRA 192, kv LoRA 128, heads of 64 + 32 RoPE, values
// of 64) with dense feed-forwards, 400 positions.
ModelConfig dense_mla_config() {
  ModelConfig c = synthetic_config("mla-tiny");
  c.moe_experts = c.moe_used = c.moe_hidden = c.moe_shared_hidden = c.moe_first_dense = 0;
  c.layer_cfg.clear();
  c.max_seq_len = 400;
  c.validate("test");
  return c;
}

// The expanded definition in double precision, one token at a time.
struct RefMla {
  const Weights& w;
  const ModelConfig& c;
  std::vector<std::vector<double>> kc, vc;  // per layer (pos, n_heads, head_dim) / (pos, n_heads, v)

  explicit RefMla(const Weights& w_) : w(w_), c(w_.cfg), kc(size_t(c.n_layers)), vc(size_t(c.n_layers)) {}

  static std::vector<double> mv(const TensorView& W, const std::vector<double>& x) {
    std::vector<double> y(size_t(W.rows()), 0.0);
    for (int64_t i = 0; i < W.rows(); ++i) {
      double a = 0;
      for (int64_t j = 0; j < W.cols(); ++j) a += double(W.f32()[i * W.cols() + j]) * x[size_t(j)];
      y[size_t(i)] = a;
    }
    return y;
  }
  std::vector<double> rms(const std::vector<double>& x, const TensorView& g, size_t n) const {
    double ss = 0;
    for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const double s = 1.0 / std::sqrt(ss / double(n) + double(c.norm_eps));
    std::vector<double> o(n);
    for (size_t i = 0; i < n; ++i) o[i] = x[i] * s * double(g.f32()[i]);
    return o;
  }
  // Interleaved pairs over the last `rope` of x[0, n) at position pos.
  void rope(double* x, int64_t pos) const {
    const int64_t r = c.mla_rope;
    for (int64_t i = 0; i < r; i += 2) {
      const double ang = double(pos) * std::pow(double(c.rope_theta), -double(i) / double(r));
      const double a = x[i], b = x[i + 1];
      x[i] = a * std::cos(ang) - b * std::sin(ang);
      x[i + 1] = a * std::sin(ang) + b * std::cos(ang);
    }
  }

  std::vector<double> step(int32_t token, int64_t pos) {
    const int64_t C = c.dim, nh = c.n_heads, hd = c.head_dim, rp = c.mla_rope, nope = hd - rp, vd = c.mla_v_dim;
    const int64_t ckv = c.mla_kv_lora;
    std::vector<double> x(w.tok_embd.f32() + token * C, w.tok_embd.f32() + (token + 1) * C);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const auto& L = w.layers[size_t(l)];
      const auto h = rms(x, L.attn_norm, size_t(C));
      auto q = mv(L.wq_b, rms(mv(L.wq_a, h), L.q_a_norm, size_t(c.mla_q_lora)));  // (nh, hd)
      auto kva = mv(L.wkv_a, h);                                                  // (ckv + rope)
      const auto kv = mv(L.wkv_b, rms(kva, L.kv_a_norm, size_t(ckv)));           // (nh, nope + vd)
      rope(kva.data() + ckv, pos);
      for (int64_t hh = 0; hh < nh; ++hh) {
        rope(q.data() + hh * hd + nope, pos);
        for (int64_t i = 0; i < nope; ++i) kc[size_t(l)].push_back(kv[size_t(hh * (nope + vd) + i)]);
        for (int64_t i = 0; i < rp; ++i) kc[size_t(l)].push_back(kva[size_t(ckv + i)]);
        for (int64_t i = 0; i < vd; ++i) vc[size_t(l)].push_back(kv[size_t(hh * (nope + vd) + nope + i)]);
      }
      std::vector<double> att(size_t(nh * vd), 0.0);
      for (int64_t hh = 0; hh < nh; ++hh) {
        std::vector<double> s(size_t(pos + 1));
        double mx = -1e300, sum = 0;
        for (int64_t t = 0; t <= pos; ++t) {
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += q[size_t(hh * hd + i)] * kc[size_t(l)][size_t((t * nh + hh) * hd + i)];
          s[size_t(t)] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[size_t(t)]);
        }
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int64_t t = 0; t <= pos; ++t)
          for (int64_t i = 0; i < vd; ++i)
            att[size_t(hh * vd + i)] += s[size_t(t)] / sum * vc[size_t(l)][size_t((t * nh + hh) * vd + i)];
      }
      const auto o = mv(L.wo, att);
      for (int64_t i = 0; i < C; ++i) x[size_t(i)] += o[size_t(i)];
      const auto f = rms(x, L.ffn_norm, size_t(C));
      auto g = mv(L.w_gate, f);
      const auto u = mv(L.w_up, f);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const auto d = mv(L.w_down, g);
      for (int64_t i = 0; i < C; ++i) x[size_t(i)] += d[size_t(i)];
    }
    return mv(w.output, rms(x, w.out_norm, size_t(C)));
  }
};

// max |a - b| over max |b|.
double rel_diff(const float* a, const std::vector<double>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < b.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i])), m = std::max(m, std::abs(b[i]));
  return d / m;
}

}  // namespace

// 300 positions: a prefill's keys span two tiles of 256; decode (absorbed) reads
// the latent rows of every earlier position; chunks of 128 run expanded (keys and
// values decompressed from the cached latents), chunks of 20 absorbed.
TEST(Mla, AbsorbedLatentCacheMatchesFloat64ExpandedAttention) {
  const ModelConfig cfg = dense_mla_config();
  const Weights w = make_random_weights(cfg, DType::F32, 7, 2);
  const int64_t n = 300, V = cfg.vocab_size;
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) toks[size_t(i)] = int32_t((i * 37 + 5) % V);
  RefMla ref(w);
  std::vector<std::vector<double>> want;
  for (int64_t p = 0; p < n; ++p) want.push_back(ref.step(toks[size_t(p)], p));
  KernelContext ctx(2);
  // f32: float rounding only; f16 / Q8_0 latents: 11 / ~8 bits per element.
  for (const auto& [kvt, tol] : {std::pair{DType::F32, 1e-4}, std::pair{DType::F16, 1e-2}, std::pair{DType::Q8_0, 3e-2}}) {
    RunOptions ro;
    ro.kv_type = kvt;
    ro.max_batch = 128;
    Model step(w, ro), chunked(w, ro);
    ro.max_batch = 20;  // below Model::kMlaExpandRows: absorbed chunks
    Model small(w, ro);
    std::vector<float> all(size_t(n * V)), all_small(all.size());
    chunked.forward_all(ctx, toks.data(), n, 0, all.data());
    small.forward_all(ctx, toks.data(), n, 0, all_small.data());
    double worst_step = 0, worst_chunk = 0, worst_small = 0;
    for (int64_t p = 0; p < n; ++p) {
      worst_step = std::max(worst_step, rel_diff(step.forward(ctx, &toks[size_t(p)], 1, p), want[size_t(p)]));
      worst_chunk = std::max(worst_chunk, rel_diff(all.data() + p * V, want[size_t(p)]));
      worst_small = std::max(worst_small, rel_diff(all_small.data() + p * V, want[size_t(p)]));
    }
    EXPECT_LT(worst_step, tol) << "decode (absorbed), " << dtype_name(kvt) << " cache";
    EXPECT_LT(worst_chunk, tol) << "prefill in chunks of 128 (expanded), " << dtype_name(kvt) << " cache";
    EXPECT_LT(worst_small, tol) << "prefill in chunks of 20 (absorbed), " << dtype_name(kvt) << " cache";
  }
}

// The cache keeps (kv LoRA rank + rope) elements per token and layer, one array
// per layer (the values are the keys' first kv LoRA rank elements).
TEST(Mla, CacheHoldsOnlyTheLatent) {
  const ModelConfig cfg = dense_mla_config();
  KVCacheOptions o;
  o.n_blocks = 10, o.block_size = 32, o.type = DType::F16;
  KVCache cache(cfg, o);
  EXPECT_TRUE(cache.v_in_k());
  EXPECT_EQ(cache.kv_dim(), cfg.mla_kv_lora + cfg.mla_rope);
  EXPECT_EQ(cache.v(1), cache.k(1));
  EXPECT_EQ(cache.bytes(), size_t(cfg.n_layers * 10 * 32 * (128 + 32) * 2));
  EXPECT_EQ(cfg.kv_bytes_per_token(DType::F16), double(cfg.n_layers * (128 + 32) * 2));
  // What the expanded cache would hold: per head keys (96) and values (64).
  ModelConfig plain = synthetic_config("moe-tiny");
  KVCache pc(plain, o);
  EXPECT_FALSE(pc.v_in_k());
  EXPECT_EQ(pc.bytes(), size_t(plain.n_layers * 10 * 32 * plain.kv_dim() * 2 * 2));
}

// A dense latent-attention model, with and without a q LoRA, as DeepseekV2ForCausalLM
// (n_routed_experts null) and back: the same config and the same logits bit for bit.
TEST(Mla, HuggingFaceRoundTripOfDenseModels) {
  for (int64_t q_lora : {int64_t(192), int64_t(0)}) {
    ModelConfig cfg = dense_mla_config();
    cfg.mla_q_lora = q_lora;
    const Weights w = make_random_weights(cfg, DType::F32, 3, 2);
    const std::string dir = test::temp_path("mla_hf_" + std::to_string(q_lora));
    save_hf(w, dir);
    const Weights back = load_hf_weights(dir);
    EXPECT_EQ(back.cfg.mla_q_lora, q_lora);
    EXPECT_EQ(back.cfg.mla_kv_lora, cfg.mla_kv_lora);
    EXPECT_EQ(back.cfg.mla_rope, cfg.mla_rope);
    EXPECT_EQ(back.cfg.mla_v_dim, cfg.mla_v_dim);
    EXPECT_EQ(back.cfg.head_dim, cfg.head_dim);
    EXPECT_FALSE(back.cfg.is_moe());
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < 40; ++i) ids.push_back((i * 53 + 11) % int32_t(cfg.vocab_size));
    EXPECT_EQ(test::max_abs_diff(test::chunked_logits(w, ids, 40, 2), test::chunked_logits(back, ids, 40, 2)), 0.0)
        << "q LoRA " << q_lora;
    std::filesystem::remove_all(dir);
  }
}
