// One runtime config for every supported architecture, read from the weights file.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/ops.h"

namespace tessera {

enum class Arch { Llama, GPT2 };
const char* arch_name(Arch a);

// What one layer is: its attention kind and its feed-forward kind, with their
// sizes. The kinds grow with the architectures (dilated / global attention and
// MLA, mixture-of-experts feed-forward: the attention and MoE issues).
enum class AttnKind : uint8_t {
  Full,           // causal over every earlier position
  SlidingWindow,  // causal over the last `window` positions (the query's own included)
  // Sparse patterns (LayerConfig::sees): a dilated window (Longformer), global positions
  // and random keys per block of queries (BigBird), causal. Trained by Tessera only.
  Sparse,
};
enum class FfnKind : uint8_t {
  Dense,  // one feed-forward of hidden_dim
  MoE,    // mixture of experts: a router picks moe_used of moe_experts (+ shared experts); model/moe.cpp
};
// How a mixture-of-experts router turns its logits r(E) into expert weights:
// p = softmax(r) or sigmoid(r) elementwise; the moe_used experts of largest
// p (+ the per-expert selection bias when the layer has one) are selected;
// their weights are the unbiased p, divided by their sum when moe_norm_topk,
// times moe_scale. Mixtral = softmax + norm (== softmax over the selected
// logits: "topk-softmax"), Qwen2-MoE / DeepSeek-V2 = softmax without norm
// ("softmax-topk"), DeepSeek-V3 = sigmoid + bias + norm.
enum class MoeGate : uint8_t { Softmax, Sigmoid };
const char* moe_gate_name(MoeGate g);
// Which experts a token goes to. Learned: the router above. Hash routing (Roller
// et al., "Hash Layers"; no router tensor, no router losses): the k experts come
// from a fixed function of the token (model/moe_hash.h) and each weighs
// moe_scale / k. HashRandom: a hash of the token id; HashBalanced: a table
// (ModelConfig::moe_hash_table) that gives token ids to experts by their
// frequency in the training data, so expert loads are even; HashBigram: a hash
// of (previous token, token); HashPrevToken: of the previous token; HashPosition:
// of the position. The previous token of position 0 is "none".
enum class MoeRouting : uint8_t { Learned, HashRandom, HashBalanced, HashBigram, HashPrevToken, HashPosition };
const char* moe_routing_name(MoeRouting r);  // "learned", "hash-random", ...
MoeRouting parse_moe_routing(const std::string& name, const std::string& where);  // Error naming the value
// The feed-forward activation. Gated (Llama family: down(act(gate x) * up x)):
// SwiGLU (silu), GeGLU (tanh-approximated GELU, Gemma's). Ungated with biases
// (GPT-2 family: down(act(up x + b1)) + b2): GELU (tanh approximation), ReLU
// (the original Transformer's max(0, .)). Default: the architecture's own.
enum class FfnAct : uint8_t { Default, SwiGLU, GeGLU, GELU, ReLU };
const char* ffn_act_name(FfnAct a);
// Where a block's norms sit. Pre (today's LLMs): x + sublayer(norm(x)). Post
// (the original Transformer): norm(x + sublayer(x)), with the same norm
// tensors (attn_norm after attention, ffn_norm after the feed-forward).
enum class NormPlacement : uint8_t { Pre, Post };  // "swiglu", "geglu", "gelu", "relu"
FfnAct parse_ffn_act(const std::string& name, const std::string& where);  // Error naming the value
struct LayerConfig {
  AttnKind attn = AttnKind::Full;
  int64_t window = 0;  // SlidingWindow: positions a query sees, itself included (>= 1); Sparse: keys of the dilated window
  FfnKind ffn = FfnKind::Dense;
  // Sparse: query i sees key j <= i when
  //   i - j = k x dilation for some k < window (the dilated window: receptive field window x dilation),
  //   or j < global or i < global (the first `global` positions attend to all and all attend to them),
  //   or j is one of the `random` keys of i's block of kRandomBlock queries (random_key: before the
  //   block, fixed by `seed`).
  int64_t dilation = 1, global = 0, random = 0;
  uint32_t seed = 0;
  // Sparse: one dilation per query head (Longformer's multi-head dilation: heads with small
  // dilations keep the local context, those with large ones reach far back); empty: `dilation`
  // for every head. When set, `dilation` is their largest (first_key, receptive_field).
  std::vector<int32_t> head_dilation;
  int64_t dilation_of(int64_t h) const { return h < 0 || head_dilation.empty() ? dilation : head_dilation[size_t(h)]; }
  static constexpr int64_t kRandomBlock = 16;
  bool operator==(const LayerConfig&) const = default;
  // First key position a query at position pos attends to.
  int64_t first_key(int64_t pos) const {
    if (attn == AttnKind::Sparse) {
      if (global > 0 || random > 0) return 0;
      return std::max<int64_t>(0, pos - (window - 1) * dilation);
    }
    return attn == AttnKind::SlidingWindow && pos >= window ? pos - window + 1 : 0;
  }
  // Whether query head h at position i sees the key at j (j <= i); h < 0: whether any head does.
  bool sees(int64_t i, int64_t j, int64_t h = -1) const;
  // Random key t (< random) of query block b (> 0): a position in [0, b kRandomBlock).
  int64_t random_key(int64_t b, int64_t t) const;
  // The keys query head h at position i sees, ascending, into out (room for visible_bound(i + 1));
  // returns how many. h < 0: with `dilation` (every head's keys when head_dilation is empty).
  int64_t visible_keys(int64_t i, int64_t* out, int64_t h = -1) const;
  // Room visible_keys needs for any position below n_pos.
  int64_t visible_bound(int64_t n_pos) const {
    return attn == AttnKind::Sparse ? std::min(global, n_pos) + std::min(window, n_pos) + random : n_pos;
  }
  int64_t receptive_field() const { return attn == AttnKind::Sparse ? window * dilation : window; }
  // Positions a query reads back to, itself included (keys [pos - kv_window() + 1, pos]): a sliding
  // window's, a dilated window's without global or random keys; 0 for every earlier position.
  int64_t kv_window() const {
    if (attn == AttnKind::SlidingWindow) return window;
    return attn == AttnKind::Sparse && global == 0 && random == 0 ? (window - 1) * dilation + 1 : 0;
  }
};
const char* attn_kind_name(AttnKind k);
// Per-layer configs with sliding-window attention of `window` positions on the
// layers `which` names: "all", "even" (0, 2, ...: Gemma 2's), "odd", or a
// comma-separated list of layer indices; full attention elsewhere. Error
// naming the value on a bad one.
std::vector<LayerConfig> sliding_window_layers(int64_t n_layers, int64_t window, const std::string& which);
// The layers `which` names (as above) true; `what` names the option in errors.
std::vector<bool> select_layers(int64_t n_layers, const std::string& which, const std::string& what);
// The integers of a comma-separated list; bad(item) is called, and must throw, for an item that is not one.
std::vector<int64_t> int_list(const std::string& s, const std::function<void(const std::string&)>& bad);
// Sparse attention (AttnKind::Sparse with pattern's window / dilation / global / random) on the
// layers `which` names, each with its own random-key seed derived from seed; full elsewhere.
std::vector<LayerConfig> sparse_attention_layers(int64_t n_layers, const LayerConfig& pattern, const std::string& which,
                                                 uint64_t seed);
// The same from one flag per layer (true: sliding); all false gives an empty
// list (every layer the default).
std::vector<LayerConfig> sliding_window_layers(int64_t window, const std::vector<bool>& slides);

struct ModelConfig {
  Arch arch = Arch::Llama;
  int64_t dim = 0;          // model width C
  int64_t n_layers = 0;
  int64_t n_heads = 0;      // query heads
  int64_t n_kv_heads = 0;   // key/value heads (GQA when < n_heads; MQA when 1)
  int64_t head_dim = 0;     // usually dim / n_heads
  int64_t hidden_dim = 0;   // FFN width
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;  // trained context (GPT-2: number of learned positions)
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  ops::RopeStyle rope_style = ops::RopeStyle::Interleaved;
  // RoPE frequency scaling (formats/rope_scaling.h): frequency i is divided by
  // rope_freq_factors[i], head_dim / 2 values; empty = unscaled. Llama 3.x's
  // "llama3" and linear position interpolation both take this form.
  std::vector<float> rope_freq_factors;
  bool tied_embeddings = true;
  bool qkv_bias = false;    // Qwen2-style biases on q/k/v projections (Llama family)
  bool qk_norm = false;     // RMSNorm (gains of head_dim) on each query and key head before RoPE
  float attn_softcap = 0.f;   // attention scores -> cap * tanh(s / cap) when > 0
  float attn_scale = 0.f;     // q . k scale; 0: 1 / sqrt(head_dim)
  float embed_scale = 0.f;    // token embeddings times this when > 0 (Gemma: sqrt(dim))
  // Sandwich norms (Gemma 2): RMSNorm of the attention output and of the feed-forward
  // output before each is added to the residual stream (post_attn_norm / post_ffn_norm).
  bool post_norms = false;
  float final_softcap = 0.f;  // output logits -> cap * tanh(l / cap) when > 0
  std::string name;         // free-form (file's general.name)
  // Per-layer configuration; empty: every layer is the default LayerConfig
  // (full attention, dense feed-forward). Otherwise n_layers entries.
  std::vector<LayerConfig> layer_cfg;
  FfnAct ffn_act = FfnAct::Default;
  NormPlacement norm_placement = NormPlacement::Pre;
  // Multi-head latent attention (DeepSeek-V2/V3, when mla_kv_lora > 0; model/mla.cpp):
  // q = q_b(rms(q_a x)) (or attn_q x without a q LoRA), [c | k_pe] = kv_a x,
  // [k_nope | v] per head = kv_b(rms(c)); head_dim = key length (nope + rope), RoPE on
  // each head's last mla_rope dims and on the k_pe all heads share. The KV cache holds
  // only [c | k_pe] per token (the absorbed form: cache_k_dim() below).
  int64_t mla_q_lora = 0;   // q LoRA rank (0: a plain attn_q)
  int64_t mla_kv_lora = 0;  // compressed KV width
  int64_t mla_rope = 0;     // rotary dims per head (qk_rope_head_dim)
  int64_t mla_v_dim = 0;    // value dims per head (v_head_dim)
  // Mixture-of-experts (layers whose LayerConfig::ffn is MoE; set_moe_layers()).
  int64_t moe_experts = 0;       // routed experts E (0: a dense model)
  int64_t moe_used = 0;          // experts selected per token k
  int64_t moe_hidden = 0;        // each routed expert's feed-forward width
  int64_t moe_shared_hidden = 0; // the shared expert's width (0: none)
  int64_t moe_first_dense = 0;   // leading layers that stay dense (DeepSeek)
  int64_t moe_every = 1;         // of the rest, layers l with (l + 1) % moe_every == 0 are MoE (Qwen2-MoE's decoder_sparse_step)
  MoeGate moe_gate = MoeGate::Softmax;
  bool moe_norm_topk = false;    // selected weights divided by their sum
  float moe_scale = 1.f;         // selected weights multiplied by this
  bool moe_shared_gate = false;  // the shared expert's output times sigmoid(g . x) (Qwen2-MoE)
  bool moe_score_bias = false;   // a per-expert bias added to the scores for selection only (DeepSeek-V3)
  MoeRouting moe_routing = MoeRouting::Learned;
  // Multi-token prediction (DeepSeek-V3's sequential MTP modules; training: train/mtp.cpp):
  // mtp_depth extra blocks after the n_layers of the model, each a plain dense block
  // (layers n_layers .. n_blocks() - 1). Module k maps the previous depth's hidden state h
  // and the embedding of the token k ahead to W_k [enorm(emb); hnorm(h)], runs its block,
  // and predicts the token k + 1 ahead through its own norm and the shared output head.
  // The engine's forward runs the first n_layers only.
  int64_t mtp_depth = 0;
  // HashBalanced: token id t goes to experts moe_hash_table[t k .. t k + k) (vocab_size x k, distinct per token).
  std::vector<int32_t> moe_hash_table;

  // Throws Error naming the field when sizes are zero/negative or do not divide.
  void validate(const std::string& where) const;
  const LayerConfig& layer(int64_t l) const {  // layers past layer_cfg (MTP blocks): full attention, dense
    static const LayerConfig kDefault;
    return l < int64_t(layer_cfg.size()) ? layer_cfg[size_t(l)] : kDefault;
  }
  int64_t n_blocks() const { return n_layers + mtp_depth; }  // blocks with tensors: the layers, then the MTP modules
  bool mtp_block(int64_t l) const { return l >= n_layers; }
  bool has_sliding_window() const;
  bool has_sparse_attention() const;  // a layer of AttnKind::Sparse
  // Whether the blocks are Gemma 2's: sandwich norms, embeddings x sqrt(dim), GeGLU,
  // no experts, biases, QK-norm or latent attention (what gemma2 / Gemma2ForCausalLM imply).
  bool gemma2_block() const {
    return post_norms && embed_scale == std::sqrt(float(dim)) && activation() == FfnAct::GeGLU && !is_moe() &&
           !qkv_bias && !qk_norm && !mla();
  }
  bool is_moe() const { return moe_experts > 0; }
  bool moe_hashed() const { return is_moe() && moe_routing != MoeRouting::Learned; }  // no router tensor
  bool mla() const { return mla_kv_lora > 0; }
  // Dims of a head that RoPE rotates: its last rope_dims() (all but MLA's nope part).
  int64_t rope_dims() const { return mla() ? mla_rope : head_dim; }
  // Width of the attention output the output projection reads (MLA: n_heads x v_head_dim).
  int64_t attn_out_dim() const { return mla() ? n_heads * mla_v_dim : q_dim(); }
  bool moe_layer(int64_t l) const { return layer(l).ffn == FfnKind::MoE; }
  // Marks layers l >= moe_first_dense with (l + 1) % moe_every == 0 MoE when
  // moe_experts > 0 (layer_cfg grows to n_layers entries); call after the attention kinds are set.
  void set_moe_layers();
  // Parameters a token reaches: every tensor except the unselected routed experts.
  int64_t active_params() const;
  // "softmax -> top-2 -> renormalise", the router's order of operations.
  std::string router_desc() const;
  // ffn_act with Default resolved: SwiGLU (Llama family), GELU (GPT-2).
  FfnAct activation() const {
    return ffn_act != FfnAct::Default ? ffn_act : arch == Arch::GPT2 ? FfnAct::GELU : FfnAct::SwiGLU;
  }
  bool gated_ffn() const { return arch != Arch::GPT2; }
  // The one window every sliding-window layer uses (file formats hold one), 0
  // when no layer slides; Error when the layers' windows differ.
  int64_t common_window(const std::string& where) const;
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  // What a layer's KV cache rows hold and the attention kernels see: cache_kv_heads()
  // heads of cache_k_dim() key elements, whose values are cache_v_dim() elements,
  // read from separate value rows, or (cache_v_in_k()) from the first cache_v_dim()
  // elements of the key rows, no value rows stored. Plain: n_kv_heads heads of
  // head_dim. MLA, absorbed (model/mla.cpp): one head shared by every query head,
  // key [c | k_pe] (kv LoRA rank + rope), value c: (d_c + d_h^R) per token and layer.
  int64_t cache_kv_heads() const { return mla() ? 1 : n_kv_heads; }
  int64_t cache_k_dim() const { return mla() ? mla_kv_lora + mla_rope : head_dim; }
  int64_t cache_v_dim() const { return mla() ? mla_kv_lora : head_dim; }
  bool cache_v_in_k() const { return mla(); }
  int64_t cache_kv_dim() const { return cache_kv_heads() * cache_k_dim(); }  // elements of a cached key row
  // Elements of the query rows and of the output rows of attention (n_heads of each).
  int64_t cache_q_dim() const { return n_heads * cache_k_dim(); }
  int64_t cache_out_dim() const { return n_heads * cache_v_dim(); }
  // KV cache bytes one token takes over all layers, with elements of type t.
  double kv_bytes_per_token(DType t) const {
    return double(cache_v_in_k() ? 1 : 2) * double(n_layers) * double(dtype_row_bytes(t, cache_kv_dim()));
  }
  float attention_scale() const { return attn_scale > 0.f ? attn_scale : 1.f / std::sqrt(float(head_dim)); }
  int64_t q_dim() const { return n_heads * head_dim; }
  // rope_freq_factors as the divisor array ops::rope_tables takes (null when unscaled).
  const float* rope_freq_div() const { return rope_freq_factors.empty() ? nullptr : rope_freq_factors.data(); }
};

}  // namespace tessera
