// llama.cpp's file types ("quant mixes"): the weight type of most matrices
// plus the per-tensor exceptions llama-quantize makes (llama_tensor_get_type):
// the output matrix (or the tied embedding) at Q6_K, some attention-value and
// down-projection layers at more bits, and fallbacks for matrices whose rows
// are not a multiple of the block size. `tessera convert --type MIX` writes
// these, so a file has the tensor types a llama.cpp user expects.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/dtype.h"

namespace tessera {

struct QuantMix {
  const char* name;  // llama.cpp's name, lower case: "q4_k_m"
  uint32_t ftype;    // general.file_type (llama_ftype)
  DType base;        // the type of most matrices
};

// By name (case-insensitive); also llama.cpp's aliases q3_k, q4_k, q5_k (the _m mixes).
std::optional<QuantMix> quant_mix_from_name(std::string_view name);
// By general.file_type; nullopt for file types without a mix here.
std::optional<QuantMix> quant_mix_from_ftype(uint32_t ftype);
// "f32, f16, bf16, q8_0, q4_0, ..." for help texts and errors.
std::string quant_mix_names();
// Whether the mix quantizes (false for f32 / f16 / bf16, where every matrix
// simply takes the base type).
bool quant_mix_quantizes(const QuantMix& m);

// What llama-quantize stores a matrix as under mix m. name: its GGUF name
// without "blk.N." ("attn_v.weight", "ffn_down.weight", "token_embd.weight",
// "output.weight"); layer of n_layers (-1 for globals); cols: elements per
// row; n_gqa: query heads per key/value head; has_output: an untied output
// matrix exists (else the token embedding is the output). *fallback is set
// when the row length forced another type than the rules chose.
// Mixture-of-experts models: n_expert routed experts (llama.cpp stores the
// attention k / v of 8-expert models in Q8_0 and their attention output in
// Q5_K under the low-bit K mixes), and n_ffn_down, the number of matrices
// whose name holds "ffn_down" (routed and shared experts count apart: llama.cpp
// places a down projection's layer among that many); 0: n_layers. Routers
// (ffn_gate_inp) are not quantized.
struct MoeMixInfo {
  int64_t n_expert = 0;
  int64_t n_ffn_down = 0;
};
DType quant_mix_tensor_type(const QuantMix& m, std::string_view name, int64_t layer, int64_t n_layers, int64_t cols,
                            int64_t n_gqa, bool has_output, bool* fallback = nullptr, MoeMixInfo moe = {});

}  // namespace tessera
