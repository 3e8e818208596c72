// GGUF <-> Weights for the llama, qwen2, qwen3 and gpt2 architectures, with llama.cpp's
// tensor names and metadata keys.
#include <cmath>
#include <set>
#include <string>

#include "core/error.h"
#include "formats/model_io.h"
#include "kernels/kernels.h"
#include "model/rope_scaling.h"
#include "tokenizer/pretokenizer.h"

namespace tessera {

namespace {

std::string blk(int64_t l, const char* name) { return "blk." + std::to_string(l) + "." + name; }

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

}  // namespace

Weights load_gguf_weights(std::shared_ptr<gguf::File> f) {
  const std::string& path = f->path();
  const std::string arch = f->get_string("general.architecture");
  Weights w;
  auto& c = w.cfg;
  if (arch == "llama" || arch == "qwen2" || arch == "qwen3")
    c.arch = Arch::Llama;
  else if (arch == "gpt2")
    c.arch = Arch::GPT2;
  else
    fail(path, ": general.architecture '", arch, "' is not supported (supported: llama, qwen2, qwen3, gpt2)");
  const std::string p = arch + ".";
  c.name = f->get_string_or("general.name", "");
  c.dim = f->get_int(p + "embedding_length");
  c.n_layers = f->get_int(p + "block_count");
  c.hidden_dim = f->get_int(p + "feed_forward_length");
  c.n_heads = f->get_int(p + "attention.head_count");
  c.n_kv_heads = f->get_int_or(p + "attention.head_count_kv", c.n_heads);
  c.max_seq_len = f->get_int(p + "context_length");
  if (c.n_heads <= 0) fail(path, ": ", p, "attention.head_count must be positive, got ", c.n_heads);
  c.head_dim = f->get_int_or(p + "attention.key_length", c.dim / c.n_heads);
  const auto& emb = f->tensor("token_embd.weight");
  if (emb.shape.size() != 2) fail(path, ": tensor token_embd.weight must be 2-D, has ", emb.shape.size(), " dims");
  c.vocab_size = emb.shape[0];
  std::set<std::string> used = {"token_embd.weight"};  // every tensor the model reads
  auto T = [&](const std::string& name) {
    used.insert(name);
    return f->tensor(name).view;
  };
  auto opt = [&](const std::string& name) {
    used.insert(name);
    const auto* t = f->find_tensor(name);
    return t ? t->view : TensorView{};
  };
  w.tok_embd = emb.view;
  w.out_norm = T("output_norm.weight");
  w.output = opt("output.weight");
  c.tied_embeddings = w.output.empty();
  if (c.tied_embeddings) w.output = w.tok_embd;
  w.layers.resize(size_t(std::max<int64_t>(c.n_layers, 0)));
  if (c.arch == Arch::Llama) {
    c.norm_eps = float(f->get_float_or(p + "attention.layer_norm_rms_epsilon", 1e-5));
    c.rope_theta = float(f->get_float_or(p + "rope.freq_base", 10000.0));
    // Soft-capping keys as llama.cpp names them for gemma2.
    c.attn_softcap = float(f->get_float_or(p + "attn_logit_softcapping", 0.0));
    c.final_softcap = float(f->get_float_or(p + "final_logit_softcapping", 0.0));
    // llama.cpp runs "llama" with adjacent-pair RoPE (its converter permutes HF weights), "qwen2" and
    // "qwen3" (QK-norm) with NeoX style.
    c.rope_style = arch == "llama" ? ops::RopeStyle::Interleaved : ops::RopeStyle::HalfSplit;
    const int64_t rot = f->get_int_or(p + "rope.dimension_count", c.head_dim);
    if (rot != c.head_dim)
      fail(path, ": ", p, "rope.dimension_count = ", rot, " (partial rotary) is not supported; head_dim is ", c.head_dim);
    c.rope_freq_factors = gguf_rope_factors(*f, p, c.head_dim);
    used.insert("rope_freqs.weight");
    for (int64_t l = 0; l < c.n_layers; ++l) {
      auto& L = w.layers[size_t(l)];
      L.attn_norm = T(blk(l, "attn_norm.weight"));
      L.wq = T(blk(l, "attn_q.weight"));
      L.wk = T(blk(l, "attn_k.weight"));
      L.wv = T(blk(l, "attn_v.weight"));
      L.bq = opt(blk(l, "attn_q.bias"));
      L.bk = opt(blk(l, "attn_k.bias"));
      L.bv = opt(blk(l, "attn_v.bias"));
      L.wo = T(blk(l, "attn_output.weight"));
      L.ffn_norm = T(blk(l, "ffn_norm.weight"));
      L.w_gate = T(blk(l, "ffn_gate.weight"));
      L.w_up = T(blk(l, "ffn_up.weight"));
      L.w_down = T(blk(l, "ffn_down.weight"));
      if (!L.bq.empty()) c.qkv_bias = true;
      L.q_norm = opt(blk(l, "attn_q_norm.weight"));
      L.k_norm = opt(blk(l, "attn_k_norm.weight"));
      if (!L.q_norm.empty()) c.qk_norm = true;
      if (f->find_tensor(blk(l, "attn_output.bias")))
        fail(path, ": tensor ", blk(l, "attn_output.bias"), " (output projection bias) is not supported for ", arch);
    }
  } else {
    c.norm_eps = float(f->get_float_or(p + "attention.layer_norm_epsilon", 1e-5));
    w.pos_embd = T("position_embd.weight");
    w.out_norm_b = T("output_norm.bias");
    for (int64_t l = 0; l < c.n_layers; ++l) {
      auto& L = w.layers[size_t(l)];
      L.attn_norm = T(blk(l, "attn_norm.weight"));
      L.attn_norm_b = T(blk(l, "attn_norm.bias"));
      L.wqkv = T(blk(l, "attn_qkv.weight"));
      L.bqkv = T(blk(l, "attn_qkv.bias"));
      L.wo = T(blk(l, "attn_output.weight"));
      L.bo = T(blk(l, "attn_output.bias"));
      L.ffn_norm = T(blk(l, "ffn_norm.weight"));
      L.ffn_norm_b = T(blk(l, "ffn_norm.bias"));
      L.w_up = T(blk(l, "ffn_up.weight"));
      L.b_up = T(blk(l, "ffn_up.bias"));
      L.w_down = T(blk(l, "ffn_down.weight"));
      L.b_down = T(blk(l, "ffn_down.bias"));
    }
  }
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

void save_gguf(const Weights& in, const Tokenizer* tok, const std::string& path) {
  // llama.cpp runs "llama" with interleaved-pair RoPE rows, "qwen2" (biases) and "qwen3" (QK-norm) with half-split.
  const bool qwen = in.cfg.qkv_bias || in.cfg.qk_norm;
  const Weights w = with_rope_style(in, qwen ? ops::RopeStyle::HalfSplit : ops::RopeStyle::Interleaved);
  const auto& c = w.cfg;
  for (const auto& L : w.layers)
    if (L.wq.dtype == DType::Q8_G || w.tok_embd.dtype == DType::Q8_G)
      fail(path, ": llama2.c int8 (q8_g) tensors cannot be written to GGUF; pick --type");
  gguf::Writer g;
  const bool llama = c.arch == Arch::Llama;
  const std::string arch = llama ? (c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : "llama") : "gpt2";
  if (arch != "llama" && arch != "gpt2" && !c.rope_freq_factors.empty() && !uniform_rope_factor(c.rope_freq_factors))
    fail(path, ": llama.cpp's ", arch, " architecture has no rope_freqs tensor for this model's RoPE scaling");
  const std::string p = arch + ".";
  g.set_string("general.architecture", arch);
  g.set_string("general.name", c.name.empty() ? "tessera" : c.name);
  const DType main_type = llama ? w.layers.empty() ? DType::F32 : w.layers[0].wq.dtype
                                : w.layers.empty() ? DType::F32 : w.layers[0].wqkv.dtype;
  g.set_u32("general.file_type", file_type_of(main_type));
  if (main_type == DType::Q8_0 || main_type == DType::Q4_0) g.set_u32("general.quantization_version", 2);
  g.set_u32(p + "context_length", uint32_t(c.max_seq_len));
  g.set_u32(p + "embedding_length", uint32_t(c.dim));
  g.set_u32(p + "block_count", uint32_t(c.n_layers));
  g.set_u32(p + "feed_forward_length", uint32_t(c.hidden_dim));
  g.set_u32(p + "attention.head_count", uint32_t(c.n_heads));
  if (llama) {
    g.set_u32(p + "attention.head_count_kv", uint32_t(c.n_kv_heads));
    g.set_u32(p + "rope.dimension_count", uint32_t(c.head_dim));
    g.set_f32(p + "rope.freq_base", c.rope_theta);
    g.set_f32(p + "attention.layer_norm_rms_epsilon", c.norm_eps);
    if (c.attn_softcap > 0.f) g.set_f32(p + "attn_logit_softcapping", c.attn_softcap);
    if (c.final_softcap > 0.f) g.set_f32(p + "final_logit_softcapping", c.final_softcap);
    if (auto u = uniform_rope_factor(c.rope_freq_factors); u && *u != 1.f) {  // llama.cpp's linear keys
      g.set_string(p + "rope.scaling.type", "linear");
      g.set_f32(p + "rope.scaling.factor", *u);
    }
    if (c.head_dim * c.n_heads != c.dim) {
      g.set_u32(p + "attention.key_length", uint32_t(c.head_dim));
      g.set_u32(p + "attention.value_length", uint32_t(c.head_dim));
    }
  } else {
    g.set_f32(p + "attention.layer_norm_epsilon", c.norm_eps);
  }
  g.set_u32(p + "vocab_size", uint32_t(c.vocab_size));
  if (tok) write_tokenizer(g, *tok, path);

  g.add_tensor("token_embd.weight", w.tok_embd);
  if (!llama) g.add_tensor("position_embd.weight", w.pos_embd);
  g.add_tensor("output_norm.weight", w.out_norm);
  if (!c.rope_freq_factors.empty() && !uniform_rope_factor(c.rope_freq_factors))  // llama3-style divisors
    g.add_tensor("rope_freqs.weight",
                 make_view(DType::F32, {int64_t(c.rope_freq_factors.size())}, c.rope_freq_factors.data()));
  if (!llama) g.add_tensor("output_norm.bias", w.out_norm_b);
  if (w.output.data != w.tok_embd.data) g.add_tensor("output.weight", w.output);
  auto add = [&](int64_t l, const char* name, const TensorView& t) {
    if (!t.empty()) g.add_tensor(blk(l, name), t);
  };
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& L = w.layers[size_t(l)];
    add(l, "attn_norm.weight", L.attn_norm);
    add(l, "attn_norm.bias", L.attn_norm_b);
    add(l, "attn_q.weight", L.wq);
    add(l, "attn_q.bias", L.bq);
    add(l, "attn_q_norm.weight", L.q_norm);
    add(l, "attn_k_norm.weight", L.k_norm);
    add(l, "attn_k.weight", L.wk);
    add(l, "attn_k.bias", L.bk);
    add(l, "attn_v.weight", L.wv);
    add(l, "attn_v.bias", L.bv);
    add(l, "attn_qkv.weight", L.wqkv);
    add(l, "attn_qkv.bias", L.bqkv);
    add(l, "attn_output.weight", L.wo);
    add(l, "attn_output.bias", L.bo);
    add(l, "ffn_norm.weight", L.ffn_norm);
    add(l, "ffn_norm.bias", L.ffn_norm_b);
    add(l, "ffn_gate.weight", L.w_gate);
    add(l, "ffn_up.weight", L.w_up);
    add(l, "ffn_up.bias", L.b_up);
    add(l, "ffn_down.weight", L.w_down);
    add(l, "ffn_down.bias", L.b_down);
  }
  g.write(path);
}

}  // namespace tessera
