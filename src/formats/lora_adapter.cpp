#include "formats/lora_adapter.h"

#include <cmath>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap.h"
#include "formats/gguf.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "kernels/kernels.h"

namespace fs = std::filesystem;

namespace tessera {

namespace {

// The roles an adapter may target, their Hugging Face module names (Llama / GPT-2)
// and the (in, out) of the matrix in a model of config c.
struct Role {
  const char* gguf;
  const char* hf_llama;
  const char* hf_gpt2;
};
constexpr Role kRoles[] = {
    {"attn_q", "self_attn.q_proj", nullptr},       {"attn_k", "self_attn.k_proj", nullptr},
    {"attn_v", "self_attn.v_proj", nullptr},       {"attn_qkv", nullptr, "attn.c_attn"},
    {"attn_output", "self_attn.o_proj", "attn.c_proj"}, {"ffn_gate", "mlp.gate_proj", nullptr},
    {"ffn_up", "mlp.up_proj", "mlp.c_fc"},         {"ffn_down", "mlp.down_proj", "mlp.c_proj"},
};

TensorView* slot(LayerWeights& L, const std::string& role) {
  if (role == "attn_q") return &L.wq;
  if (role == "attn_k") return &L.wk;
  if (role == "attn_v") return &L.wv;
  if (role == "attn_qkv") return &L.wqkv;
  if (role == "attn_output") return &L.wo;
  if (role == "ffn_gate") return &L.w_gate;
  if (role == "ffn_up") return &L.w_up;
  if (role == "ffn_down") return &L.w_down;
  return nullptr;
}

// (in, out) of role in config c; {0, 0} when the model has no such matrix in layer l.
std::pair<int64_t, int64_t> role_shape(const ModelConfig& c, const std::string& role, int64_t l) {
  const bool gpt2 = c.arch == Arch::GPT2, dense = !c.moe_layer(l);
  const int64_t C = c.dim, H = c.hidden_dim;
  if (role == "attn_q" && !gpt2 && !c.mla()) return {C, c.q_dim()};
  if ((role == "attn_k" || role == "attn_v") && !gpt2 && !c.mla()) return {C, c.kv_dim()};
  if (role == "attn_qkv" && gpt2) return {C, 3 * C};
  if (role == "attn_output") return {gpt2 ? C : c.attn_out_dim(), C};
  if (role == "ffn_gate" && !gpt2 && dense) return {C, H};
  if (role == "ffn_up" && dense) return {C, H};
  if (role == "ffn_down" && dense) return {H, C};
  return {0, 0};
}

// GGUF's RoPE row order for c's architecture (llama.cpp: "llama" interleaved pairs, others half-split).
ops::RopeStyle gguf_rope_style(const ModelConfig& c) {
  const std::string a = gguf_arch_name(c);
  return a == "llama" || a == "deepseek2" ? ops::RopeStyle::Interleaved : ops::RopeStyle::HalfSplit;
}

// B's q / k rows (heads of head_dim) from one RoPE order to the other.
void permute_b(LoraAdapter& ad, const ModelConfig& c, ops::RopeStyle from, ops::RopeStyle to) {
  if (from == to || c.arch != Arch::Llama) return;
  const bool to_inter = to == ops::RopeStyle::Interleaved;
  const int64_t hd = c.head_dim, half = hd / 2;
  for (auto& p : ad.pairs) {
    if (p.role != "attn_q" && p.role != "attn_k") continue;
    const int64_t r = ad.rank, heads = p.out / hd;
    std::vector<float> nb(p.b.size());
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i)
        for (int64_t s = 0; s < 2; ++s) {
          const int64_t inter = h * hd + 2 * i + s, split = h * hd + s * half + i;
          const int64_t dst = to_inter ? inter : split, src = to_inter ? split : inter;
          std::copy(p.b.begin() + src * r, p.b.begin() + (src + 1) * r, nb.begin() + dst * r);
        }
    p.b = std::move(nb);
  }
}

std::vector<float> to_f32(const TensorView& t) {
  const int64_t rows = t.ndim == 1 ? 1 : t.rows(), K = t.ndim == 1 ? t.numel() : t.cols();
  std::vector<float> v(size_t(rows * K));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, r, v.data() + r * K);
  return v;
}

// Checks a pair against the model and the adapter's rank; Error naming where and the tensor.
void check_pair(const LoraAdapter::Pair& p, const ModelConfig& c, int64_t rank, const std::string& where,
                const std::string& name) {
  if (p.layer < 0 || p.layer >= c.n_layers)
    fail(where, ": ", name, ": layer ", p.layer, " does not exist (the model has ", c.n_layers, ")");
  const auto [in, out] = role_shape(c, p.role, p.layer);
  if (in == 0) fail(where, ": ", name, ": the model has no ", p.role, " matrix in layer ", p.layer);
  if (p.in != in || p.out != out)
    fail(where, ": ", name, ": adapter of a (", p.out, " x ", p.in, ") matrix, the model's is (", out, " x ", in, ")");
  if (int64_t(p.a.size()) != rank * in || int64_t(p.b.size()) != out * rank)
    fail(where, ": ", name, ": lora_a / lora_b do not share the rank ", rank);
}

std::string read_file_prefix(const std::string& path, size_t n) {
  std::string s(n, '\0');
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path, ": cannot open");
  s.resize(std::fread(s.data(), 1, n, f));
  std::fclose(f);
  return s;
}

}  // namespace

std::pair<std::string, float> parse_lora_arg(const std::string& arg) {
  const size_t colon = arg.rfind(':');
  if (colon == std::string::npos || colon == 0) return {arg, 1.f};
  const std::string tail = arg.substr(colon + 1);
  char* end = nullptr;
  const float s = std::strtof(tail.c_str(), &end);
  if (tail.empty() || *end != '\0' || !std::isfinite(s)) {
    if (fs::exists(arg)) return {arg, 1.f};  // a path with a colon in it
    fail("--lora ", arg, ": expected FILE or FILE:SCALE (SCALE a number)");
  }
  return {arg.substr(0, colon), s};
}

void write_lora_gguf(const LoraAdapter& in, const ModelConfig& c, const std::string& path) {
  LoraAdapter ad = in;
  permute_b(ad, c, c.rope_style, gguf_rope_style(c));
  gguf::Writer g;
  g.set_string("general.architecture", gguf_arch_name(c));
  g.set_string("general.type", "adapter");
  g.set_string("general.name", "tessera LoRA");
  g.set_string("adapter.type", "lora");
  g.set_f32("adapter.lora.alpha", ad.alpha > 0.f ? ad.alpha : float(ad.rank));
  for (const auto& p : ad.pairs) {
    g.add_tensor(p.base + ".lora_a", make_view(DType::F32, {ad.rank, p.in}, p.a.data()));
    g.add_tensor(p.base + ".lora_b", make_view(DType::F32, {p.out, ad.rank}, p.b.data()));
  }
  g.write(path);
}

void write_lora_peft(const LoraAdapter& in, const ModelConfig& c, const std::string& dir,
                     const std::string& base_model_name) {
  LoraAdapter ad = in;
  permute_b(ad, c, c.rope_style, ops::RopeStyle::HalfSplit);
  const bool gpt2 = c.arch == Arch::GPT2;
  fs::create_directories(dir);
  safetensors::Writer w;
  std::vector<std::string> modules;
  for (const auto& p : ad.pairs) {
    const char* hf = nullptr;
    for (const auto& r : kRoles)
      if (p.role == r.gguf) hf = gpt2 ? r.hf_gpt2 : r.hf_llama;
    if (!hf) fail(dir, ": no Hugging Face module for ", p.base);
    const std::string mod = std::string(gpt2 ? "base_model.model.transformer.h." : "base_model.model.model.layers.") +
                            std::to_string(p.layer) + "." + hf;
    w.add_tensor(mod + ".lora_A.weight", make_view(DType::F32, {ad.rank, p.in}, p.a.data()));
    w.add_tensor(mod + ".lora_B.weight", make_view(DType::F32, {p.out, ad.rank}, p.b.data()));
    const std::string leaf = std::string(hf).substr(std::string(hf).find('.') + 1);
    if (std::find(modules.begin(), modules.end(), leaf) == modules.end()) modules.push_back(leaf);
  }
  w.set_metadata("format", "pt");
  w.write(dir + "/adapter_model.safetensors");
  const nlohmann::json cfg = {{"peft_type", "LORA"},
                              {"task_type", "CAUSAL_LM"},
                              {"base_model_name_or_path", base_model_name},
                              {"r", ad.rank},
                              {"lora_alpha", ad.alpha > 0.f ? ad.alpha : float(ad.rank)},
                              {"lora_dropout", 0.0},
                              {"target_modules", modules},
                              {"fan_in_fan_out", gpt2},
                              {"bias", "none"},
                              {"use_rslora", false},
                              {"inference_mode", true}};
  const std::string js = cfg.dump(2) + "\n";
  AtomicFileWriter f(dir + "/adapter_config.json");
  f.write(js.data(), js.size());
  f.commit();
}

LoraAdapter read_lora_adapter(const std::string& path, const ModelConfig& c) {
  LoraAdapter ad;
  if (fs::is_directory(path)) {  // PEFT
    const std::string cfg_path = path + "/adapter_config.json", st_path = path + "/adapter_model.safetensors";
    if (!fs::exists(cfg_path)) fail(path, ": no adapter_config.json (not a PEFT adapter directory)");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(cfg_path));
      if (j.value("peft_type", std::string("LORA")) == "PREFIX_TUNING")
        fail(path, ": a prefix-tuning adapter (peft_type PREFIX_TUNING): pass it with --prefix-adapter");
      if (j.value("peft_type", std::string("LORA")) != "LORA")
        fail(cfg_path, ": peft_type ", j["peft_type"].dump(), " is not LORA");
      ad.rank = j.at("r").get<int64_t>();
      ad.alpha = j.value("lora_alpha", float(ad.rank));
      if (j.value("use_rslora", false)) ad.alpha *= std::sqrt(float(ad.rank));  // alpha / sqrt(r)
      for (const char* k : {"rank_pattern", "alpha_pattern"})
        if (j.contains(k) && !j[k].is_null() && !j[k].empty())
          fail(cfg_path, ": per-module ", k, " is not supported");
    } catch (const nlohmann::json::exception& e) {
      fail(cfg_path, ": ", e.what());
    }
    if (ad.rank <= 0) fail(cfg_path, ": r must be positive, got ", ad.rank);
    const auto f = safetensors::File::open(st_path);
    const bool gpt2 = c.arch == Arch::GPT2;
    const std::string prefix = gpt2 ? "base_model.model.transformer.h." : "base_model.model.model.layers.";
    std::map<std::string, size_t> index;  // base name -> pair
    for (const auto& t : f->tensors()) {
      const std::string& n = t.name;
      const bool is_a = n.size() > 14 && n.compare(n.size() - 14, 14, ".lora_A.weight") == 0;
      const bool is_b = n.size() > 14 && n.compare(n.size() - 14, 14, ".lora_B.weight") == 0;
      if (!is_a && !is_b) fail(st_path, ": ", n, ": not a lora_A / lora_B weight (only LoRA on linear layers is supported)");
      if (n.rfind(prefix, 0) != 0) fail(st_path, ": ", n, ": expected a name starting ", prefix);
      const std::string rest = n.substr(prefix.size(), n.size() - prefix.size() - 14);  // "3.self_attn.q_proj"
      const size_t dot = rest.find('.');
      int64_t layer = -1;
      try {
        layer = std::stoll(rest.substr(0, dot));
      } catch (...) {
        fail(st_path, ": ", n, ": no layer number");
      }
      const std::string mod = dot == std::string::npos ? "" : rest.substr(dot + 1);
      std::string role;
      for (const auto& r : kRoles)
        if (mod == (gpt2 ? (r.hf_gpt2 ? r.hf_gpt2 : "") : (r.hf_llama ? r.hf_llama : ""))) role = r.gguf;
      if (role.empty()) fail(st_path, ": ", n, ": module '", mod, "' is not a linear layer Tessera adapts");
      if (!t.supported) fail(st_path, ": ", n, ": ", t.why_unsupported);
      const std::string base = "blk." + std::to_string(layer) + "." + role + ".weight";
      auto [it, fresh] = index.emplace(base, ad.pairs.size());
      if (fresh) ad.pairs.push_back({base, layer, 0, 0, role, {}, {}});
      auto& p = ad.pairs[it->second];
      if (t.shape.size() != 2) fail(st_path, ": ", n, ": expected a matrix");
      if (is_a) p.a = to_f32(t.view), p.in = t.shape[1];
      else p.b = to_f32(t.view), p.out = t.shape[0];
    }
    for (auto& p : ad.pairs) check_pair(p, c, ad.rank, st_path, p.base);
    if (ad.pairs.empty()) fail(st_path, ": no LoRA tensors");
    permute_b(ad, c, ops::RopeStyle::HalfSplit, c.rope_style);
    return ad;
  }
  if (!fs::exists(path)) fail(path, ": no such LoRA adapter file or directory");
  if (read_file_prefix(path, 4) != "GGUF")
    fail(path, ": not a LoRA adapter (expected a GGUF LoRA file or a PEFT directory with adapter_config.json)");
  const auto f = gguf::File::open(path);
  if (f->get_string_or("adapter.type", "") == "bottleneck")
    fail(path, ": a bottleneck adapter (adapter.type bottleneck): pass it with --bottleneck-adapter");
  if (f->get_string_or("general.type", "") != "adapter" || f->get_string_or("adapter.type", "") != "lora")
    fail(path, ": not a LoRA adapter (general.type must be 'adapter' and adapter.type 'lora')");
  const std::string arch = f->get_string_or("general.architecture", "");
  if (arch != gguf_arch_name(c))
    fail(path, ": adapter for a '", arch, "' model; this model is '", gguf_arch_name(c), "'");
  ad.alpha = float(f->get_float_or("adapter.lora.alpha", 0.0));
  std::map<std::string, size_t> index;
  for (const auto& t : f->tensors()) {
    const std::string& n = t.name;
    const bool is_a = n.size() > 7 && n.compare(n.size() - 7, 7, ".lora_a") == 0;
    const bool is_b = n.size() > 7 && n.compare(n.size() - 7, 7, ".lora_b") == 0;
    if (!is_a && !is_b) fail(path, ": tensor ", n, " is not a .lora_a / .lora_b tensor");
    const std::string base = n.substr(0, n.size() - 7);  // "blk.3.attn_q.weight"
    int64_t layer = -1;
    std::string role;
    if (base.rfind("blk.", 0) == 0) {
      const size_t d1 = base.find('.', 4), d2 = base.rfind(".weight");
      try {
        layer = std::stoll(base.substr(4, d1 - 4));
      } catch (...) {
      }
      if (d1 != std::string::npos && d2 != std::string::npos && d2 > d1) role = base.substr(d1 + 1, d2 - d1 - 1);
    }
    bool known = false;
    for (const auto& r : kRoles) known |= role == r.gguf;
    if (layer < 0 || !known) fail(path, ": tensor ", n, ": not an adapter of a linear layer Tessera adapts");
    if (t.shape.size() != 2) fail(path, ": tensor ", n, ": expected a matrix");
    auto [it, fresh] = index.emplace(base, ad.pairs.size());
    if (fresh) ad.pairs.push_back({base, layer, 0, 0, role, {}, {}});
    auto& p = ad.pairs[it->second];
    if (is_a) {
      p.a = to_f32(t.view), p.in = t.shape[1];
      if (ad.rank == 0) ad.rank = t.shape[0];
    } else {
      p.b = to_f32(t.view), p.out = t.shape[0];
    }
  }
  if (ad.pairs.empty()) fail(path, ": no LoRA tensors");
  for (auto& p : ad.pairs) check_pair(p, c, ad.rank, path, p.base);
  permute_b(ad, c, gguf_rope_style(c), c.rope_style);
  return ad;
}

void apply_lora(Weights& w, const LoraAdapter& ad, float mult, const std::string& where) {
  const double s = double(mult) * double(ad.scale());
  const int64_t r = ad.rank;
  for (const auto& p : ad.pairs) {
    check_pair(p, w.cfg, r, where, p.base);
    TensorView* t = slot(w.layers[size_t(p.layer)], p.role);
    if (!t || t->empty()) fail(where, ": the model has no tensor ", p.base);
    if (t->rows() != p.out || t->cols() != p.in) fail(where, ": ", p.base, ": shape differs from the adapter's");
    const DType dst = dtype_can_quantize(t->dtype) ? t->dtype : DType::F32;
    std::vector<uint8_t> buf(dtype_row_bytes(dst, p.in) * size_t(p.out));
    const TensorView src = *t;
#pragma omp parallel
    {
      std::vector<float> row(size_t(p.in));
#pragma omp for schedule(dynamic, 16)
      for (int64_t o = 0; o < p.out; ++o) {
        dequantize_row(src, o, row.data());
        for (int64_t i = 0; i < p.in; ++i) {
          double acc = 0;
          for (int64_t k = 0; k < r; ++k) acc += double(p.b[size_t(o * r + k)]) * double(p.a[size_t(k * p.in + i)]);
          row[size_t(i)] += float(s * acc);
        }
        quantize_row(dst, row.data(), buf.data() + size_t(o) * dtype_row_bytes(dst, p.in), p.in);
      }
    }
    *t = own_buffer(w, std::move(buf), dst, {p.out, p.in});
  }
}

namespace {
// Each key row's heads (head_dim each) from one RoPE order to the other (Llama family).
void permute_keys(KvPrefix& px, const ModelConfig& c, ops::RopeStyle from, ops::RopeStyle to) {
  if (from == to || c.arch != Arch::Llama) return;
  const bool to_inter = to == ops::RopeStyle::Interleaved;
  const int64_t hd = c.head_dim, half = hd / 2, heads = px.kv_dim / hd;
  std::vector<float> row(size_t(px.kv_dim));
  for (int64_t l = 0; l < px.n_layers; ++l)
    for (int64_t p = 0; p < px.len; ++p) {
      float* k = px.kv.data() + size_t((l * 2 * px.len + p) * px.kv_dim);
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < half; ++i)
          for (int64_t s = 0; s < 2; ++s) {
            const int64_t inter = h * hd + 2 * i + s, split = h * hd + s * half + i;
            row[size_t(to_inter ? inter : split)] = k[to_inter ? split : inter];
          }
      std::copy(row.begin(), row.end(), k);
    }
}
}  // namespace

bool is_prefix_adapter(const std::string& path) {
  const std::string cfg_path = path + "/adapter_config.json";
  if (!fs::is_directory(path) || !fs::exists(cfg_path)) return false;
  try {
    return nlohmann::json::parse(read_file(cfg_path)).value("peft_type", std::string()) == "PREFIX_TUNING";
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// PEFT's layout: "prompt_embeddings" (P, n_layers * 2 * token_dim), each virtual token's row
// [layer 0 keys, layer 0 values, layer 1 keys, ...], heads of head_dim in Hugging Face's
// (half-split) RoPE order; token_dim = num_key_value_heads * head_dim (peft's GQA rule).
void write_prefix_peft(const KvPrefix& in, const ModelConfig& c, const std::string& dir,
                       const std::string& base_model_name) {
  KvPrefix px = in;
  permute_keys(px, c, c.rope_style, ops::RopeStyle::HalfSplit);
  const int64_t P = px.len, D = px.kv_dim, Lr = px.n_layers;
  std::vector<float> emb(size_t(P * Lr * 2 * D));
  for (int64_t p = 0; p < P; ++p)
    for (int64_t l = 0; l < Lr; ++l)
      for (int64_t kv = 0; kv < 2; ++kv) {
        const float* src = (kv ? px.v(l) : px.k(l)) + p * D;
        std::copy(src, src + D, emb.begin() + ((p * Lr + l) * 2 + kv) * D);
      }
  fs::create_directories(dir);
  safetensors::Writer w;
  w.add_tensor("prompt_embeddings", make_view(DType::F32, {P, Lr * 2 * D}, emb.data()));
  w.set_metadata("format", "pt");
  w.write(dir + "/adapter_model.safetensors");
  const int64_t heads = c.arch == Arch::GPT2 ? c.n_heads : c.n_kv_heads;
  const nlohmann::json cfg = {{"peft_type", "PREFIX_TUNING"},
                              {"task_type", "CAUSAL_LM"},
                              {"base_model_name_or_path", base_model_name},
                              {"num_virtual_tokens", P},
                              {"token_dim", D},
                              {"num_transformer_submodules", 1},
                              {"num_attention_heads", heads},
                              {"num_layers", Lr},
                              {"encoder_hidden_size", D},
                              {"prefix_projection", false},
                              {"inference_mode", true}};
  const std::string js = cfg.dump(2) + "\n";
  AtomicFileWriter f(dir + "/adapter_config.json");
  f.write(js.data(), js.size());
  f.commit();
}

KvPrefix read_prefix_adapter(const std::string& dir, const ModelConfig& c) {
  const std::string cfg_path = dir + "/adapter_config.json", st_path = dir + "/adapter_model.safetensors";
  if (!fs::is_directory(dir) || !fs::exists(cfg_path))
    fail(dir, ": not a PEFT adapter directory (no adapter_config.json)");
  KvPrefix px;
  int64_t heads = 0, token_dim = 0, subs = 1;
  try {
    const nlohmann::json j = nlohmann::json::parse(read_file(cfg_path));
    if (j.value("peft_type", std::string()) != "PREFIX_TUNING")
      fail(cfg_path, ": peft_type ", j.value("peft_type", nlohmann::json()).dump(), " is not PREFIX_TUNING");
    if (j.value("prefix_projection", false))
      fail(cfg_path, ": prefix_projection (an MLP re-parameterisation) is not supported; save the projected prefix");
    px.len = j.at("num_virtual_tokens").get<int64_t>();
    px.n_layers = j.at("num_layers").get<int64_t>();
    token_dim = j.at("token_dim").get<int64_t>();
    heads = j.value("num_attention_heads", int64_t(0));
    subs = j.value("num_transformer_submodules", int64_t(1));
  } catch (const nlohmann::json::exception& e) {
    fail(cfg_path, ": ", e.what());
  }
  const int64_t want_heads = c.arch == Arch::GPT2 ? c.n_heads : c.n_kv_heads;
  if (subs != 1) fail(cfg_path, ": num_transformer_submodules ", subs, " (an encoder-decoder adapter); expected 1");
  if (px.n_layers != c.n_layers) fail(cfg_path, ": num_layers ", px.n_layers, ", the model has ", c.n_layers);
  if (token_dim != c.cache_kv_dim() || (heads != 0 && heads != want_heads))
    fail(cfg_path, ": token_dim ", token_dim, " in ", heads, " heads; the model's keys are ", c.cache_kv_dim(),
         " wide in ", want_heads, " heads");
  if (px.len <= 0) fail(cfg_path, ": num_virtual_tokens must be positive, got ", px.len);
  px.kv_dim = token_dim;
  const auto f = safetensors::File::open(st_path);
  const safetensors::TensorInfo* t = nullptr;
  for (const auto& x : f->tensors())
    if (x.name == "prompt_embeddings") t = &x;
  if (!t) fail(st_path, ": no prompt_embeddings tensor");
  if (!t->supported) fail(st_path, ": prompt_embeddings: ", t->why_unsupported);
  const int64_t P = px.len, D = px.kv_dim, Lr = px.n_layers;
  if (t->shape.size() != 2 || t->shape[0] != P || t->shape[1] != Lr * 2 * D)
    fail(st_path, ": prompt_embeddings should be (", P, ", ", Lr * 2 * D, ")");
  const std::vector<float> emb = to_f32(t->view);
  px.kv.assign(size_t(Lr * 2 * P * D), 0.f);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t l = 0; l < Lr; ++l)
      for (int64_t kv = 0; kv < 2; ++kv) {
        const float* src = emb.data() + ((p * Lr + l) * 2 + kv) * D;
        std::copy(src, src + D, px.kv.begin() + ((l * 2 + kv) * P + p) * D);
      }
  for (float x : px.kv)
    if (!std::isfinite(x)) fail(st_path, ": prompt_embeddings holds a non-finite value");
  permute_keys(px, c, ops::RopeStyle::HalfSplit, c.rope_style);
  return px;
}

// GGUF: general.type "adapter", adapter.type "bottleneck", adapter.bottleneck.dim,
// adapter.bottleneck.activation ("relu" / "gelu"), f32 tensors
// "blk.N.{attn,ffn}_adapter_{down,up}.{weight,bias}" (down (m, C), up (C, m)).
void write_bottleneck_gguf(const BottleneckAdapter& ad, const ModelConfig& c, const std::string& path) {
  gguf::Writer g;
  g.set_string("general.architecture", gguf_arch_name(c));
  g.set_string("general.type", "adapter");
  g.set_string("general.name", "tessera bottleneck adapter");
  g.set_string("adapter.type", "bottleneck");
  g.set_u32("adapter.bottleneck.dim", uint32_t(ad.dim));
  g.set_string("adapter.bottleneck.activation", ad.gelu ? "gelu" : "relu");
  const int64_t m = ad.dim, C = c.dim;
  for (size_t l = 0; l < ad.layers.size(); ++l)
    for (int s = 0; s < 2; ++s) {
      const auto& a = ad.layers[l][size_t(s)];
      if (a.down.empty()) continue;
      const std::string b = "blk." + std::to_string(l) + (s ? ".ffn_adapter_" : ".attn_adapter_");
      g.add_tensor(b + "down.weight", make_view(DType::F32, {m, C}, a.down.data()));
      g.add_tensor(b + "down.bias", make_view(DType::F32, {m}, a.down_b.data()));
      g.add_tensor(b + "up.weight", make_view(DType::F32, {C, m}, a.up.data()));
      g.add_tensor(b + "up.bias", make_view(DType::F32, {C}, a.up_b.data()));
    }
  g.write(path);
}

BottleneckAdapter read_bottleneck_adapter(const std::string& path, const ModelConfig& c) {
  if (!fs::exists(path)) fail(path, ": no such adapter file");
  if (read_file_prefix(path, 4) != "GGUF") fail(path, ": not a GGUF file (a bottleneck adapter is one)");
  const auto f = gguf::File::open(path);
  if (f->get_string_or("general.type", "") != "adapter" || f->get_string_or("adapter.type", "") != "bottleneck")
    fail(path, ": not a bottleneck adapter (general.type must be 'adapter' and adapter.type 'bottleneck')");
  const std::string arch = f->get_string_or("general.architecture", "");
  if (arch != gguf_arch_name(c))
    fail(path, ": adapter for a '", arch, "' model; this model is '", gguf_arch_name(c), "'");
  BottleneckAdapter ad;
  ad.dim = f->get_int_or("adapter.bottleneck.dim", 0);
  const std::string act = f->get_string_or("adapter.bottleneck.activation", "");
  if (act != "relu" && act != "gelu") fail(path, ": adapter.bottleneck.activation '", act, "' is not relu or gelu");
  ad.gelu = act == "gelu";
  if (ad.dim <= 0) fail(path, ": adapter.bottleneck.dim must be positive, got ", ad.dim);
  ad.layers.resize(size_t(c.n_layers));
  const int64_t m = ad.dim, C = c.dim;
  for (const auto& t : f->tensors()) {
    const std::string& n = t.name;
    int64_t layer = -1;
    size_t d1 = std::string::npos;
    if (n.rfind("blk.", 0) == 0) {
      d1 = n.find('.', 4);
      try {
        layer = std::stoll(n.substr(4, d1 - 4));
      } catch (...) {
      }
    }
    const std::string rest = d1 == std::string::npos ? "" : n.substr(d1 + 1);
    const int site = rest.rfind("attn_adapter_", 0) == 0 ? 0 : rest.rfind("ffn_adapter_", 0) == 0 ? 1 : -1;
    if (layer < 0 || layer >= c.n_layers || site < 0)
      fail(path, ": tensor ", n, ": not blk.N.attn_adapter_* / ffn_adapter_* of a layer of this ", c.n_layers, "-layer model");
    const std::string part = rest.substr(site == 0 ? 13 : 12);
    auto& a = ad.layers[size_t(layer)][size_t(site)];
    std::vector<float>* dst = part == "down.weight" ? &a.down : part == "down.bias" ? &a.down_b
                              : part == "up.weight" ? &a.up : part == "up.bias" ? &a.up_b : nullptr;
    const int64_t want = part == "down.weight" || part == "up.weight" ? m * C : part == "down.bias" ? m : C;
    if (!dst) fail(path, ": tensor ", n, ": expected down/up .weight/.bias");
    if (t.view.numel() != want) fail(path, ": tensor ", n, ": ", t.view.numel(), " values, expected ", want);
    *dst = to_f32(t.view);
  }
  int64_t sites = 0;
  for (size_t l = 0; l < ad.layers.size(); ++l)
    for (int s = 0; s < 2; ++s) {
      const auto& a = ad.layers[l][size_t(s)];
      const int have = !a.down.empty() + !a.down_b.empty() + !a.up.empty() + !a.up_b.empty();
      if (have != 0 && have != 4) fail(path, ": layer ", l, " ", s ? "ffn" : "attn", " adapter lacks a tensor");
      sites += have == 4;
      for (const auto* v : {&a.down, &a.down_b, &a.up, &a.up_b})
        for (float x : *v)
          if (!std::isfinite(x)) fail(path, ": layer ", l, ": a non-finite value");
    }
  if (sites == 0) fail(path, ": no adapter tensors");
  return ad;
}

}  // namespace tessera
