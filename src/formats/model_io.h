// Model <-> file glue for GGUF and Hugging Face (config.json + safetensors):
// tensor naming, metadata keys, and the RoPE row permutation between the
// interleaved convention (GGUF llama, llama2.c) and the half-split one (HF).
#pragma once
#include <optional>
#include <string>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

// GGUF architectures "llama", "qwen2" (biases, half-split RoPE) and "gpt2".
Weights load_gguf_weights(std::shared_ptr<gguf::File> f);
// Writes llama.cpp-compatible GGUF (same tensor names and metadata keys as its
// converter). Llama weights are permuted to interleaved RoPE if needed.
void save_gguf(const Weights& w, const Tokenizer* tok, const std::string& path);

// Hugging Face directory: config.json + model.safetensors (or sharded).
Weights load_hf_weights(const std::string& dir);
// Writes DIR/config.json and DIR/model.safetensors (F32/F16/BF16 tensors only).
void save_hf(const Weights& w, const std::string& dir);

// Copies w with every 2-D matrix converted to `type` (1-D tensors stay f32);
// matrices whose rows are not a multiple of the block size fall back to f16
// (reported through `fallbacks`). Under Q4_0 the classifier (and the embedding
// when tied to it) is stored as Q8_0, as llama.cpp keeps it at higher precision.
Weights convert_weights(const Weights& w, DType type, int* fallbacks = nullptr);

// Returns a copy of w whose q/k projections (and biases) use `style`.
Weights with_rope_style(const Weights& w, ops::RopeStyle style);

}  // namespace tessera
