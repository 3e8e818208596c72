// Hugging Face directories: config.json + safetensors <-> Weights.
// LlamaForCausalLM (and Mistral / Qwen2 / Qwen3, which only add a sliding
// window, q/k/v biases or QK-norm) and GPT2LMHeadModel (Conv1D weights stored (in, out): transposed here).
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap.h"
#include "formats/model_io.h"
#include "kernels/kernels.h"
#include "model/arch.h"
#include "formats/rope_scaling.h"

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
  if (auto s = fit_llama3_rope(f, c.rope_theta, c.rope_dims()))
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

// Every architectures[0] value a registered architecture reads.
std::string supported_hf_archs() {
  std::string r;
  for (const ArchDesc* d : architectures())
    for (const auto& n : d->hf_archs) r += (r.empty() ? "" : ", ") + n;
  return r;
}

// The spec of d whose GGUF role is `role` (validate_shapes names tensors by it).
const TensorSpec* spec_by_role(const ArchDesc& d, const std::string& role) {
  for (const auto* list : {&d.head, &d.layer, &d.tail})
    for (const auto& s : *list)
      if (role == s.gguf) return &s;
  return nullptr;
}

// The name of expert e's tensor from a "{e}" pattern.
std::string expert_name(std::string pattern, int64_t e) {
  const size_t at = pattern.find("{e}");
  return at == std::string::npos ? pattern : pattern.replace(at, 3, std::to_string(e));
}

// Gemma 2 (Gemma2ForCausalLM) names its sandwich norms like this; the spec table
// carries Llama's meaning of post_attention_layernorm (the feed-forward's pre-norm).
TensorSpec gemma_named(const TensorSpec& s) {
  TensorSpec n = s;
  if (s.slot == Slot::PostAttnNorm) n.hf = "post_attention_layernorm.weight";
  if (s.slot == Slot::FfnNorm) n.hf = "pre_feedforward_layernorm.weight";
  return n;
}

// Gemma's RMSNorm multiplies by (1 + w): the gains shifted by delta into an owned f32 copy.
TensorView shifted(Weights& owner, const TensorView& t, float delta) {
  std::vector<uint8_t> buf(size_t(t.numel()) * 4);
  auto* f = reinterpret_cast<float*>(buf.data());
  dequantize_row(t, 0, f);
  for (int64_t i = 0; i < t.numel(); ++i) f[i] += delta;
  return own_buffer(owner, std::move(buf), DType::F32, {t.numel()});
}
bool is_gemma_norm(Slot s) {
  return s == Slot::AttnNorm || s == Slot::PostAttnNorm || s == Slot::FfnNorm || s == Slot::PostFfnNorm ||
         s == Slot::OutNorm;
}

bool is_deepseek(const std::string& arch) { return arch == "DeepseekV2ForCausalLM" || arch == "DeepseekV3ForCausalLM"; }

// An integer field that may be null or absent (then `def`).
int64_t get_int_or(const json& j, const std::string& path, const char* key, int64_t def) {
  return j.contains(key) && !j[key].is_null() ? get_int(j, path, key) : def;
}

// DeepSeek-V2/V3 latent attention: q_lora_rank (null: a plain q_proj), kv_lora_rank,
// qk_nope_head_dim + qk_rope_head_dim (the key length), v_head_dim. RoPE on
// interleaved pairs of the stored layout (transformers' DeepSeek code regroups
// them itself), so the weights load unpermuted.
void read_hf_mla(const json& cfg, const std::string& path, ModelConfig& c) {
  c.mla_q_lora = get_int_or(cfg, path, "q_lora_rank", 0);
  c.mla_kv_lora = get_int(cfg, path, "kv_lora_rank");
  c.mla_rope = get_int(cfg, path, "qk_rope_head_dim");
  c.mla_v_dim = get_int(cfg, path, "v_head_dim");
  c.head_dim = get_int(cfg, path, "qk_nope_head_dim") + c.mla_rope;
  c.rope_style = ops::RopeStyle::Interleaved;
  if (cfg.value("attention_bias", false)) fail(path, ": attention_bias true is not supported for latent attention");
}

// DeepSeek's experts: n_routed_experts (null: a dense model), num_experts_per_tok,
// moe_intermediate_size, n_shared_experts of that width (one matrix of their summed
// width), first_k_dense_replace, scoring_func softmax | sigmoid, topk_method greedy |
// noaux_tc (DeepSeek-V3's selection bias e_score_correction_bias), norm_topk_prob,
// routed_scaling_factor (V2's code scales only unrenormalised weights, V3's always).
void read_hf_deepseek_moe(const json& cfg, const std::string& path, const std::string& arch, ModelConfig& c) {
  c.moe_experts = get_int_or(cfg, path, "n_routed_experts", 0);
  if (c.moe_experts == 0) return;
  c.moe_used = get_int(cfg, path, "num_experts_per_tok");
  c.moe_hidden = get_int(cfg, path, "moe_intermediate_size");
  c.moe_shared_hidden = get_int_or(cfg, path, "n_shared_experts", 0) * c.moe_hidden;
  c.moe_first_dense = get_int_or(cfg, path, "first_k_dense_replace", 0);
  if (get_int_or(cfg, path, "moe_layer_freq", 1) != 1)
    fail(path, ": moe_layer_freq other than 1 (dense layers among MoE ones) is not supported");
  const std::string score = cfg.value("scoring_func", std::string("softmax"));
  if (score == "sigmoid") c.moe_gate = MoeGate::Sigmoid;
  else if (score != "softmax") fail(path, ": scoring_func '", score, "' is not supported (softmax, sigmoid)");
  const std::string method = cfg.value("topk_method", std::string("greedy"));
  if (method != "greedy" && method != "noaux_tc" && method != "group_limited_greedy")
    fail(path, ": topk_method '", method, "' is not supported (greedy, group_limited_greedy, noaux_tc)");
  const int64_t groups = get_int_or(cfg, path, "n_group", 1), topk_groups = get_int_or(cfg, path, "topk_group", groups);
  if (method != "greedy" && topk_groups < groups)
    fail(path, ": group-limited routing (topk_group ", topk_groups, " of n_group ", groups,
         ") is not supported: experts would be chosen from all groups");
  c.moe_norm_topk = cfg.value("norm_topk_prob", false);
  const float scale = cfg.contains("routed_scaling_factor") && cfg["routed_scaling_factor"].is_number()
                          ? cfg["routed_scaling_factor"].get<float>() : 1.f;
  c.moe_scale = arch == "DeepseekV2ForCausalLM" && c.moe_norm_topk ? 1.f : scale;
}

// Mixture-of-experts fields of config.json: Mixtral's num_local_experts (the
// expert width is intermediate_size, weights renormalised), Qwen2-MoE's
// num_experts, moe_intermediate_size, shared_expert_intermediate_size (a
// sigmoid-gated shared expert) and norm_topk_prob.
void read_hf_moe(const json& cfg, const std::string& path, const std::string& arch, ModelConfig& c) {
  if (arch == "MixtralForCausalLM") {
    c.moe_experts = get_int(cfg, path, "num_local_experts");
    c.moe_used = get_int(cfg, path, "num_experts_per_tok");
    c.moe_hidden = c.hidden_dim;
    c.moe_norm_topk = true;
  } else if (arch == "Qwen2MoeForCausalLM") {
    c.moe_experts = get_int(cfg, path, "num_experts");
    c.moe_used = get_int(cfg, path, "num_experts_per_tok");
    c.moe_hidden = get_int(cfg, path, "moe_intermediate_size");
    c.moe_shared_hidden = cfg.contains("shared_expert_intermediate_size")
                              ? get_int(cfg, path, "shared_expert_intermediate_size") : 0;
    c.moe_shared_gate = c.moe_shared_hidden > 0;
    c.moe_norm_topk = cfg.value("norm_topk_prob", false);
    c.moe_every = cfg.value("decoder_sparse_step", int64_t(1));
    if (cfg.contains("mlp_only_layers") && cfg["mlp_only_layers"].is_array() && !cfg["mlp_only_layers"].empty())
      fail(path, ": mlp_only_layers (dense layers among MoE ones) is not supported");
  } else if (is_deepseek(arch)) {
    read_hf_deepseek_moe(cfg, path, arch, c);
  }
}

}  // namespace

Weights load_hf_weights(const std::string& dir) {
  const std::string cpath = (fs::path(dir) / "config.json").string();
  const json cfg = read_config(dir);
  std::string archname = cfg.contains("architectures") && cfg["architectures"].is_array() &&
                                 !cfg["architectures"].empty() && cfg["architectures"][0].is_string()
                             ? cfg["architectures"][0].get<std::string>()
                             : "";
  const ArchDesc* d = find_arch_hf(archname);
  if (!d) fail(cpath, ": architectures[0] '", archname, "' is not supported (", supported_hf_archs(), ")");
  const bool gemma = archname == "Gemma2ForCausalLM";
  auto shared = std::make_shared<safetensors::Collection>(safetensors::Collection::open(dir));
  const auto& st = *shared;
  Weights w;
  auto& c = w.cfg;
  c.arch = d->arch;
  c.name = archname;
  // The architecture's plain keys; defaults first (transformers' own defaults).
  c.n_kv_heads = 0, c.max_seq_len = 2048, c.hidden_dim = 0;
  c.norm_eps = c.arch == Arch::Llama ? 1e-6f : 1e-5f, c.rope_theta = 10000.f;
  for (const ConfigKey& k : d->keys) {
    if (!k.hf) continue;
    const bool has = cfg.contains(k.hf) && !cfg[k.hf].is_null();
    if (!has && k.hf_required) fail(cpath, ": field '", k.hf, "' is missing or not an integer");
    if (!has) continue;
    if (k.i64) c.*k.i64 = get_int(cfg, cpath, k.hf);
    if (k.f32) {
      if (!cfg[k.hf].is_number()) fail(cpath, ": field '", k.hf, "' is not a number");
      c.*k.f32 = cfg[k.hf].get<float>();
    }
  }
  if (c.n_heads <= 0) fail(cpath, ": the number of attention heads must be positive, got ", c.n_heads);
  if (c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
  c.vocab_size = get_int(cfg, cpath, "vocab_size");
  if (c.arch == Arch::Llama) {
    c.head_dim = cfg.contains("head_dim") && cfg["head_dim"].is_number_integer() ? cfg["head_dim"].get<int64_t>()
                                                                                 : c.dim / c.n_heads;
    if (cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object() &&
        cfg["rope_parameters"].contains("rope_theta") && cfg["rope_parameters"]["rope_theta"].is_number())
      c.rope_theta = cfg["rope_parameters"]["rope_theta"].get<float>();
    c.rope_style = ops::RopeStyle::HalfSplit;
    if (is_deepseek(archname)) read_hf_mla(cfg, cpath, c);
    if (gemma) {  // embeddings x sqrt(hidden_size), q x query_pre_attn_scalar^-1/2 (the default scale when it is head_dim)
      c.embed_scale = std::sqrt(float(c.dim));
      const int64_t qpas = get_int_or(cfg, cpath, "query_pre_attn_scalar", c.head_dim);
      if (qpas <= 0) fail(cpath, ": query_pre_attn_scalar must be positive, got ", qpas);
      if (qpas != c.head_dim) c.attn_scale = 1.f / std::sqrt(float(qpas));
      // transformers' Gemma 2 defaults when the keys are absent
      if (!cfg.contains("final_logit_softcapping")) c.final_softcap = 30.f;
      if (!cfg.contains("attn_logit_softcapping")) c.attn_softcap = 50.f;
    }
    if (c.rope_dims() > 0) c.rope_freq_factors = hf_rope_factors(cfg, cpath, c.rope_theta, c.rope_dims());
    // hidden_act (Gemma: hidden_activation) of the gated MLP: silu = SwiGLU, tanh-GELU = GeGLU.
    const char* act_key = cfg.contains("hidden_act") ? "hidden_act" : "hidden_activation";
    const std::string act = cfg.contains(act_key) && cfg[act_key].is_string() ? cfg[act_key].get<std::string>() : "silu";
    if (act == "gelu_pytorch_tanh" || act == "gelu_new") c.ffn_act = FfnAct::GeGLU;
    else if (act != "silu")
      fail(cpath, ": ", act_key, " '", act, "' is not supported (silu, gelu_pytorch_tanh)");
    // Sliding windows: transformers' per-layer "layer_types", else Mistral's
    // every-layer window (use_sliding_window, on by default for Mistral), Qwen2's
    // from layer max_window_layers on.
    const bool has_win = cfg.contains("sliding_window") && cfg["sliding_window"].is_number_integer();
    const int64_t win = has_win ? cfg["sliding_window"].get<int64_t>() : 0;
    std::vector<bool> slides(size_t(std::max<int64_t>(c.n_layers, 0)), false);
    if (cfg.contains("layer_types") && cfg["layer_types"].is_array()) {
      const json& lt = cfg["layer_types"];
      if (int64_t(lt.size()) != c.n_layers)
        fail(cpath, ": field 'layer_types' has ", lt.size(), " entries for ", c.n_layers, " layers");
      for (size_t l = 0; l < lt.size(); ++l) {
        const std::string t = lt[l].is_string() ? lt[l].get<std::string>() : "";
        if (t != "sliding_attention" && t != "full_attention")
          fail(cpath, ": layer_types[", l, "] '", lt[l].dump(), "' is not supported (full_attention, sliding_attention)");
        slides[l] = t == "sliding_attention";
      }
      if (win < 1 && std::find(slides.begin(), slides.end(), true) != slides.end())
        fail(cpath, ": layer_types names sliding layers but 'sliding_window' is not set");
    } else if (gemma && has_win && win > 0) {  // Gemma 2 without layer_types: the even layers slide
      for (int64_t l = 0; l < c.n_layers; l += 2) slides[size_t(l)] = true;
    } else if (has_win && win > 0 && cfg.value("use_sliding_window", archname == "MistralForCausalLM")) {
      const int64_t from = archname == "Qwen2ForCausalLM" ? cfg.value("max_window_layers", int64_t(0)) : 0;
      for (int64_t l = std::max<int64_t>(from, 0); l < c.n_layers; ++l) slides[size_t(l)] = true;
    }
    c.layer_cfg = sliding_window_layers(win, slides);
    read_hf_moe(cfg, cpath, archname, c);
    c.set_moe_layers();
  } else {
    c.head_dim = c.dim / c.n_heads;
    if (c.hidden_dim == 0) c.hidden_dim = 4 * c.dim;  // n_inner null: 4 n_embd
    const std::string act = cfg.value("activation_function", std::string("gelu_new"));
    if (act == "relu") c.ffn_act = FfnAct::ReLU;
    else if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      fail(cpath, ": activation_function '", act, "' is not supported (gelu_new, relu)");
  }
  // The tensors of the architecture's table (conditional ones optional, turning
  // their config flag on); GPT-2 files may omit the "transformer." prefix.
  const bool bare = d->hf_optional_prefix[0] && !st.find(hf_tensor_name(*d, d->head[0], -1));
  std::set<std::string> used;  // every tensor the model reads
  w.layers.resize(size_t(std::max<int64_t>(0, c.n_layers)));
  // A per-expert tensor's name: the spec's own, else Mixtral's (hf_alt) when the file has that.
  auto expert_pattern = [&](const TensorSpec& s0, int64_t l) {
    const TensorSpec s = gemma ? gemma_named(s0) : s0;
    const std::string a = hf_tensor_name(*d, s, l, bare);
    if (!s.hf_alt) return a;
    TensorSpec alt = s;
    alt.hf = s.hf_alt;
    const std::string b = hf_tensor_name(*d, alt, l, bare);
    return st.find(expert_name(b, 0)) && !st.find(expert_name(a, 0)) ? b : a;
  };
  auto load = [&](const TensorSpec& s, int64_t l) {
    const std::string name = expert_pattern(s, l);
    if (is_expert_slot(s.slot)) {  // E tensors (N, K) stacked into (E, N, K), one owned copy
      if (!s.present(c, l)) return;  // config.json says whether a layer has experts
      const auto want = s.shape(c, l);
      const TensorView first = st.tensor(expert_name(name, 0)).view;
      const size_t bytes = first.nbytes();
      std::vector<uint8_t> buf(bytes * size_t(want[0]));
      for (int64_t e = 0; e < want[0]; ++e) {
        const std::string en = expert_name(name, e);
        used.insert(en);
        const TensorView t = st.tensor(en).view;
        if (t.ndim != 2 || t.shape[0] != want[1] || t.shape[1] != want[2] || t.dtype != first.dtype)
          fail(dir, ": tensor ", en, " is ", dtype_name(t.dtype), " ", shape_str(t), ", expert ", e, " needs ",
               dtype_name(first.dtype), " [", want[1], ", ", want[2], "]");
        std::memcpy(buf.data() + size_t(e) * bytes, t.data, bytes);
      }
      slot_ref(w, s.slot, l) = own_buffer(w, std::move(buf), first.dtype, {want[0], want[1], want[2]});
      return;
    }
    used.insert(name);
    if (!st.find(name) && s.present) return;
    TensorView t = st.tensor(name).view;  // a missing required tensor: the reader's error names it
    if (s.hf_conv1d) {
      const auto want = s.shape(c, l);  // ours (out, in); stored (in, out)
      if (t.ndim != 2 || t.shape[0] != want[1] || t.shape[1] != want[0])
        fail(dir, ": tensor ", name, " has shape ", shape_str(t), ", config needs [", want[1], ", ", want[0],
             "] (Conv1D)");
      t = transpose_owned(w, t);
    }
    if (s.slot == Slot::ShGate && t.ndim == 2 && t.shape[0] == 1) t = make_view(t.dtype, {t.shape[1]}, t.data);  // (1, C)
    slot_ref(w, s.slot, l) = t;
    if (s.flag) c.*s.flag = true;
  };
  for (const auto& s : d->head) load(s, -1);
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (const auto& s : d->layer) load(s, l);
  for (const auto& s : d->tail) load(s, -1);
  // An output layer stored as a copy of the embedding (GPT2LMHeadModel's lm_head) is the tied one.
  const TensorView& out = w.output;
  if (!out.empty() && out.dtype == w.tok_embd.dtype && out.nbytes() == w.tok_embd.nbytes() &&
      std::memcmp(out.data, w.tok_embd.data, out.nbytes()) == 0)
    w.output = TensorView{};
  c.tied_embeddings = w.output.empty();
  if (c.tied_embeddings) w.output = w.tok_embd;
  // A tensor the model does not read is a feature it would silently drop (MLP biases, MoE
  // experts, extra norms...): refuse. Buffers some checkpoints carry are not weights.
  // DeepSeek-V3's multi-token prediction layers (num_nextn_predict_layers after the
  // num_hidden_layers) are skipped with a note: generation does not run them, and
  // their block (MoE) is not the dense one Tessera's drafting modules use.
  const int64_t nextn = cfg.value("num_nextn_predict_layers", int64_t(0));
  const auto mtp_layer = [&](const std::string& name) {
    const std::string pre = d->hf_layer_prefix;
    if (nextn <= 0 || name.rfind(pre, 0) != 0) return false;
    const int64_t l = std::atoll(name.c_str() + pre.size());
    return l >= c.n_layers && l < c.n_layers + nextn;
  };
  int64_t skipped = 0;
  for (const std::string& name : st.names()) {
    auto ends = [&](std::string_view suf) { return name.size() >= suf.size() && name.ends_with(suf); };
    if (used.count(name) || ends(".attn.bias") || ends(".attn.masked_bias") || ends(".rotary_emb.inv_freq")) continue;
    if (mtp_layer(name)) {
      ++skipped;
      continue;
    }
    fail(dir, ": tensor ", name, " is not part of the ", archname, " model as Tessera runs it (unsupported feature)");
  }
  if (skipped > 0)
    std::fprintf(stderr, "tessera: %s: %lld tensors of the %lld multi-token prediction layer(s) skipped (not run by "
                         "generation)\n", dir.c_str(), (long long)skipped, (long long)nextn);
  if (c.is_moe() && cfg.value("topk_method", std::string()) == "noaux_tc" && !c.moe_score_bias)
    fail(dir, ": topk_method noaux_tc needs each MoE layer's mlp.gate.e_score_correction_bias; the file has none");
  c.validate(cpath);
  w.owners.push_back(shared);
  norms_to_f32(w);
  if (gemma) {  // (1 + w) gains
    w.out_norm = shifted(w, w.out_norm, 1.f);
    for (auto& L : w.layers)
      for (TensorView* t : {&L.attn_norm, &L.post_attn_norm, &L.ffn_norm, &L.post_ffn_norm})
        if (!t->empty()) *t = shifted(w, *t, 1.f);
  }
  w.validate_shapes(dir, [&](const std::string& role, int64_t l) {
    const TensorSpec* s = spec_by_role(*d, role);
    return s ? hf_tensor_name(*d, gemma ? gemma_named(*s) : *s, l, bare) : role;
  });
  return w;
}

void save_hf(const Weights& in, const std::string& dir) {
  // transformers' Llama family rotates half-split heads; its DeepSeek code takes the interleaved layout.
  const Weights w = in.cfg.mla() ? in : with_rope_style(in, ops::RopeStyle::HalfSplit);
  const auto& c = w.cfg;
  const json rope_scaling = c.arch == Arch::Llama ? hf_rope_scaling(c, dir) : json();  // may fail: before any file
  const int64_t window = c.common_window(dir);
  if (c.norm_placement == NormPlacement::Post)
    fail(dir, ": config.json has no key for post-norm blocks; write GGUF instead");
  if (c.has_sparse_attention())
    fail(dir, ": no transformers class runs dilated / global / random-key attention patterns; write GGUF instead");
  if (c.mtp_depth > 0)
    fail(dir, ": multi-token prediction modules are written to GGUF only (llama.cpp's nextn tensors); write GGUF "
              "instead");
  if (c.moe_hashed())
    fail(dir, ": no transformers class routes experts by a hash (", moe_routing_name(c.moe_routing),
         "); write GGUF instead");
  // Gemma 2 (sandwich norms): what Gemma2ForCausalLM computes must be what the model does; any
  // other Llama-family class has no embedding / query scale, soft-caps or sandwich norms.
  const bool gemma = c.post_norms;
  if (gemma && !c.gemma2_block())
    fail(dir, ": a model with sandwich norms is written as Gemma2ForCausalLM, which implies an embedding scale of "
              "sqrt(hidden_size), GeGLU and no experts, biases or QK-norm; this model differs (write GGUF instead)");
  if (!gemma && c.arch == Arch::Llama && !c.mla() &&
      (c.embed_scale > 0.f || c.attn_scale > 0.f || c.attn_softcap > 0.f || c.final_softcap > 0.f))
    fail(dir, ": an embedding or query scale or soft-caps without Gemma 2's sandwich norms: no transformers class "
              "computes this model (write GGUF instead)");
  if (c.mla() && (c.rope_style != ops::RopeStyle::Interleaved || c.qkv_bias || c.qk_norm || window > 0 ||
                  c.post_norms || c.attn_softcap > 0.f || c.final_softcap > 0.f || c.embed_scale > 0.f ||
                  c.attn_scale > 0.f || c.activation() != FfnAct::SwiGLU))
    fail(dir, ": no transformers DeepSeek class computes this latent-attention model (half-split RoPE, biases, "
              "QK-norm, windows, soft-caps, scales or a non-SwiGLU feed-forward); write GGUF instead");
  if (window > 0 && c.arch != Arch::Llama)
    fail(dir, ": config.json has no sliding-window keys for ", arch_name(c.arch), "; write GGUF instead");
  // Mixture-of-experts models transformers runs: Mixtral (softmax, renormalised, no shared
  // expert), Qwen2-MoE (softmax, a gated shared expert, q/k/v biases).
  const bool mixtral = c.is_moe() && c.moe_shared_hidden == 0 && !c.mla();
  // DeepSeek (latent attention; experts optional): V3's class when the router is sigmoid + selection bias.
  const bool v3 = c.mla() && c.is_moe() && c.moe_gate == MoeGate::Sigmoid;
  if (c.mla() && c.is_moe()) {
    std::string why;
    if (c.moe_every != 1) why = "dense layers between the MoE ones";
    else if (c.moe_shared_gate) why = "a gated shared expert";
    else if (c.moe_shared_hidden % c.moe_hidden != 0) why = "a shared width that is not a whole number of experts";
    else if (v3 != c.moe_score_bias) why = "its router (" + c.router_desc() + "): V2 is softmax without bias, V3 sigmoid with one";
    else if (!v3 && c.moe_norm_topk && c.moe_scale != 1.f) why = "renormalised weights with a scale (V2 scales only unrenormalised ones)";
    if (!why.empty()) fail(dir, ": no transformers DeepSeek class computes this model (", why, "); write GGUF instead");
  } else if (c.is_moe()) {
    std::string why;
    if (c.moe_gate != MoeGate::Softmax || c.moe_score_bias || c.moe_scale != 1.f) why = "its router (" + c.router_desc() + ")";
    else if (c.moe_first_dense > 0) why = "its leading dense layers";
    else if (mixtral && c.moe_every != 1) why = "a Mixtral with dense layers between the MoE ones";
    else if (mixtral && (!c.moe_norm_topk || c.qkv_bias || c.qk_norm || c.moe_hidden != c.hidden_dim))
      why = "a Mixtral with unrenormalised weights, biases, QK-norm or an expert width other than intermediate_size";
    else if (!mixtral && (!c.moe_shared_gate || !c.qkv_bias || c.qk_norm)) why = "a shared expert without Qwen2-MoE's gate and q/k/v biases";
    if (!why.empty())
      fail(dir, ": no transformers mixture-of-experts class computes this model (", why, "); write GGUF instead");
  }
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
  Weights tmp;  // owns the transposed GPT-2 buffers until write()
  const ArchDesc& d = arch_desc(c.arch);
  for (const ConfigKey& k : d.keys) {
    if (!k.hf) continue;
    if (k.i64 && (k.write_if_zero || c.*k.i64 != 0)) cfg[k.hf] = c.*k.i64;
    if (k.f32 && (k.write_if_zero || c.*k.f32 != 0.f)) cfg[k.hf] = c.*k.f32;
  }
  cfg["vocab_size"] = c.vocab_size;
  cfg["tie_word_embeddings"] = c.tied_embeddings;
  if (c.mla()) {
    cfg["architectures"] = {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
    cfg["model_type"] = v3 ? "deepseek_v3" : "deepseek_v2";
    cfg["q_lora_rank"] = c.mla_q_lora > 0 ? json(c.mla_q_lora) : json(nullptr);
    cfg["kv_lora_rank"] = c.mla_kv_lora;
    cfg["qk_nope_head_dim"] = c.head_dim - c.mla_rope;
    cfg["qk_rope_head_dim"] = c.mla_rope;
    cfg["v_head_dim"] = c.mla_v_dim;
    cfg["attention_bias"] = false;
    cfg["hidden_act"] = "silu";
    cfg["rope_scaling"] = rope_scaling;
    cfg["n_routed_experts"] = c.is_moe() ? json(c.moe_experts) : json(nullptr);
    cfg["first_k_dense_replace"] = c.is_moe() ? c.moe_first_dense : c.n_layers;
    if (c.is_moe()) {
      cfg["num_experts_per_tok"] = c.moe_used;
      cfg["moe_intermediate_size"] = c.moe_hidden;
      cfg["n_shared_experts"] = c.moe_shared_hidden / c.moe_hidden;
      cfg["moe_layer_freq"] = 1;
      cfg["scoring_func"] = v3 ? "sigmoid" : "softmax";
      cfg["topk_method"] = v3 ? "noaux_tc" : "greedy";
      cfg["n_group"] = 1;
      cfg["topk_group"] = 1;
      cfg["norm_topk_prob"] = c.moe_norm_topk;
      cfg["routed_scaling_factor"] = c.moe_scale;
    }
  } else if (gemma) {
    cfg["architectures"] = {"Gemma2ForCausalLM"};
    cfg["model_type"] = "gemma2";
    cfg["head_dim"] = c.head_dim;
    cfg["hidden_activation"] = "gelu_pytorch_tanh";
    cfg["hidden_act"] = "gelu_pytorch_tanh";
    cfg["attention_bias"] = false;
    cfg["rope_scaling"] = rope_scaling;
    const double qpas = c.attn_scale > 0.f ? 1.0 / (double(c.attn_scale) * double(c.attn_scale)) : double(c.head_dim);
    if (std::abs(qpas - std::round(qpas)) < 1e-3 * qpas) cfg["query_pre_attn_scalar"] = int64_t(std::llround(qpas));
    else cfg["query_pre_attn_scalar"] = qpas;
    // null, not absent: absent means transformers' defaults (50 and 30)
    cfg["attn_logit_softcapping"] = c.attn_softcap > 0.f ? json(c.attn_softcap) : json(nullptr);
    cfg["final_logit_softcapping"] = c.final_softcap > 0.f ? json(c.final_softcap) : json(nullptr);
  } else if (c.arch == Arch::Llama) {
    // Transformers' classes for the variants: Qwen2 adds q/k/v biases, Qwen3 QK-norm.
    cfg["architectures"] = {c.is_moe() ? (mixtral ? "MixtralForCausalLM" : "Qwen2MoeForCausalLM")
                            : c.qkv_bias ? "Qwen2ForCausalLM" : c.qk_norm ? "Qwen3ForCausalLM" : "LlamaForCausalLM"};
    cfg["model_type"] = c.is_moe() ? (mixtral ? "mixtral" : "qwen2_moe") : c.qkv_bias ? "qwen2" : c.qk_norm ? "qwen3" : "llama";
    if (mixtral) {
      cfg["num_local_experts"] = c.moe_experts;
      cfg["num_experts_per_tok"] = c.moe_used;
    } else if (c.is_moe()) {
      cfg["num_experts"] = c.moe_experts;
      cfg["num_experts_per_tok"] = c.moe_used;
      cfg["moe_intermediate_size"] = c.moe_hidden;
      cfg["shared_expert_intermediate_size"] = c.moe_shared_hidden;
      cfg["norm_topk_prob"] = c.moe_norm_topk;
      cfg["decoder_sparse_step"] = c.moe_every;
      cfg["mlp_only_layers"] = json::array();
    }
    cfg["head_dim"] = c.head_dim;
    cfg["hidden_act"] = c.activation() == FfnAct::GeGLU ? "gelu_pytorch_tanh" : "silu";
    cfg["rope_scaling"] = rope_scaling;
  } else {
    cfg["architectures"] = {"GPT2LMHeadModel"};
    cfg["model_type"] = "gpt2";
    cfg["n_ctx"] = c.max_seq_len;
    cfg["activation_function"] = c.activation() == FfnAct::ReLU ? "relu" : "gelu_new";
  }
  if (window > 0) {  // sliding layers (Llama family only: refused above otherwise)
    cfg["sliding_window"] = window;
    if (!gemma) cfg["use_sliding_window"] = true;
    json lt = json::array();
    for (int64_t l = 0; l < c.n_layers; ++l)
      lt.push_back(c.layer(l).attn == AttnKind::SlidingWindow ? "sliding_attention" : "full_attention");
    cfg["layer_types"] = lt;
  }
  // The architecture's tensors; GPT-2's Conv1D matrices go back to (in, out), f32.
  for_each_tensor_spec(d, c, [&](const TensorSpec& s, int64_t l) {
    const TensorView& t0 = slot_ref(w, s.slot, l);
    const TensorView& t = gemma && is_gemma_norm(s.slot) ? shifted(tmp, t0, -1.f) : t0;  // stored as w - 1
    TensorSpec named = gemma ? gemma_named(s) : s;
    if (mixtral && s.hf_alt) named.hf = s.hf_alt;
    const bool shexp = s.slot == Slot::WGateSh || s.slot == Slot::WUpSh || s.slot == Slot::WDownSh;
    if (c.mla() && shexp) named.hf = s.hf_alt;  // DeepSeek's "mlp.shared_experts.*"
    const std::string name = hf_tensor_name(d, named, l);
    if (is_expert_slot(s.slot)) {  // (E, N, K) -> E tensors (N, K)
      for (int64_t e = 0; e < t.shape[0]; ++e) check(expert_name(name, e), expert_matrix(t, e));
    } else if (s.slot == Slot::ShGate) {  // transformers' shared_expert_gate is a Linear(C, 1)
      check(name, make_view(t.dtype, {1, t.shape[0]}, t.data));
    } else {
      check(name, s.hf_conv1d ? transpose_owned(tmp, t) : t);
    }
  });
  const DType t = w.tok_embd.dtype;
  cfg["torch_dtype"] = t == DType::F16 ? "float16" : t == DType::BF16 ? "bfloat16" : "float32";
  st.write((fs::path(dir) / "model.safetensors").string());
  AtomicFileWriter cw((fs::path(dir) / "config.json").string());
  const std::string text = cfg.dump(2) + "\n";
  cw.write(text.data(), text.size());
  cw.commit();
}

}  // namespace tessera
