// GGUF <-> Weights for the llama, qwen2, qwen3 and gpt2 architectures, with llama.cpp's
// tensor names and metadata keys.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "core/error.h"
#include "formats/model_io.h"
#include "kernels/kernels.h"
#include "model/arch.h"
#include "formats/rope_scaling.h"
#include "tokenizer/pretokenizer.h"

namespace tessera {

namespace {

uint32_t file_type_of(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
    default: return 0;
  }
}

// RoPE scaling as llama.cpp reads it for "llama": positions times 1 / rope.scaling.factor
// (old key rope.scale_linear) under scaling type none or linear, and frequency i divided
// by rope_freqs.weight[i] (llama3 scaling). One divisor per frequency; empty when unscaled.
std::vector<float> gguf_rope_factors(const gguf::File& f, const std::string& p, int64_t head_dim) {
  if (head_dim < 2) return {};  // validate() reports the head size
  const std::string& path = f.path();
  const std::string type = f.find(p + "rope.scaling.type") ? f.get_string(p + "rope.scaling.type") : "none";
  if (type != "none" && type != "linear")
    fail(path, ": ", p, "rope.scaling.type '", type, "' is not supported (supported: none, linear)");
  const std::string fkey = f.find(p + "rope.scaling.factor") ? p + "rope.scaling.factor" : p + "rope.scale_linear";
  const double linear = f.find(fkey) ? f.get_float(fkey) : 0.0;  // llama.cpp: 0 = unscaled
  if (linear < 0 || !std::isfinite(linear)) fail(path, ": ", fkey, " must be >= 0, got ", linear);
  std::vector<float> div;
  if (const auto* t = f.find_tensor("rope_freqs.weight")) {
    if (t->view.ndim != 1 || t->view.shape[0] != head_dim / 2)
      fail(path, ": tensor rope_freqs.weight has shape ", shape_str(t->view), ", needs [", head_dim / 2,
           "] (head_dim / 2)");
    if (t->view.dtype != DType::F32 && t->view.dtype != DType::F16 && t->view.dtype != DType::BF16)
      fail(path, ": tensor rope_freqs.weight is ", dtype_name(t->view.dtype), "; f32, f16 or bf16 needed");
    div.resize(size_t(head_dim / 2));
    dequantize_row(t->view, 0, div.data());
  }
  if (linear > 0 && linear != 1.0) {
    div.resize(size_t(head_dim / 2), 1.f);
    for (float& d : div) d *= float(linear);
  }
  return div;
}

// Mixture-of-experts keys as llama.cpp names them: expert_count (absent or 0:
// dense), expert_used_count, expert_feed_forward_length (default: the dense
// feed_forward_length, Mixtral's "llama"), expert_shared_feed_forward_length
// (Qwen2-MoE) or expert_shared_count x the expert width (DeepSeek),
// leading_dense_block_count, expert_gating_func (1 softmax, 2 sigmoid),
// expert_weights_norm (default: true for "llama", false otherwise, as llama.cpp
// runs them), expert_weights_scale.
void read_moe_keys(const gguf::File& f, const std::string& arch, const std::string& p, ModelConfig& c) {
  const std::string& path = f.path();
  c.moe_experts = f.get_int_or(p + "expert_count", 0);
  if (c.moe_experts < 0) fail(path, ": ", p, "expert_count must be >= 0, got ", c.moe_experts);
  if (c.moe_experts == 0) return;
  c.moe_used = f.get_int(p + "expert_used_count");
  c.moe_hidden = f.get_int_or(p + "expert_feed_forward_length", c.hidden_dim);
  c.moe_shared_hidden = f.get_int_or(p + "expert_shared_feed_forward_length", 0);
  if (f.find(p + "expert_shared_count")) c.moe_shared_hidden = c.moe_hidden * f.get_int(p + "expert_shared_count");
  c.moe_first_dense = f.get_int_or(p + "leading_dense_block_count", 0);
  c.moe_every = f.get_int_or(p + "expert_layer_step", 1);  // a Tessera key (llama.cpp: every layer)
  const int64_t gating = f.get_int_or(p + "expert_gating_func", 1);
  if (gating != 1 && gating != 2)
    fail(path, ": ", p, "expert_gating_func = ", gating, " is not supported (1 softmax, 2 sigmoid)");
  c.moe_gate = gating == 2 ? MoeGate::Sigmoid : MoeGate::Softmax;
  c.moe_norm_topk = f.get_bool_or(p + "expert_weights_norm", arch == "llama");
  c.moe_scale = float(f.get_float_or(p + "expert_weights_scale", 1.0));
  // Hash routing (model/moe_hash.h; Tessera keys): the rule, and hash-balanced's table.
  c.moe_routing = parse_moe_routing(f.get_string_or(p + "expert_routing", "learned"), path + ": " + p + "expert_routing");
  if (f.find(p + "expert_hash_table")) {
    const std::vector<double> t = f.get_num_array(p + "expert_hash_table");
    c.moe_hash_table.resize(t.size());
    for (size_t i = 0; i < t.size(); ++i) {
      if (!(t[i] >= 0 && t[i] < double(c.moe_experts)) || t[i] != std::floor(t[i]))
        fail(path, ": ", p, "expert_hash_table[", i, "] = ", t[i], " is not an expert index below ", c.moe_experts);
      c.moe_hash_table[i] = int32_t(t[i]);
    }
  }
}

// The keys read_moe_keys reads back to c, for the GGUF architecture `arch`.
// Sparse attention patterns (Tessera keys; AttnKind::Sparse): per layer, its window, dilation,
// global positions, random keys per block and their seed; window 0 = not a sparse layer.
constexpr const char* kSparseKeys[] = {"window", "dilation", "global", "random", "seed"};

void read_sparse_keys(const gguf::File& f, const std::string& p, ModelConfig& c) {
  if (!f.find(p + "attention.sparse_window")) return;
  std::vector<std::vector<double>> v;
  for (const char* k : kSparseKeys) {
    const std::string key = p + "attention.sparse_" + k;
    if (!f.find(key)) fail(f.path(), ": ", p, "attention.sparse_window without ", key);
    v.push_back(f.get_num_array(key));
    if (int64_t(v.back().size()) != c.n_layers)
      fail(f.path(), ": ", key, " has ", v.back().size(), " values for ", c.n_layers, " layers");
  }
  if (c.layer_cfg.empty()) c.layer_cfg.resize(size_t(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (v[0][size_t(l)] == 0) continue;
    LayerConfig& lc = c.layer_cfg[size_t(l)];
    if (lc.attn != AttnKind::Full) fail(f.path(), ": layer ", l, " is both sliding-window and sparse");
    lc.attn = AttnKind::Sparse;
    lc.window = int64_t(v[0][size_t(l)]), lc.dilation = int64_t(v[1][size_t(l)]);
    lc.global = int64_t(v[2][size_t(l)]), lc.random = int64_t(v[3][size_t(l)]);
    lc.seed = uint32_t(int64_t(v[4][size_t(l)]));
  }
  // Per-head dilations (Longformer's): n_heads values per layer, 0 on layers without.
  const std::string hk = p + "attention.sparse_head_dilation";
  if (!f.find(hk)) return;
  const std::vector<double> hd = f.get_num_array(hk);
  if (int64_t(hd.size()) != c.n_layers * c.n_heads)
    fail(f.path(), ": ", hk, " has ", hd.size(), " values for ", c.n_layers, " layers x ", c.n_heads, " heads");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (hd[size_t(l * c.n_heads)] == 0) continue;
    LayerConfig& lc = c.layer_cfg[size_t(l)];
    if (lc.attn != AttnKind::Sparse) fail(f.path(), ": ", hk, ": layer ", l, " has per-head dilations but is not sparse");
    for (int64_t h = 0; h < c.n_heads; ++h) {
      const double d = hd[size_t(l * c.n_heads + h)];
      if (!(d >= 1 && d <= double(1 << 24))) fail(f.path(), ": ", hk, ": layer ", l, " head ", h, ": dilation ", d);
      lc.head_dilation.push_back(int32_t(d));
    }
  }
}

void write_sparse_keys(gguf::Writer& g, const std::string& p, const ModelConfig& c) {
  if (!c.has_sparse_attention()) return;
  std::vector<std::vector<int32_t>> v(std::size(kSparseKeys));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerConfig& lc = c.layer(l);
    const bool sp = lc.attn == AttnKind::Sparse;
    v[0].push_back(sp ? int32_t(lc.window) : 0), v[1].push_back(sp ? int32_t(lc.dilation) : 0);
    v[2].push_back(sp ? int32_t(lc.global) : 0), v[3].push_back(sp ? int32_t(lc.random) : 0);
    v[4].push_back(sp ? int32_t(lc.seed) : 0);
  }
  for (size_t k = 0; k < v.size(); ++k) g.set_i32_array(p + "attention.sparse_" + kSparseKeys[k], v[k]);
  std::vector<int32_t> hd;
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (int64_t h = 0; h < c.n_heads; ++h)
      hd.push_back(c.layer(l).head_dilation.empty() ? 0 : c.layer(l).head_dilation[size_t(h)]);
  if (std::any_of(hd.begin(), hd.end(), [](int32_t d) { return d != 0; }))
    g.set_i32_array(p + "attention.sparse_head_dilation", hd);
}

void write_moe_keys(gguf::Writer& g, const std::string& arch, const std::string& p, const ModelConfig& c) {
  if (!c.is_moe()) return;
  g.set_u32(p + "expert_count", uint32_t(c.moe_experts));
  g.set_u32(p + "expert_used_count", uint32_t(c.moe_used));
  g.set_u32(p + "expert_feed_forward_length", uint32_t(c.moe_hidden));
  if (c.moe_shared_hidden > 0) g.set_u32(p + "expert_shared_feed_forward_length", uint32_t(c.moe_shared_hidden));
  if (c.moe_first_dense > 0) g.set_u32(p + "leading_dense_block_count", uint32_t(c.moe_first_dense));
  if (c.moe_every != 1) g.set_u32(p + "expert_layer_step", uint32_t(c.moe_every));
  if (c.moe_gate != MoeGate::Softmax) g.set_u32(p + "expert_gating_func", 2);
  if (c.moe_norm_topk != (arch == "llama")) g.set_bool(p + "expert_weights_norm", c.moe_norm_topk);
  if (c.moe_scale != 1.f) g.set_f32(p + "expert_weights_scale", c.moe_scale);
  if (c.moe_hashed()) g.set_string(p + "expert_routing", moe_routing_name(c.moe_routing));
  if (!c.moe_hash_table.empty()) g.set_i32_array(p + "expert_hash_table", c.moe_hash_table);
}

// The GGUF architecture llama.cpp runs this llama-family config as: "qwen2moe"
// (experts with a gated shared expert), "llama" (Mixtral: experts without a
// shared one), "qwen2" (q/k/v biases), "qwen3" (QK-norm), "llama".
std::string gguf_llama_arch(const ModelConfig& c, const std::string& path) {
  if (c.mla()) return "deepseek2";
  if (c.post_norms) {
    // Gemma 2: what llama.cpp's gemma2 implies (tested on read) must be what the model computes.
    if (!c.gemma2_block() || !c.tied_embeddings || c.attn_scale != (c.n_layers == 46 ? 1.f / std::sqrt(float(c.dim / c.n_heads)) : 0.f))
      fail(path, ": a model with sandwich norms is written as llama.cpp's gemma2, which implies an embedding scale "
                 "of sqrt(dim), GeGLU, tied embeddings and its query scale; this model differs");
    return "gemma2";
  }
  if (c.embed_scale > 0.f || c.attn_scale > 0.f)
    fail(path, ": an embedding or attention scale outside Gemma 2 has no GGUF key Tessera writes yet");
  if (c.is_moe()) {
    if (c.moe_shared_hidden > 0 && !c.moe_shared_gate)
      fail(path, ": this model's ungated shared expert (DeepSeek's) needs latent attention (deepseek2) in GGUF");
    if (c.moe_shared_hidden > 0) return "qwen2moe";
    if (c.qk_norm) fail(path, ": a mixture-of-experts model with QK-norm has no GGUF architecture Tessera writes yet");
    return "llama";
  }
  return c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : "llama";
}

}  // namespace

std::string gguf_arch_name(const ModelConfig& c) { return c.arch == Arch::GPT2 ? "gpt2" : gguf_llama_arch(c, "GGUF"); }

// Every general.architecture value a registered architecture reads.
std::string supported_gguf_archs() {
  std::string r;
  for (const ArchDesc* d : architectures())
    for (const auto& n : d->gguf_archs) r += (r.empty() ? "" : ", ") + n;
  return r;
}

Weights load_gguf_weights(std::shared_ptr<gguf::File> f) {
  const std::string& path = f->path();
  const std::string arch = f->get_string("general.architecture");
  const ArchDesc* d = find_arch_gguf(arch);
  if (!d) fail(path, ": general.architecture '", arch, "' is not supported (supported: ", supported_gguf_archs(), ")");
  Weights w;
  auto& c = w.cfg;
  c.arch = d->arch;
  const std::string p = arch + ".";
  c.name = f->get_string_or("general.name", "");
  w.file_type = f->find("general.file_type") ? f->get_int("general.file_type") : -1;
  // The architecture's plain keys; defaults first.
  c.n_kv_heads = 0, c.norm_eps = 1e-5f, c.rope_theta = 10000.f;
  for (const ConfigKey& k : d->keys) {
    if (!k.gguf) continue;
    const std::string key = p + k.gguf;
    if (k.i64 && (k.gguf_required || f->find(key))) c.*k.i64 = f->get_int(key);
    if (k.f32 && (k.gguf_required || f->find(key))) c.*k.f32 = float(f->get_float(key));
  }
  if (c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
  if (c.n_heads <= 0) fail(path, ": ", p, "attention.head_count must be positive, got ", c.n_heads);
  // Multi-token prediction modules (llama.cpp's nextn layers): the last nextn_predict_layers of block_count.
  c.mtp_depth = f->get_int_or(p + "nextn_predict_layers", 0);
  if (c.mtp_depth < 0 || c.mtp_depth >= c.n_layers)
    fail(path, ": ", p, "nextn_predict_layers = ", c.mtp_depth, " must be in [0, block_count = ", c.n_layers, ")");
  c.n_layers -= c.mtp_depth;
  c.head_dim = f->get_int_or(p + "attention.key_length", c.dim / c.n_heads);
  // Sliding-window attention: attention.sliding_window (positions) on the layers
  // attention.sliding_window_pattern marks (one value per layer, non-zero =
  // sliding), or on every layer when there is no pattern.
  if (f->find(p + "attention.sliding_window")) {
    const int64_t win = f->get_int(p + "attention.sliding_window");
    if (win < 1) fail(path, ": ", p, "attention.sliding_window must be >= 1, got ", win);
    std::vector<bool> slides(size_t(std::max<int64_t>(c.n_layers, 0)), true);
    if (f->find(p + "attention.sliding_window_pattern")) {
      const auto pat = f->get_num_array(p + "attention.sliding_window_pattern");
      if (int64_t(pat.size()) != c.n_layers)
        fail(path, ": ", p, "attention.sliding_window_pattern has ", pat.size(), " values for ", c.n_layers, " layers");
      for (size_t l = 0; l < pat.size(); ++l) slides[l] = pat[l] != 0;
    }
    c.layer_cfg = sliding_window_layers(win, slides);
  }
  if (arch == "gemma2") {
    // llama.cpp's gemma2: embeddings times sqrt(n_embd), GeGLU (tanh GELU), sandwich norms
    // (tensors), sliding window on the even layers when the file names no pattern, and the
    // query scale it picks by layer count: 1 / sqrt(n_embd / n_head) for the 46-layer 27B,
    // else 1 / sqrt(head_dim).
    c.embed_scale = std::sqrt(float(c.dim));
    c.ffn_act = FfnAct::GeGLU;
    if (c.n_layers == 46) c.attn_scale = 1.f / std::sqrt(float(c.dim / c.n_heads));
    if (c.has_sliding_window() && !f->find(p + "attention.sliding_window_pattern"))
      c.layer_cfg = sliding_window_layers(c.n_layers, c.common_window(path), "even");
  }
  read_sparse_keys(*f, p, c);
  if (c.arch == Arch::Llama) read_moe_keys(*f, arch, p, c);
  c.set_moe_layers();  // before the tensors: which layers have experts
  // The feed-forward activation when it is not the architecture's own (a Tessera key).
  if (f->find(p + "feed_forward_activation"))
    c.ffn_act = parse_ffn_act(f->get_string(p + "feed_forward_activation"), path + ": " + p + "feed_forward_activation");
  // Post-norm blocks (a Tessera key; absent: pre-norm).
  if (f->find(p + "norm_placement")) {
    const std::string np = f->get_string(p + "norm_placement");
    if (np != "pre" && np != "post") fail(path, ": ", p, "norm_placement must be pre or post, got '", np, "'");
    c.norm_placement = np == "post" ? NormPlacement::Post : NormPlacement::Pre;
  }
  const auto& emb = f->tensor("token_embd.weight");
  if (emb.shape.size() != 2) fail(path, ": tensor token_embd.weight must be 2-D, has ", emb.shape.size(), " dims");
  c.vocab_size = emb.shape[0];
  if (c.arch == Arch::Llama) {
    // llama.cpp runs "llama" and "deepseek2" with adjacent-pair RoPE (its converter permutes HF
    // weights), "qwen2", "qwen3" (QK-norm) and "qwen2moe" with NeoX style.
    c.rope_style = arch == "llama" || arch == "deepseek2" ? ops::RopeStyle::Interleaved : ops::RopeStyle::HalfSplit;
    const int64_t rot = f->get_int_or(p + "rope.dimension_count", c.head_dim);
    if (f->find(p + "attention.kv_lora_rank")) {  // latent attention: RoPE on each head's last `rot` dims
      c.mla_kv_lora = f->get_int(p + "attention.kv_lora_rank");
      c.mla_q_lora = f->get_int_or(p + "attention.q_lora_rank", 0);
      c.mla_v_dim = f->get_int(p + "attention.value_length");
      c.mla_rope = rot;
      if (c.mla_kv_lora <= 0) fail(path, ": ", p, "attention.kv_lora_rank must be positive, got ", c.mla_kv_lora);
      // rope.scaling.yarn_log_multiplier (required by llama.cpp) acts only with YaRN, which is refused below.
    } else if (rot != c.head_dim) {
      fail(path, ": ", p, "rope.dimension_count = ", rot, " (partial rotary) is not supported; head_dim is ", c.head_dim);
    }
    c.rope_freq_factors = gguf_rope_factors(*f, p, c.rope_dims());
  }
  // The tensors of the architecture's table. Conditional ones are optional in
  // the file; finding one turns its config flag on (Qwen2's biases, QK-norm).
  std::set<std::string> used;  // every tensor the model reads
  if (c.arch == Arch::Llama) used.insert("rope_freqs.weight");  // read above
  w.layers.resize(size_t(std::max<int64_t>(c.n_blocks(), 0)));
  auto load = [&](const TensorSpec& s, int64_t l) {
    const std::string name = gguf_tensor_name(s, l);
    used.insert(name);
    const auto* t = f->find_tensor(name);
    if (!t && !s.present) f->tensor(name);  // a required tensor: the reader's "missing tensor" error
    if (!t) return;
    slot_ref(w, s.slot, l) = t->view;
    if (s.flag) c.*s.flag = true;
  };
  for (const auto& s : d->head) load(s, -1);
  for (int64_t l = 0; l < c.n_blocks(); ++l)
    for (const auto& s : d->layer) load(s, l);
  for (const auto& s : d->tail) load(s, -1);
  c.tied_embeddings = w.output.empty();
  if (c.tied_embeddings) w.output = w.tok_embd;
  // A tensor the model does not read is a feature it would silently drop (MoE experts,
  // FFN biases, extra norms...): refuse, as llama.cpp refuses unexpected tensors.
  for (const auto& t : f->tensors())
    if (!used.count(t.name))
      fail(path, ": tensor ", t.name, " is not part of the ", arch, " model as Tessera runs it (unsupported feature)");
  c.validate(path);
  w.owners.push_back(f);
  norms_to_f32(w);
  w.validate_shapes(path);
  return w;
}

namespace {

void write_tokenizer(gguf::Writer& g, const Tokenizer& tok, const std::string& path) {
  const VocabData& d = tok.data();
  const bool spm = d.kind == TokenizerKind::SentencePiece;
  g.set_string("tokenizer.ggml.model", spm ? "llama" : "gpt2");
  if (!spm) {
    // GGUF names the pre-tokenizer by family, in llama.cpp's spelling ("gpt-2", not "gpt2",
    // which llama.cpp refuses); regexes of no known family cannot be carried.
    const std::vector<std::string> pats =
        d.pre_patterns.empty() ? pretokenizer_patterns(d.pre.empty() ? "default" : d.pre) : d.pre_patterns;
    const std::string family = pretokenizer_family_of(pats);
    if (family.empty())
      fail(path, ": the tokenizer's pre-tokenizer regexes (", pats.size(), ", first '", pats.empty() ? "" : pats[0],
           "') are none of the tokenizer.ggml.pre families GGUF readers know; write a Hugging Face directory instead");
    g.set_string("tokenizer.ggml.pre", family);
  }
  std::vector<std::string> tokens = d.tokens;
  std::vector<int32_t> types(tokens.size(), int32_t(TokenType::Normal));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i < d.types.size()) types[i] = int32_t(d.types[i]);
    std::string& t = tokens[i];
    const bool byte_piece = t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>';
    if (spm && d.types.empty()) {
      if (int32_t(i) == d.unk_id) types[i] = int32_t(TokenType::Unknown);
      else if (int32_t(i) == d.bos_id || int32_t(i) == d.eos_id) types[i] = int32_t(TokenType::Control);
      else if (byte_piece) types[i] = int32_t(TokenType::Byte);
    }
    if (spm && !byte_piece) {  // SentencePiece pieces spell space as U+2581
      std::string s;
      for (char ch : t) s += ch == ' ' ? std::string("\xE2\x96\x81") : std::string(1, ch);
      t = s;
    }
  }
  g.set_string_array("tokenizer.ggml.tokens", tokens);
  if (spm) {
    std::vector<float> scores = d.scores;
    scores.resize(tokens.size(), 0.f);
    g.set_f32_array("tokenizer.ggml.scores", scores);
  }
  g.set_i32_array("tokenizer.ggml.token_type", types);
  if (!spm) g.set_string_array("tokenizer.ggml.merges", d.merges);
  if (d.bos_id >= 0) g.set_u32("tokenizer.ggml.bos_token_id", uint32_t(d.bos_id));
  if (d.eos_id >= 0) g.set_u32("tokenizer.ggml.eos_token_id", uint32_t(d.eos_id));
  if (d.unk_id >= 0) g.set_u32("tokenizer.ggml.unknown_token_id", uint32_t(d.unk_id));
  if (d.pad_id >= 0) g.set_u32("tokenizer.ggml.padding_token_id", uint32_t(d.pad_id));
  g.set_bool("tokenizer.ggml.add_bos_token", d.add_bos);
  g.set_bool("tokenizer.ggml.add_eos_token", d.add_eos);
  if (spm) g.set_bool("tokenizer.ggml.add_space_prefix", d.add_space_prefix);
}

}  // namespace

void save_gguf(const Weights& in, const Tokenizer* tok, const std::string& path, const std::string& chat_template) {
  // llama.cpp runs "llama" with interleaved-pair RoPE rows, "qwen2" (biases), "qwen3" (QK-norm)
  // and "qwen2moe" with half-split.
  const bool llama = in.cfg.arch == Arch::Llama;
  const std::string arch = llama ? gguf_llama_arch(in.cfg, path) : "gpt2";
  const Weights w = with_rope_style(
      in, arch == "llama" || arch == "deepseek2" ? ops::RopeStyle::Interleaved : ops::RopeStyle::HalfSplit);
  const auto& c = w.cfg;
  for (const auto& L : w.layers)
    if (L.wq.dtype == DType::Q8_G || w.tok_embd.dtype == DType::Q8_G)
      fail(path, ": llama2.c int8 (q8_g) tensors cannot be written to GGUF; pick --type");
  gguf::Writer g;
  if (arch != "llama" && arch != "gpt2" && !c.rope_freq_factors.empty() && !uniform_rope_factor(c.rope_freq_factors))
    fail(path, ": llama.cpp's ", arch, " architecture has no rope_freqs tensor for this model's RoPE scaling");
  const std::string p = arch + ".";
  g.set_string("general.architecture", arch);
  g.set_string("general.name", c.name.empty() ? "tessera" : c.name);
  const DType main_type = llama ? w.layers.empty() ? DType::F32 : w.layers[0].wq.dtype
                                : w.layers.empty() ? DType::F32 : w.layers[0].wqkv.dtype;
  g.set_u32("general.file_type", w.file_type >= 0 ? uint32_t(w.file_type) : file_type_of(main_type));
  bool quantized = false;
  for (const TensorView& t : w.tensors()) quantized |= dtype_block_elems(t.dtype) > 1;
  if (quantized) g.set_u32("general.quantization_version", 2);
  for (const ConfigKey& k : arch_desc(c.arch).keys) {
    if (!k.gguf) continue;
    // block_count counts the multi-token prediction modules too (llama.cpp's nextn layers).
    const int64_t extra = k.i64 == &ModelConfig::n_layers ? c.mtp_depth : 0;
    if (k.i64 && (k.write_if_zero || c.*k.i64 != 0)) g.set_u32(p + k.gguf, uint32_t(c.*k.i64 + extra));
    if (k.f32 && (k.write_if_zero || c.*k.f32 != 0.f)) g.set_f32(p + k.gguf, c.*k.f32);
  }
  if (llama) {
    g.set_u32(p + "rope.dimension_count", uint32_t(c.rope_dims()));
    if (c.mla()) {
      if (c.mla_q_lora > 0) g.set_u32(p + "attention.q_lora_rank", uint32_t(c.mla_q_lora));
      g.set_u32(p + "attention.kv_lora_rank", uint32_t(c.mla_kv_lora));
      g.set_u32(p + "attention.key_length", uint32_t(c.head_dim));
      g.set_u32(p + "attention.value_length", uint32_t(c.mla_v_dim));
      g.set_f32(p + "rope.scaling.yarn_log_multiplier", 0.f);  // required by llama.cpp's deepseek2; no YaRN here
    }
    if (auto u = uniform_rope_factor(c.rope_freq_factors); u && *u != 1.f) {  // llama.cpp's linear keys
      g.set_string(p + "rope.scaling.type", "linear");
      g.set_f32(p + "rope.scaling.factor", *u);
    }
    if (c.head_dim * c.n_heads != c.dim && !c.mla()) {
      g.set_u32(p + "attention.key_length", uint32_t(c.head_dim));
      g.set_u32(p + "attention.value_length", uint32_t(c.head_dim));
    }
  }
  write_moe_keys(g, arch, p, c);
  if (c.mtp_depth > 0) g.set_u32(p + "nextn_predict_layers", uint32_t(c.mtp_depth));
  if (c.ffn_act != FfnAct::Default) g.set_string(p + "feed_forward_activation", ffn_act_name(c.activation()));
  if (c.norm_placement == NormPlacement::Post) g.set_string(p + "norm_placement", "post");
  if (const int64_t win = c.common_window(path); win > 0) {
    g.set_u32(p + "attention.sliding_window", uint32_t(win));
    std::vector<int32_t> pat;
    for (int64_t l = 0; l < c.n_layers; ++l) pat.push_back(c.layer(l).attn == AttnKind::SlidingWindow ? 1 : 0);
    g.set_i32_array(p + "attention.sliding_window_pattern", pat);
  }
  write_sparse_keys(g, p, c);
  g.set_u32(p + "vocab_size", uint32_t(c.vocab_size));
  if (tok) write_tokenizer(g, *tok, path);
  if (!chat_template.empty()) g.set_string("tokenizer.chat_template", chat_template);

  // The architecture's tensors in its table's order; rope_freqs (llama3-style divisors) after the embedding.
  for_each_tensor_spec(arch_desc(c.arch), c, [&](const TensorSpec& s, int64_t l) {
    g.add_tensor(gguf_tensor_name(s, l), slot_ref(w, s.slot, l));
    if (s.slot == Slot::TokEmbd && !c.rope_freq_factors.empty() && !uniform_rope_factor(c.rope_freq_factors))
      g.add_tensor("rope_freqs.weight",
                   make_view(DType::F32, {int64_t(c.rope_freq_factors.size())}, c.rope_freq_factors.data()));
  });
  g.write(path);
}

}  // namespace tessera
