// LoRA adapters (Hu et al., 2021) on a frozen base model:
//   h = W0 x + (alpha / r) B (A x),   A (r, in) Gaussian, B (out, r) zero,
// so a fresh adapter computes the base model exactly and only A and B train.
// The adapter's parameters live in their own flat buffer (LoraLayout), apart
// from the base's (train/params.h Layout); train/transformer.h applies them
// to the linear layers they target. Tensor names follow llama.cpp's GGUF LoRA
// adapters ("blk.3.attn_q.weight.lora_a"); the PEFT (Hugging Face) names are
// lora_hf_name's.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/lora_adapter.h"
#include "train/params.h"

namespace tessera::train {

// The linear layers an adapter can target. Llama family: q k v o gate up down;
// GPT-2 family: its fused qkv projection (any of q, k, v selects it), o, up, down.
enum class LoraSite : int { Q, K, V, Qkv, O, Gate, Up, Down };
constexpr int kLoraSites = 8;

// The adapter of a fine-tuning run, one kind per run:
// - LoRA (rank > 0);
// - prefix tuning (prefix_len > 0; Li & Liang, 2021): per layer, prefix_len learned key and
//   value rows that every query attends to, before position 0 and without RoPE; the tokens
//   then sit at positions prefix_len, ... (as Hugging Face PEFT runs them);
// - bottleneck adapters (adapter_dim > 0; Houlsby et al., 2019): after a sublayer's output
//   projection, y <- y + W_up act(W_down y + b_down) + b_up (W_down (m, C), W_up (C, m) zero
//   at the start, so step 0 is the base model), on the attention (Houlsby), the feed-forward
//   (Pfeiffer) or both.
struct LoraConfig {
  int64_t rank = 0;        // r (0: no LoRA)
  float alpha = 0.f;       // the update is scaled by alpha / r (alpha 0: alpha = r, scale 1)
  float dropout = 0.f;     // dropout on the adapter's input (training steps only)
  uint32_t targets = 0;    // bit (1 << LoraSite) per targeted layer
  int64_t prefix_len = 0;  // prefix tuning: learned K/V rows per layer (0: none)
  int64_t adapter_dim = 0;  // bottleneck adapters: the bottleneck width m (0: none)
  bool adapter_gelu = false;  // their activation: GELU (tanh), else ReLU
  uint32_t adapter_sites = 3;  // bit 0: after the attention, bit 1: after the feed-forward
  // QLoRA-style: the frozen base's matrices stay in their stored type (Q4_0, Q8_0, K-quants, f16, ...),
  // run by the inference kernels (Transformer::set_frozen_weights), instead of being widened to f32.
  bool quantized_base = false;
  bool enabled() const { return rank > 0 || prefix_len > 0 || adapter_dim > 0; }
  bool prefix() const { return prefix_len > 0; }
  bool bottleneck() const { return adapter_dim > 0; }
  float scale() const { return (alpha > 0.f ? alpha : float(rank)) / float(rank); }
  bool targets_site(LoraSite s) const { return (targets >> int(s)) & 1u; }
};

// "q,k,v,o,gate,up,down" (or "all", or "attn" = q,k,v,o, "mlp" = gate,up,down) -> target bits.
// Error naming the unknown name.
uint32_t parse_lora_targets(const std::string& list);
std::string lora_targets_string(uint32_t targets);
const char* lora_site_name(LoraSite s);  // "q", ..., "qkv", ...
nlohmann::json lora_to_json(const LoraConfig& c);
LoraConfig lora_from_json(const nlohmann::json& j, const std::string& where);  // Error naming the field

struct LoraLayout {
  struct Site {
    size_t a = kAbsent, b = kAbsent;  // offsets of A (r, in) and B (out, r); kAbsent: not adapted
    int64_t in = 0, out = 0;
    std::string base;                 // the base tensor's GGUF name ("blk.3.attn_q.weight")
  };
  ModelConfig cfg;
  LoraConfig lora;
  std::vector<std::array<Site, kLoraSites>> layers;
  // Prefix tuning: per layer the offsets of its keys and values, (prefix_len, prefix_dim) each
  // ("blk.N.attn_k_prefix", "blk.N.attn_v_prefix"); prefix_dim = the model's K/V width.
  std::vector<std::pair<size_t, size_t>> prefix;
  int64_t prefix_dim = 0;
  // Bottleneck adapters: per layer, [attention, feed-forward] offsets ("blk.N.attn_adapter_down.weight"
  // (m, C), ".bias" (m), "blk.N.attn_adapter_up.weight" (C, m), ".bias" (C); ffn_adapter_*), kAbsent: none.
  struct Bottleneck {
    size_t down = kAbsent, down_b = kAbsent, up = kAbsent, up_b = kAbsent;
  };
  std::vector<std::array<Bottleneck, 2>> bottleneck;
  std::vector<ParamInfo> tensors;  // "<base>.lora_a" (r, in), "<base>.lora_b" (out, r), in layer order
  size_t total = 0;                // elements of the adapter buffer (tensors on kAlign boundaries)
  size_t n_params = 0;

  // Error when a target does not exist in this architecture (gate on GPT-2) or
  // nothing is targeted. Mixture-of-experts layers take the attention targets only.
  // Prefix tuning: Error for models it cannot run on (latent attention, hash routing,
  // multi-token prediction), or with LoRA in the same run.
  LoraLayout(const Layout& base, const LoraConfig& lora);
  const Site& site(int64_t layer, LoraSite s) const { return layers[size_t(layer)][size_t(s)]; }

 private:
  size_t add_tensor(const std::string& name, std::vector<int64_t> shape);  // its offset (kAlign-aligned)
};

// A ~ N(0, 1 / r^2) (PEFT's "gaussian" initialisation), B = 0: deterministic from seed.
// Prefix rows are zeroed (the Trainer sets them: init_prefix). Bottleneck adapters:
// W_down ~ N(0, 1 / C), W_up and the biases zero.
void init_lora(const LoraLayout& LL, float* a, uint64_t seed);

// W += mult * (alpha / r) B A for every adapted matrix of the f32 base buffer p (layout L).
void merge_lora(const Layout& L, const LoraLayout& LL, const float* a, float* p, float mult = 1.f);

// The adapter as a file-format-neutral LoraAdapter (formats/lora_adapter.h), to write
// as a GGUF LoRA or PEFT directory; the inverse fills a (LL.total) from one.
LoraAdapter to_adapter(const LoraLayout& LL, const float* a);
// A prefix-tuning run's prefix (LL.lora.prefix_len > 0) as the engine's KvPrefix.
KvPrefix to_prefix(const LoraLayout& LL, const float* a);
// A bottleneck-adapter run's adapters as the engine's BottleneckAdapter.
BottleneckAdapter to_bottleneck(const LoraLayout& LL, const float* a);
// "attn,ffn" / "attn" / "ffn" <-> adapter_sites bits. Error naming an unknown site.
uint32_t parse_adapter_sites(const std::string& list);
std::string adapter_sites_string(uint32_t sites);

}  // namespace tessera::train
