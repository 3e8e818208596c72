// Hugging Face directories: config.json + safetensors <-> Weights.
// LlamaForCausalLM (and Mistral / Qwen2 / Qwen3, which only add a sliding
// window, q/k/v biases or QK-norm) and GPT2LMHeadModel (Conv1D weights stored (in, out): transposed here).
#include <cstring>
#include <filesystem>
#include <set>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap.h"
#include "formats/model_io.h"
#include "kernels/kernels.h"
#include "model/rope_scaling.h"

namespace tessera {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open (a Hugging Face model directory needs config.json)");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
}

int64_t get_int(const json& j, const std::string& path, const char* key) {
  if (!j.contains(key) || !j[key].is_number_integer()) fail(path, ": field '", key, "' is missing or not an integer");
  return j[key].get<int64_t>();
}

// The RoPE scaling of a Llama-family config.json as per-frequency divisors (empty: none).
// Read from "rope_scaling" or, as newer transformers write it, "rope_parameters".
std::vector<float> hf_rope_factors(const json& cfg, const std::string& path, double theta, int64_t head_dim) {
  const char* key = cfg.contains("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!cfg.contains(key) || cfg[key].is_null()) return {};
  const json& rs = cfg[key];
  if (!rs.is_object()) fail(path, ": field '", key, "' must be an object or null, got ", rs.dump());
  const char* tkey = rs.contains("rope_type") ? "rope_type" : "type";
  if (rs.contains(tkey) && !rs[tkey].is_string()) fail(path, ": field '", key, ".", tkey, "' must be a string");
  const std::string type = rs.value(tkey, std::string("default"));
  auto num = [&](const char* k) {
    if (!rs.contains(k) || !rs[k].is_number()) fail(path, ": field '", key, ".", k, "' is missing or not a number");
    return rs[k].get<double>();
  };
  if (type == "default") return {};
  if (type == "linear") {
    const double f = num("factor");
    if (!(f > 0)) fail(path, ": field '", key, ".factor' must be positive, got ", f);
    return std::vector<float>(size_t(head_dim / 2), float(f));
  }
  if (type == "llama3") {
    Llama3RopeScaling s;
    s.factor = num("factor");
    s.low_freq_factor = num("low_freq_factor");
    s.high_freq_factor = num("high_freq_factor");
    s.original_context = int64_t(num("original_max_position_embeddings"));
    if (!(s.factor > 0) || !(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor) ||
        s.original_context <= 0)
      fail(path, ": field '", key, "' (", rs.dump(),
           ") needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0");
    return llama3_rope_factors(s, theta, head_dim);
  }
  fail(path, ": field '", key, "' type '", type, "' is not supported (supported: default, linear, llama3)");
}

// config.json's rope_scaling for per-frequency divisors: null, linear or llama3.
json hf_rope_scaling(const ModelConfig& c, const std::string& dir) {
  const auto& f = c.rope_freq_factors;
  if (f.empty()) return nullptr;
  if (auto u = uniform_rope_factor(f)) {
    if (*u == 1.f) return nullptr;
    return {{"rope_type", "linear"}, {"factor", *u}};
  }
  if (auto s = fit_llama3_rope(f, c.rope_theta, c.head_dim))
    return {{"rope_type", "llama3"},
            {"factor", s->factor},
            {"low_freq_factor", s->low_freq_factor},
            {"high_freq_factor", s->high_freq_factor},
            {"original_max_position_embeddings", s->original_context}};
  fail(dir, ": the model's RoPE frequency divisors follow neither linear nor llama3 scaling, which is all "
            "config.json's rope_scaling can express (write GGUF instead)");
}

// GPT-2 Conv1D weight (in, out) -> our (out, in) as an owned buffer, same dtype family (f32).
TensorView transpose_owned(Weights& w, const TensorView& t) {
  const int64_t in = t.shape[0], out = t.shape[1];
  std::vector<uint8_t> buf(size_t(in * out) * 4);
  auto* dst = reinterpret_cast<float*>(buf.data());
  std::vector<float> row(static_cast<size_t>(out));
  for (int64_t i = 0; i < in; ++i) {
    dequantize_row(t, i, row.data());
    for (int64_t o = 0; o < out; ++o) dst[o * in + i] = row[size_t(o)];
  }
  return own_buffer(w, std::move(buf), DType::F32, {out, in});
}

// Error messages name tensors as the checkpoint does.
std::string hf_name(bool gpt2, const std::string& prefix, const std::string& role, int64_t layer) {
  static const std::pair<const char*, const char*> kLlama[] = {
      {"token_embd", "model.embed_tokens"}, {"output_norm", "model.norm"}, {"output", "lm_head"},
      {"attn_norm", "input_layernorm"},     {"attn_q", "self_attn.q_proj"}, {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},       {"attn_output", "self_attn.o_proj"},
      {"ffn_norm", "post_attention_layernorm"}, {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"}};
  static const std::pair<const char*, const char*> kGpt2[] = {
      {"token_embd", "wte"},         {"position_embd", "wpe"}, {"output_norm", "ln_f"}, {"output", "wte"},
      {"attn_norm", "ln_1"},         {"attn_qkv", "attn.c_attn"}, {"attn_output", "attn.c_proj"},
      {"ffn_norm", "ln_2"},          {"ffn_up", "mlp.c_fc"},   {"ffn_down", "mlp.c_proj"}};
  const size_t dot = role.find('.');
  const std::string base = role.substr(0, dot), suffix = role.substr(dot);
  std::string mapped = base;
  if (gpt2) {
    for (const auto& [k, v] : kGpt2)
      if (base == k) mapped = v;
  } else {
    for (const auto& [k, v] : kLlama)
      if (base == k) mapped = v;
  }
  if (layer < 0) return (gpt2 ? prefix : "") + mapped + suffix;
  return gpt2 ? prefix + "h." + std::to_string(layer) + "." + mapped + suffix
              : "model.layers." + std::to_string(layer) + "." + mapped + suffix;
}

}  // namespace

Weights load_hf_weights(const std::string& dir) {
  const std::string cpath = (fs::path(dir) / "config.json").string();
  const json cfg = read_config(dir);
  std::string archname = cfg.contains("architectures") && cfg["architectures"].is_array() &&
                                 !cfg["architectures"].empty() && cfg["architectures"][0].is_string()
                             ? cfg["architectures"][0].get<std::string>()
                             : "";
  auto shared = std::make_shared<safetensors::Collection>(safetensors::Collection::open(dir));
  const auto& st = *shared;
  Weights w;
  auto& c = w.cfg;
  std::set<std::string> used;  // every tensor the model reads
  auto T = [&](const std::string& name) {
    used.insert(name);
    return st.tensor(name).view;
  };
  auto opt = [&](const std::string& name) {
    used.insert(name);
    const auto* t = st.find(name);
    return t ? st.tensor(name).view : TensorView{};
  };
  if (archname == "LlamaForCausalLM" || archname == "MistralForCausalLM" || archname == "Qwen2ForCausalLM" ||
      archname == "Qwen3ForCausalLM") {
    c.arch = Arch::Llama;
    c.dim = get_int(cfg, cpath, "hidden_size");
    c.hidden_dim = get_int(cfg, cpath, "intermediate_size");
    c.n_layers = get_int(cfg, cpath, "num_hidden_layers");
    c.n_heads = get_int(cfg, cpath, "num_attention_heads");
    c.n_kv_heads = cfg.value("num_key_value_heads", c.n_heads);
    if (c.n_heads <= 0) fail(cpath, ": num_attention_heads must be positive");
    c.head_dim = cfg.contains("head_dim") && cfg["head_dim"].is_number_integer() ? cfg["head_dim"].get<int64_t>()
                                                                                 : c.dim / c.n_heads;
    c.vocab_size = get_int(cfg, cpath, "vocab_size");
    c.max_seq_len = cfg.value("max_position_embeddings", int64_t(2048));
    c.norm_eps = cfg.value("rms_norm_eps", 1e-6f);
    c.rope_theta = cfg.value("rope_theta", 10000.f);
    if (cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object() &&
        cfg["rope_parameters"].contains("rope_theta") && cfg["rope_parameters"]["rope_theta"].is_number())
      c.rope_theta = cfg["rope_parameters"]["rope_theta"].get<float>();
    c.rope_style = ops::RopeStyle::HalfSplit;
    auto cap = [&](const char* k) {  // Gemma-2's names; null = off
      return cfg.contains(k) && cfg[k].is_number() ? cfg[k].get<float>() : 0.f;
    };
    c.attn_softcap = cap("attn_logit_softcapping");
    c.final_softcap = cap("final_logit_softcapping");
    if (c.head_dim > 0) c.rope_freq_factors = hf_rope_factors(cfg, cpath, c.rope_theta, c.head_dim);
    if (cfg.value("hidden_act", std::string("silu")) != "silu")
      fail(cpath, ": hidden_act '", cfg["hidden_act"].get<std::string>(), "' is not supported (silu only)");
    if (cfg.contains("sliding_window") && cfg["sliding_window"].is_number_integer() &&
        cfg.value("use_sliding_window", archname == "MistralForCausalLM") &&
        cfg["sliding_window"].get<int64_t>() < c.max_seq_len) {
      // Full attention equals sliding-window attention while the context fits in the window.
      c.max_seq_len = cfg["sliding_window"].get<int64_t>();
    }
    c.name = archname;
    w.tok_embd = T("model.embed_tokens.weight");
    w.out_norm = T("model.norm.weight");
    w.output = opt("lm_head.weight");
    if (w.output.empty()) {
      c.tied_embeddings = true;
      w.output = w.tok_embd;
    } else {
      c.tied_embeddings = false;
    }
    w.layers.resize(size_t(std::max<int64_t>(0, c.n_layers)));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      auto& L = w.layers[size_t(l)];
      L.attn_norm = T(p + "input_layernorm.weight");
      L.wq = T(p + "self_attn.q_proj.weight");
      L.wk = T(p + "self_attn.k_proj.weight");
      L.wv = T(p + "self_attn.v_proj.weight");
      L.bq = opt(p + "self_attn.q_proj.bias");
      L.bk = opt(p + "self_attn.k_proj.bias");
      L.bv = opt(p + "self_attn.v_proj.bias");
      if (!L.bq.empty()) c.qkv_bias = true;
      L.q_norm = opt(p + "self_attn.q_norm.weight");  // Qwen3 / OLMo naming
      L.k_norm = opt(p + "self_attn.k_norm.weight");
      if (!L.q_norm.empty()) c.qk_norm = true;
      if (st.find(p + "self_attn.o_proj.bias")) fail(dir, ": tensor ", p, "self_attn.o_proj.bias is not supported");
      L.wo = T(p + "self_attn.o_proj.weight");
      L.ffn_norm = T(p + "post_attention_layernorm.weight");
      L.w_gate = T(p + "mlp.gate_proj.weight");
      L.w_up = T(p + "mlp.up_proj.weight");
      L.w_down = T(p + "mlp.down_proj.weight");
    }
  } else if (archname == "GPT2LMHeadModel") {
    c.arch = Arch::GPT2;
    c.dim = get_int(cfg, cpath, "n_embd");
    c.n_layers = get_int(cfg, cpath, "n_layer");
    c.n_heads = get_int(cfg, cpath, "n_head");
    c.n_kv_heads = c.n_heads;
    if (c.n_heads <= 0) fail(cpath, ": n_head must be positive");
    c.head_dim = c.dim / c.n_heads;
    c.hidden_dim = cfg.contains("n_inner") && cfg["n_inner"].is_number_integer() ? cfg["n_inner"].get<int64_t>()
                                                                                 : 4 * c.dim;
    c.vocab_size = get_int(cfg, cpath, "vocab_size");
    c.max_seq_len = get_int(cfg, cpath, "n_positions");
    c.norm_eps = cfg.value("layer_norm_epsilon", 1e-5f);
    const std::string act = cfg.value("activation_function", std::string("gelu_new"));
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      fail(cpath, ": activation_function '", act, "' is not supported (gelu_new only)");
    c.name = archname;
    const std::string pre = st.find("transformer.wte.weight") ? "transformer." : "";
    w.tok_embd = T(pre + "wte.weight");
    w.pos_embd = T(pre + "wpe.weight");
    w.out_norm = T(pre + "ln_f.weight");
    w.out_norm_b = T(pre + "ln_f.bias");
    w.output = w.tok_embd;
    c.tied_embeddings = true;
    w.layers.resize(size_t(std::max<int64_t>(0, c.n_layers)));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = pre + "h." + std::to_string(l) + ".";
      auto& L = w.layers[size_t(l)];
      auto conv = [&](const std::string& name, int64_t in, int64_t out) {
        TensorView t = T(name);
        if (t.ndim != 2 || t.shape[0] != in || t.shape[1] != out)
          fail(dir, ": tensor ", name, " has shape ", shape_str(t), ", config needs [", in, ", ", out, "] (Conv1D)");
        return transpose_owned(w, t);
      };
      L.attn_norm = T(p + "ln_1.weight");
      L.attn_norm_b = T(p + "ln_1.bias");
      L.wqkv = conv(p + "attn.c_attn.weight", c.dim, 3 * c.dim);
      L.bqkv = T(p + "attn.c_attn.bias");
      L.wo = conv(p + "attn.c_proj.weight", c.dim, c.dim);
      L.bo = T(p + "attn.c_proj.bias");
      L.ffn_norm = T(p + "ln_2.weight");
      L.ffn_norm_b = T(p + "ln_2.bias");
      L.w_up = conv(p + "mlp.c_fc.weight", c.dim, c.hidden_dim);
      L.b_up = T(p + "mlp.c_fc.bias");
      L.w_down = conv(p + "mlp.c_proj.weight", c.hidden_dim, c.dim);
      L.b_down = T(p + "mlp.c_proj.bias");
    }
  } else {
    fail(cpath, ": architectures[0] '", archname,
         "' is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
         "GPT2LMHeadModel)");
  }
  // A tensor the model does not read is a feature it would silently drop (MLP biases, MoE
  // experts, extra norms...): refuse. Buffers some checkpoints carry are not weights.
  for (const std::string& name : st.names()) {
    auto ends = [&](std::string_view suf) { return name.size() >= suf.size() && name.ends_with(suf); };
    if (used.count(name) || ends(".attn.bias") || ends(".attn.masked_bias") || ends(".rotary_emb.inv_freq")) continue;
    if (c.arch == Arch::GPT2 && (name == "lm_head.weight" || name == "transformer.lm_head.weight")) {
      const TensorView lm = st.tensor(name).view;  // GPT2LMHeadModel ties it to wte; a copy is fine
      if (lm.dtype == w.tok_embd.dtype && lm.nbytes() == w.tok_embd.nbytes() &&
          std::memcmp(lm.data, w.tok_embd.data, lm.nbytes()) == 0)
        continue;
      fail(dir, ": tensor ", name, " differs from wte; an untied GPT-2 output layer is not supported");
    }
    fail(dir, ": tensor ", name, " is not part of the ", archname, " model as Tessera runs it (unsupported feature)");
  }
  c.validate(cpath);
  w.owners.push_back(shared);
  norms_to_f32(w);
  const bool gpt2 = c.arch == Arch::GPT2;
  const std::string prefix = st.find("transformer.wte.weight") ? "transformer." : "";
  w.validate_shapes(dir, [&](const std::string& role, int64_t l) { return hf_name(gpt2, prefix, role, l); });
  return w;
}

void save_hf(const Weights& in, const std::string& dir) {
  const Weights w = with_rope_style(in, ops::RopeStyle::HalfSplit);
  const auto& c = w.cfg;
  const json rope_scaling = c.arch == Arch::Llama ? hf_rope_scaling(c, dir) : json();  // may fail: before any file
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, ": cannot create directory: ", ec.message());
  safetensors::Writer st;
  st.set_metadata("format", "pt");
  json cfg;
  auto check = [&](const std::string& name, const TensorView& t) {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(dir, ": tensor ", name, " is ", dtype_name(t.dtype), "; safetensors output supports f32, f16, bf16 (--type)");
    st.add_tensor(name, t);
  };
  std::vector<std::vector<uint8_t>> keep;  // transposed GPT-2 buffers live until write()
  Weights tmp;
  if (c.arch == Arch::Llama) {
    // Transformers' classes for the variants: Qwen2 adds q/k/v biases, Qwen3 QK-norm.
    cfg["architectures"] = {c.qkv_bias ? "Qwen2ForCausalLM" : c.qk_norm ? "Qwen3ForCausalLM" : "LlamaForCausalLM"};
    cfg["model_type"] = c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : "llama";
    cfg["hidden_size"] = c.dim;
    cfg["intermediate_size"] = c.hidden_dim;
    cfg["num_hidden_layers"] = c.n_layers;
    cfg["num_attention_heads"] = c.n_heads;
    cfg["num_key_value_heads"] = c.n_kv_heads;
    cfg["head_dim"] = c.head_dim;
    cfg["vocab_size"] = c.vocab_size;
    cfg["max_position_embeddings"] = c.max_seq_len;
    cfg["rms_norm_eps"] = c.norm_eps;
    cfg["rope_theta"] = c.rope_theta;
    cfg["hidden_act"] = "silu";
    cfg["tie_word_embeddings"] = c.tied_embeddings;
    cfg["rope_scaling"] = rope_scaling;
    if (c.attn_softcap > 0.f) cfg["attn_logit_softcapping"] = c.attn_softcap;
    if (c.final_softcap > 0.f) cfg["final_logit_softcapping"] = c.final_softcap;
    check("model.embed_tokens.weight", w.tok_embd);
    check("model.norm.weight", w.out_norm);
    if (w.output.data != w.tok_embd.data) check("lm_head.weight", w.output);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const auto& L = w.layers[size_t(l)];
      check(p + "input_layernorm.weight", L.attn_norm);
      check(p + "self_attn.q_proj.weight", L.wq);
      check(p + "self_attn.k_proj.weight", L.wk);
      check(p + "self_attn.v_proj.weight", L.wv);
      if (!L.bq.empty()) {
        check(p + "self_attn.q_proj.bias", L.bq);
        check(p + "self_attn.k_proj.bias", L.bk);
        check(p + "self_attn.v_proj.bias", L.bv);
      }
      if (!L.q_norm.empty()) {
        check(p + "self_attn.q_norm.weight", L.q_norm);
        check(p + "self_attn.k_norm.weight", L.k_norm);
      }
      check(p + "self_attn.o_proj.weight", L.wo);
      check(p + "post_attention_layernorm.weight", L.ffn_norm);
      check(p + "mlp.gate_proj.weight", L.w_gate);
      check(p + "mlp.up_proj.weight", L.w_up);
      check(p + "mlp.down_proj.weight", L.w_down);
    }
  } else {
    cfg["architectures"] = {"GPT2LMHeadModel"};
    cfg["model_type"] = "gpt2";
    cfg["n_embd"] = c.dim;
    cfg["n_layer"] = c.n_layers;
    cfg["n_head"] = c.n_heads;
    cfg["n_inner"] = c.hidden_dim;
    cfg["n_positions"] = c.max_seq_len;
    cfg["n_ctx"] = c.max_seq_len;
    cfg["vocab_size"] = c.vocab_size;
    cfg["layer_norm_epsilon"] = c.norm_eps;
    cfg["activation_function"] = "gelu_new";
    cfg["tie_word_embeddings"] = true;
    auto conv = [&](const std::string& name, const TensorView& t) {  // ours (out, in) -> Conv1D (in, out), f32
      TensorView tt = transpose_owned(tmp, t);
      check(name, tt);
    };
    check("transformer.wte.weight", w.tok_embd);
    check("transformer.wpe.weight", w.pos_embd);
    check("transformer.ln_f.weight", w.out_norm);
    check("transformer.ln_f.bias", w.out_norm_b);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      const auto& L = w.layers[size_t(l)];
      check(p + "ln_1.weight", L.attn_norm);
      check(p + "ln_1.bias", L.attn_norm_b);
      conv(p + "attn.c_attn.weight", L.wqkv);
      check(p + "attn.c_attn.bias", L.bqkv);
      conv(p + "attn.c_proj.weight", L.wo);
      check(p + "attn.c_proj.bias", L.bo);
      check(p + "ln_2.weight", L.ffn_norm);
      check(p + "ln_2.bias", L.ffn_norm_b);
      conv(p + "mlp.c_fc.weight", L.w_up);
      check(p + "mlp.c_fc.bias", L.b_up);
      conv(p + "mlp.c_proj.weight", L.w_down);
      check(p + "mlp.c_proj.bias", L.b_down);
    }
  }
  const DType t = w.tok_embd.dtype;
  cfg["torch_dtype"] = t == DType::F16 ? "float16" : t == DType::BF16 ? "bfloat16" : "float32";
  st.write((fs::path(dir) / "model.safetensors").string());
  AtomicFileWriter cw((fs::path(dir) / "config.json").string());
  const std::string text = cfg.dump(2) + "\n";
  cw.write(text.data(), text.size());
  cw.commit();
}

}  // namespace tessera
