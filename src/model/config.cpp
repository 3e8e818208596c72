#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "core/rng.h"

namespace tessera {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::GPT2: return "gpt2";
  }
  return "?";
}

const char* attn_kind_name(AttnKind k) {
  switch (k) {
    case AttnKind::Full: return "full";
    case AttnKind::SlidingWindow: return "sliding";
    case AttnKind::Sparse: return "sparse";
  }
  return "?";
}

const char* ffn_act_name(FfnAct a) {
  switch (a) {
    case FfnAct::Default: return "default";
    case FfnAct::SwiGLU: return "swiglu";
    case FfnAct::GeGLU: return "geglu";
    case FfnAct::GELU: return "gelu";
    case FfnAct::ReLU: return "relu";
  }
  return "?";
}

FfnAct parse_ffn_act(const std::string& name, const std::string& where) {
  for (FfnAct a : {FfnAct::SwiGLU, FfnAct::GeGLU, FfnAct::GELU, FfnAct::ReLU})
    if (name == ffn_act_name(a)) return a;
  fail(where, ": feed-forward activation '", name, "' is not one of swiglu, geglu, gelu, relu");
}

const char* moe_gate_name(MoeGate g) { return g == MoeGate::Sigmoid ? "sigmoid" : "softmax"; }

const char* moe_routing_name(MoeRouting r) {
  switch (r) {
    case MoeRouting::Learned: return "learned";
    case MoeRouting::HashRandom: return "hash-random";
    case MoeRouting::HashBalanced: return "hash-balanced";
    case MoeRouting::HashBigram: return "hash-bigram";
    case MoeRouting::HashPrevToken: return "hash-prev-token";
    case MoeRouting::HashPosition: return "hash-position";
  }
  return "?";
}

MoeRouting parse_moe_routing(const std::string& name, const std::string& where) {
  for (MoeRouting r : {MoeRouting::Learned, MoeRouting::HashRandom, MoeRouting::HashBalanced, MoeRouting::HashBigram,
                       MoeRouting::HashPrevToken, MoeRouting::HashPosition})
    if (name == moe_routing_name(r)) return r;
  fail(where, ": expert routing '", name,
       "' is not one of learned, hash-random, hash-balanced, hash-bigram, hash-prev-token, hash-position");
}

void ModelConfig::set_moe_layers() {
  if (moe_experts <= 0) return;
  if (layer_cfg.empty()) layer_cfg.resize(size_t(std::max<int64_t>(n_layers, 0)));
  for (int64_t l = 0; l < int64_t(layer_cfg.size()); ++l)
    layer_cfg[size_t(l)].ffn =
        l >= moe_first_dense && moe_every > 0 && (l + 1) % moe_every == 0 ? FfnKind::MoE : FfnKind::Dense;
}

std::string ModelConfig::router_desc() const {
  if (!is_moe()) return "";
  if (moe_hashed()) {
    char buf[48];
    std::snprintf(buf, sizeof buf, " -> weights %g each", double(moe_scale) / double(moe_used));
    return std::string(moe_routing_name(moe_routing)) + " -> " + std::to_string(moe_used) + " experts" + buf;
  }
  std::string s = std::string(moe_gate_name(moe_gate)) + " -> top-" + std::to_string(moe_used) +
                  (moe_score_bias ? " by score + bias" : "") +
                  (moe_norm_topk ? " -> renormalise" : " -> no renormalisation");
  if (moe_scale != 1.f) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " -> x%g", double(moe_scale));
    s += buf;
  }
  return s;
}

int64_t LayerConfig::random_key(int64_t b, int64_t t) const {
  const uint64_t h = splitmix64(seed ^ (uint64_t(b) * 0x9e3779b97f4a7c15ull) ^ (uint64_t(t + 1) * 0xbf58476d1ce4e5b9ull));
  return int64_t(h % uint64_t(b * kRandomBlock));
}

bool LayerConfig::sees(int64_t i, int64_t j, int64_t h) const {
  if (j > i || j < first_key(i)) return false;
  if (attn != AttnKind::Sparse) return true;
  if (j < global || i < global) return true;
  const int64_t d = i - j;
  if (h < 0 && !head_dilation.empty()) {
    for (int32_t dh : head_dilation)
      if (d % dh == 0 && d / dh < window) return true;
  } else if (const int64_t dh = dilation_of(h); d % dh == 0 && d / dh < window) {
    return true;
  }
  const int64_t b = i / kRandomBlock;
  if (b > 0 && j < b * kRandomBlock)
    for (int64_t t = 0; t < random; ++t)
      if (random_key(b, t) == j) return true;
  return false;
}

int64_t LayerConfig::visible_keys(int64_t i, int64_t* out, int64_t h) const {
  const int64_t dilation = dilation_of(h);
  int64_t n = 0;
  if (attn != AttnKind::Sparse || i < global) {  // a contiguous range
    for (int64_t j = first_key(i); j <= i; ++j) out[n++] = j;
    return n;
  }
  for (int64_t j = 0; j < global; ++j) out[n++] = j;
  const int64_t b = i / kRandomBlock;
  if (b > 0)
    for (int64_t t = 0; t < random; ++t)
      if (const int64_t j = random_key(b, t); j >= global) out[n++] = j;
  for (int64_t k = std::min(window - 1, i / dilation); k >= 0; --k)
    if (const int64_t j = i - k * dilation; j >= global) out[n++] = j;
  std::sort(out + global, out + n);
  return int64_t(std::unique(out, out + n) - out);
}

bool ModelConfig::has_sparse_attention() const {
  for (const auto& l : layer_cfg)
    if (l.attn == AttnKind::Sparse) return true;
  return false;
}

bool ModelConfig::has_sliding_window() const {
  for (const auto& l : layer_cfg)
    if (l.attn == AttnKind::SlidingWindow) return true;
  return false;
}

int64_t ModelConfig::common_window(const std::string& where) const {
  int64_t w = 0;
  for (size_t l = 0; l < layer_cfg.size(); ++l) {
    if (layer_cfg[l].attn != AttnKind::SlidingWindow) continue;
    if (w != 0 && layer_cfg[l].window != w)
      fail(where, ": layers use sliding windows of ", w, " and ", layer_cfg[l].window,
           " positions; this format holds one window for the model");
    w = layer_cfg[l].window;
  }
  return w;
}

std::vector<LayerConfig> sliding_window_layers(int64_t window, const std::vector<bool>& slides) {
  bool any = false;
  for (bool x : slides) any = any || x;
  if (!any) return {};
  if (window < 1) fail("sliding window must be at least 1 position, got ", window);
  std::vector<LayerConfig> r(slides.size());
  for (size_t l = 0; l < slides.size(); ++l)
    if (slides[l]) r[l].attn = AttnKind::SlidingWindow, r[l].window = window;
  return r;
}

std::vector<bool> select_layers(int64_t n_layers, const std::string& which, const std::string& what) {
  std::vector<bool> sel(size_t(std::max<int64_t>(n_layers, 0)), false);
  if (which == "all" || which == "even" || which == "odd") {
    for (int64_t l = 0; l < n_layers; ++l) sel[size_t(l)] = which == "all" || (l % 2 == 0) == (which == "even");
    return sel;
  }
  const auto bad = [&](const std::string&) {
    fail(what, " layers '", which, "': expected all, even, odd or a comma-separated list of layer indices");
  };
  for (int64_t l : int_list(which, bad)) {
    if (l < 0 || l >= n_layers) fail(what, " layer ", l, " does not exist (", n_layers, " layers)");
    sel[size_t(l)] = true;
  }
  return sel;
}

std::vector<int64_t> int_list(const std::string& s, const std::function<void(const std::string&)>& bad) {
  std::vector<int64_t> out;
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(',', at);
    if (comma == std::string::npos) comma = s.size();
    const std::string item = s.substr(at, comma - at);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0') bad(item);
    out.push_back(v);
    at = comma + 1;
  }
  return out;
}

std::vector<LayerConfig> sliding_window_layers(int64_t n_layers, int64_t window, const std::string& which) {
  if (window < 1) fail("sliding window must be at least 1 position, got ", window);
  return sliding_window_layers(window, select_layers(n_layers, which, "sliding-window"));
}

std::vector<LayerConfig> sparse_attention_layers(int64_t n_layers, const LayerConfig& pattern, const std::string& which,
                                                 uint64_t seed) {
  const std::vector<bool> sel = select_layers(n_layers, which, "sparse-attention");
  std::vector<LayerConfig> r(sel.size());
  for (size_t l = 0; l < sel.size(); ++l)
    if (sel[l]) {
      r[l] = pattern;
      r[l].attn = AttnKind::Sparse;
      r[l].seed = uint32_t(splitmix64(seed ^ (uint64_t(l + 1) * 0x2545f4914f6cdd1dull)));  // each layer its own keys
    }
  return r;
}

void ModelConfig::validate(const std::string& where) const {
  auto pos = [&](const char* field, int64_t v) {
    if (v <= 0) fail(where, ": ", field, " must be positive, got ", v);
  };
  pos("dim", dim);
  pos("n_layers", n_layers);
  pos("n_heads", n_heads);
  pos("n_kv_heads", n_kv_heads);
  pos("head_dim", head_dim);
  pos("hidden_dim", hidden_dim);
  pos("vocab_size", vocab_size);
  pos("max_seq_len", max_seq_len);
  if (n_heads % n_kv_heads != 0)
    fail(where, ": n_heads (", n_heads, ") is not a multiple of n_kv_heads (", n_kv_heads, ")");
  if (head_dim % 2 != 0 && arch == Arch::Llama) fail(where, ": head_dim (", head_dim, ") must be even for RoPE");
  if (!(norm_eps > 0.f)) fail(where, ": norm_eps must be positive, got ", norm_eps);
  if (arch == Arch::Llama && !(rope_theta > 0.f)) fail(where, ": rope_theta must be positive, got ", rope_theta);
  if (!rope_freq_factors.empty()) {
    if (arch != Arch::Llama) fail(where, ": RoPE frequency scaling is supported for the llama family only");
    if (int64_t(rope_freq_factors.size()) != rope_dims() / 2)
      fail(where, ": RoPE frequency scaling has ", rope_freq_factors.size(), " divisors, rotary dims / 2 = ",
           rope_dims() / 2);
    for (size_t i = 0; i < rope_freq_factors.size(); ++i)
      if (!(rope_freq_factors[i] > 0.f) || !std::isfinite(rope_freq_factors[i]))
        fail(where, ": RoPE frequency divisor ", i, " must be positive and finite, got ", rope_freq_factors[i]);
  }
  if (attn_softcap < 0.f || final_softcap < 0.f) fail(where, ": soft-caps must be >= 0");
  if (qk_norm && arch != Arch::Llama) fail(where, ": qk_norm is supported for the llama family only");
  if (!layer_cfg.empty() && int64_t(layer_cfg.size()) != n_layers)
    fail(where, ": ", layer_cfg.size(), " per-layer configs for ", n_layers, " layers");
  for (size_t l = 0; l < layer_cfg.size(); ++l) {
    const LayerConfig& lc = layer_cfg[l];
    if (lc.attn == AttnKind::SlidingWindow && lc.window < 1)
      fail(where, ": layer ", l, ": the sliding window must be at least 1 position, got ", lc.window);
    if (lc.attn != AttnKind::Sparse) continue;
    if (lc.window < 1) fail(where, ": layer ", l, ": the sparse pattern's window must be at least 1 key, got ", lc.window);
    if (lc.dilation < 1) fail(where, ": layer ", l, ": the dilation must be at least 1, got ", lc.dilation);
    if (lc.global < 0 || lc.random < 0)
      fail(where, ": layer ", l, ": global positions and random keys must be >= 0, got ", lc.global, " and ", lc.random);
    if (lc.window > (int64_t(1) << 24) || lc.dilation > (int64_t(1) << 24) || lc.global > (int64_t(1) << 24) ||
        lc.random > 4096)
      fail(where, ": layer ", l, ": sparse pattern sizes out of range");
    if (!lc.head_dilation.empty()) {
      if (int64_t(lc.head_dilation.size()) != n_heads)
        fail(where, ": layer ", l, ": ", lc.head_dilation.size(), " per-head dilations for ", n_heads, " query heads");
      int64_t mx = 0;
      for (int32_t d : lc.head_dilation) {
        if (d < 1 || d > (1 << 24)) fail(where, ": layer ", l, ": a head's dilation must be in [1, 2^24], got ", d);
        mx = std::max<int64_t>(mx, d);
      }
      if (lc.dilation != mx)
        fail(where, ": layer ", l, ": the layer's dilation ", lc.dilation, " is not its heads' largest, ", mx);
    }
    if (mla()) fail(where, ": sparse attention patterns with latent attention (MLA) are not supported");
  }
  {
    const FfnAct a = activation();
    const bool gated = a == FfnAct::SwiGLU || a == FfnAct::GeGLU;
    if (gated != gated_ffn())
      fail(where, ": ", arch_name(arch), " has a", gated_ffn() ? " gated feed-forward (swiglu, geglu)" : "n ungated feed-forward (gelu, relu)",
           "; got ", ffn_act_name(a));
  }
  if (mla()) {
    if (arch != Arch::Llama) fail(where, ": latent attention (MLA) is supported for the llama family only");
    if (mla_rope <= 0 || mla_rope % 2 != 0 || mla_rope >= head_dim)
      fail(where, ": MLA rotary dims (rope.dimension_count) must be even and below the key length ", head_dim,
           ", got ", mla_rope);
    pos("MLA value_length", mla_v_dim);
    if (mla_v_dim > head_dim)
      fail(where, ": MLA value_length (", mla_v_dim, ") above the key length (", head_dim, ") is not supported");
    if (mla_q_lora < 0) fail(where, ": MLA q_lora_rank must be >= 0, got ", mla_q_lora);
    if (n_kv_heads != n_heads) fail(where, ": MLA has one K/V head per query head (head_count_kv ", n_kv_heads,
                                    ", head_count ", n_heads, ")");
    if (qk_norm || qkv_bias) fail(where, ": MLA with QK-norm or q/k/v biases is not supported");
  }
  if (mtp_depth < 0) fail(where, ": multi-token prediction depth must be >= 0, got ", mtp_depth);
  if (mtp_depth > 0 && (arch != Arch::Llama || mla() || post_norms || norm_placement != NormPlacement::Pre))
    fail(where, ": multi-token prediction modules are supported on pre-norm llama-family blocks without latent "
                "attention or sandwich norms");
  if (is_moe()) {
    if (arch != Arch::Llama) fail(where, ": mixture-of-experts is supported for the llama family only");
    pos("moe_used (expert_used_count)", moe_used);
    pos("moe_hidden (expert feed-forward width)", moe_hidden);
    if (moe_used > moe_experts)
      fail(where, ": expert_used_count (", moe_used, ") exceeds expert_count (", moe_experts, ")");
    if (moe_shared_hidden < 0) fail(where, ": shared expert width must be >= 0, got ", moe_shared_hidden);
    if (moe_first_dense < 0 || moe_first_dense > n_layers)
      fail(where, ": leading dense layers (", moe_first_dense, ") must be in [0, ", n_layers, "]");
    if (!(moe_scale > 0.f) || !std::isfinite(moe_scale))
      fail(where, ": expert_weights_scale must be positive, got ", moe_scale);
    if (moe_shared_gate && moe_shared_hidden == 0) fail(where, ": a shared-expert gate without a shared expert");
    if (moe_every < 1) fail(where, ": MoE layer step (moe_every) must be >= 1, got ", moe_every);
    if (moe_hashed() && moe_score_bias) fail(where, ": a hash-routed model has no router, so no selection bias");
    const bool table = moe_routing == MoeRouting::HashBalanced;
    if (!table && !moe_hash_table.empty())
      fail(where, ": an expert hash table is given but the routing is ", moe_routing_name(moe_routing));
    if (table) {
      if (int64_t(moe_hash_table.size()) != vocab_size * moe_used)
        fail(where, ": the hash-balanced expert table holds ", moe_hash_table.size(), " entries; vocab_size x top-k is ",
             vocab_size * moe_used);
      for (int64_t t = 0; t < vocab_size; ++t)
        for (int64_t i = 0; i < moe_used; ++i) {
          const int32_t e = moe_hash_table[size_t(t * moe_used + i)];
          if (e < 0 || e >= moe_experts)
            fail(where, ": the expert hash table sends token ", t, " to expert ", e, " (experts are 0..", moe_experts - 1, ")");
          for (int64_t j = 0; j < i; ++j)
            if (moe_hash_table[size_t(t * moe_used + j)] == e)
              fail(where, ": the expert hash table sends token ", t, " to expert ", e, " twice");
        }
    }
  }
  for (size_t l = 0; l < layer_cfg.size(); ++l)
    if (layer_cfg[l].ffn == FfnKind::MoE && !is_moe())
      fail(where, ": layer ", l, " is mixture-of-experts but the model has no experts");
  if (arch == Arch::GPT2 && n_kv_heads != n_heads)
    fail(where, ": gpt2 has n_kv_heads == n_heads, got ", n_kv_heads, " vs ", n_heads);
}

}  // namespace tessera
