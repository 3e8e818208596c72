// Model <-> file glue for GGUF and Hugging Face (config.json + safetensors):
// tensor naming, metadata keys, and the RoPE row permutation between the
// interleaved convention (GGUF llama, llama2.c) and the half-split one (HF).
#pragma once
#include <optional>
#include <string>

#include "formats/gguf.h"
#include "core/quant_mix.h"
#include "formats/safetensors.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

// GGUF architectures "llama", "qwen2" (biases, half-split RoPE) and "gpt2".
Weights load_gguf_weights(std::shared_ptr<gguf::File> f);
// Writes llama.cpp-compatible GGUF (same tensor names and metadata keys as its
// converter). Llama weights are permuted to interleaved RoPE if needed.
// chat_template: Jinja source written as tokenizer.chat_template ("" writes none).
void save_gguf(const Weights& w, const Tokenizer* tok, const std::string& path, const std::string& chat_template = "");

// Hugging Face directory: config.json + model.safetensors (or sharded).
Weights load_hf_weights(const std::string& dir);
// Writes DIR/config.json and DIR/model.safetensors (F32/F16/BF16 tensors only).
void save_hf(const Weights& w, const std::string& dir);

// Copies w with every matrix converted as llama-quantize stores it under `mix`
// (core/quant_mix.h: the base type, the output matrix / tied embedding and
// some attention-value and down-projection layers at more bits; f32 / f16 /
// bf16 mixes: every matrix in that type). 1-D tensors become f32; GPT-2's
// position embedding keeps its float type under the quantizing mixes, as
// llama.cpp's. Matrices whose rows forced a fallback type are counted in
// `fallbacks`. Sets the copy's file_type to the mix's.
Weights convert_weights(const Weights& w, const QuantMix& mix, int* fallbacks = nullptr);

// The general.architecture llama.cpp runs this config as ("llama", "qwen2", "gpt2", ...).
std::string gguf_arch_name(const ModelConfig& c);

// Returns a copy of w whose q/k projections (and biases) use `style`.
Weights with_rope_style(const Weights& w, ops::RopeStyle style);

}  // namespace tessera
