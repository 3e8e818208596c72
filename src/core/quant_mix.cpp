#include "core/quant_mix.h"

#include <cctype>

namespace tessera {

namespace {

// llama_ftype values (llama.h).
constexpr QuantMix kMixes[] = {
    {"f32", 0, DType::F32},       {"f16", 1, DType::F16},       {"bf16", 32, DType::BF16},
    {"q8_0", 7, DType::Q8_0},     {"q4_0", 2, DType::Q4_0},     {"q4_1", 3, DType::Q4_1},
    {"q5_0", 8, DType::Q5_0},     {"q5_1", 9, DType::Q5_1},     {"iq4_nl", 25, DType::IQ4_NL},
    {"q2_k", 10, DType::Q2_K},    {"q3_k_s", 11, DType::Q3_K},  {"q3_k_m", 12, DType::Q3_K},
    {"q3_k_l", 13, DType::Q3_K},  {"q4_k_s", 14, DType::Q4_K},  {"q4_k_m", 15, DType::Q4_K},
    {"q5_k_s", 16, DType::Q5_K},  {"q5_k_m", 17, DType::Q5_K},  {"q6_k", 18, DType::Q6_K},
};
constexpr std::pair<const char*, const char*> kAliases[] = {{"q3_k", "q3_k_m"}, {"q4_k", "q4_k_m"}, {"q5_k", "q5_k_m"}};

bool is(const QuantMix& m, const char* name) { return std::string_view(m.name) == name; }
bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third in between.
bool more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The rules of llama_tensor_get_type for the mixes above (dense models).
DType rule_type(const QuantMix& m, std::string_view name, int64_t i, int64_t n, int64_t cols, int64_t n_gqa,
                bool has_output, const MoeMixInfo& moe) {
  const DType base = m.base;
  if (contains(name, "ffn_gate_inp")) return DType::F32;  // routers stay as they are
  const bool eight = moe.n_expert == 8;  // llama.cpp's Mixtral-8x7B rules
  if (eight && (contains(name, "attn_v.weight") || contains(name, "attn_k.weight")) && name != "output.weight")
    return DType::Q8_0;
  if (name == "output.weight" || (!has_output && name == "token_embd.weight")) {
    if (cols % dtype_block_elems(base) != 0) return DType::Q8_0;
    return base == DType::Q8_0 ? DType::Q8_0 : DType::Q6_K;
  }
  if (name == "token_embd.weight") return base;
  if (contains(name, "attn_v.weight")) {
    if (is(m, "q2_k")) return n_gqa >= 4 ? DType::Q4_K : DType::Q3_K;
    if (is(m, "q3_k_m")) return i < 2 ? DType::Q5_K : DType::Q4_K;
    if (is(m, "q3_k_l")) return DType::Q5_K;
    if (is(m, "iq4_nl") && n_gqa >= 4) return DType::Q5_K;
    if ((is(m, "q4_k_m") || is(m, "q5_k_m")) && more_bits(i, n)) return DType::Q6_K;
    if (is(m, "q4_k_s") && i < 4) return DType::Q5_K;
    return base;
  }
  if (contains(name, "ffn_down")) {
    if (moe.n_ffn_down > 0) n = moe.n_ffn_down;
    if (is(m, "q2_k")) return DType::Q3_K;
    if (is(m, "q3_k_m")) return i < n / 16 ? DType::Q5_K : DType::Q4_K;
    if (is(m, "q3_k_l")) return DType::Q5_K;
    if (is(m, "q4_k_m")) return more_bits(i, n) ? DType::Q6_K : base;
    if (is(m, "iq4_nl") && i < n / 8) return DType::Q5_K;
    if (is(m, "q5_k_m") && more_bits(i, n)) return DType::Q6_K;
    if (is(m, "q4_k_s") && i < n / 8) return DType::Q5_K;
    return base;
  }
  if (contains(name, "attn_output.weight")) {
    if (eight)
      return is(m, "q2_k") || is(m, "q3_k_s") || is(m, "q3_k_m") || is(m, "iq4_nl") || is(m, "q4_k_s") || is(m, "q4_k_m")
                 ? DType::Q5_K
                 : base;
    if (is(m, "q2_k")) return DType::Q3_K;
    if (is(m, "q3_k_m")) return DType::Q4_K;
    if (is(m, "q3_k_l")) return DType::Q5_K;
    return base;
  }
  if (contains(name, "attn_qkv.weight")) {
    if (is(m, "q3_k_m") || is(m, "q3_k_l")) return DType::Q4_K;
    if (is(m, "q4_k_m")) return DType::Q5_K;
    if (is(m, "q5_k_m")) return DType::Q6_K;
  }
  return base;
}

}  // namespace

std::optional<QuantMix> quant_mix_from_name(std::string_view name) {
  std::string s(name);
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (auto [alias, target] : kAliases)
    if (s == alias) s = target;
  for (const QuantMix& m : kMixes)
    if (s == m.name) return m;
  return std::nullopt;
}

std::optional<QuantMix> quant_mix_from_ftype(uint32_t ftype) {
  for (const QuantMix& m : kMixes)
    if (m.ftype == ftype) return m;
  return std::nullopt;
}

std::string quant_mix_names() {
  std::string s;
  for (const QuantMix& m : kMixes) s += (s.empty() ? "" : ", ") + std::string(m.name);
  return s;
}

bool quant_mix_quantizes(const QuantMix& m) {
  return m.base != DType::F32 && m.base != DType::F16 && m.base != DType::BF16;
}

DType quant_mix_tensor_type(const QuantMix& m, std::string_view name, int64_t layer, int64_t n_layers, int64_t cols,
                            int64_t n_gqa, bool has_output, bool* fallback, MoeMixInfo moe) {
  if (fallback) *fallback = false;
  if (!quant_mix_quantizes(m)) return m.base;
  DType t = rule_type(m, name, layer, n_layers, cols, n_gqa, has_output, moe);
  if (t == DType::F32) return t;
  if (cols % dtype_block_elems(t) == 0) return t;
  // llama.cpp's fallbacks for rows that are not a multiple of 256, then f16 (where
  // llama.cpp refuses the legacy types, this keeps the matrix in f16).
  switch (t) {
    case DType::Q2_K:
    case DType::Q3_K: t = DType::IQ4_NL; break;
    case DType::Q4_K: t = DType::Q5_0; break;
    case DType::Q5_K: t = DType::Q5_1; break;
    case DType::Q6_K: t = DType::Q8_0; break;
    default: break;
  }
  if (cols % dtype_block_elems(t) != 0) t = DType::F16;
  if (fallback) *fallback = true;
  return t;
}

}  // namespace tessera
