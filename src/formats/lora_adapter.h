// LoRA adapter files, both ways, and applying an adapter to loaded weights.
// - GGUF, llama.cpp's format (what its convert_lora_to_gguf.py writes and
//   `llama-cli --lora` reads): general.type "adapter", adapter.type "lora",
//   adapter.lora.alpha, tensors "blk.N.<role>.weight.lora_a" (r, in) and
//   ".lora_b" (out, r); q/k rows in GGUF's RoPE order for the architecture.
// - PEFT (Hugging Face): DIR/adapter_config.json + DIR/adapter_model.safetensors
//   with "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight" (r, in)
//   and "...lora_B.weight" (out, r); q/k rows in Hugging Face's (half-split) order.
// In memory, B's rows follow the base model's in-memory rope_style, like its weights.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "model/weights.h"

namespace tessera {

struct LoraAdapter {
  int64_t rank = 0;
  float alpha = 0.f;  // updates are scaled by alpha / rank (0: by 1)
  struct Pair {
    std::string base;              // the adapted tensor's GGUF name, "blk.3.attn_q.weight"
    int64_t layer = 0, in = 0, out = 0;
    std::string role;              // "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", ...
    std::vector<float> a, b;       // A (rank, in), B (out, rank), row-major
  };
  std::vector<Pair> pairs;
  float scale() const { return alpha > 0.f ? alpha / float(rank) : 1.f; }
};

// Writes an adapter for a base model of config c (c.rope_style: the order of B's q/k rows).
void write_lora_gguf(const LoraAdapter& ad, const ModelConfig& c, const std::string& path);
void write_lora_peft(const LoraAdapter& ad, const ModelConfig& c, const std::string& dir,
                     const std::string& base_model_name = "");

// Reads a GGUF LoRA file or a PEFT directory for the base model c, B's q/k rows
// put in c's rope order. Error naming the file and the tensor or field when it is
// not a LoRA adapter, names a layer the model lacks, or has the wrong shapes.
LoraAdapter read_lora_adapter(const std::string& path, const ModelConfig& c);

// W <- W + mult * scale * B A for every pair (merged into the weights: a matrix
// stored quantized is dequantized, updated and quantized again to its type when
// Tessera writes that type, else kept in f32). Call before the Model is built.
void apply_lora(Weights& w, const LoraAdapter& ad, float mult, const std::string& where);

// Prefix tuning adapters (model/model.h KvPrefix) as PEFT writes them: DIR/adapter_config.json
// (peft_type PREFIX_TUNING, num_virtual_tokens, token_dim, num_layers) and
// DIR/adapter_model.safetensors "prompt_embeddings" (P, num_layers * 2 * token_dim), each row
// [layer 0 keys, layer 0 values, layer 1 keys, ...], keys in Hugging Face's RoPE order.
bool is_prefix_adapter(const std::string& path);  // a directory whose adapter_config.json says PREFIX_TUNING
void write_prefix_peft(const KvPrefix& px, const ModelConfig& c, const std::string& dir,
                       const std::string& base_model_name = "");
// Error naming the file and field when it is not such an adapter or does not fit model c.
KvPrefix read_prefix_adapter(const std::string& dir, const ModelConfig& c);

// Bottleneck adapters (model/model.h BottleneckAdapter) as a GGUF file: general.type "adapter",
// adapter.type "bottleneck", adapter.bottleneck.dim / .activation, f32 tensors
// "blk.N.{attn,ffn}_adapter_{down,up}.{weight,bias}". (No peer format: PEFT has no
// Houlsby adapters, AdapterHub stores pickles.) Reading: Error naming the file and tensor.
void write_bottleneck_gguf(const BottleneckAdapter& ad, const ModelConfig& c, const std::string& path);
BottleneckAdapter read_bottleneck_adapter(const std::string& path, const ModelConfig& c);

// "FILE" or "FILE:SCALE" (--lora); scale 1 when absent. Error naming the value.
std::pair<std::string, float> parse_lora_arg(const std::string& arg);

}  // namespace tessera
