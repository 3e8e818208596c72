// Random-weight models for benchmarks and tests: any config, any weight type,
// generated row by row straight into the target type (deterministic per seed).
#pragma once
#include <cstdint>
#include <string>

#include "core/quant_mix.h"
#include "model/weights.h"

namespace tessera {

// Named shapes: "1b" (dim 2048, 16 layers, 32/8 heads, hidden 5632, vocab 32000),
// "15m" (dim 288, 6 layers, 6 heads, hidden 768, vocab 32000), "260k" (stories260K's
// shape), "gpt2-tiny" (GPT-2 block, dim 64, 2 layers, 4 heads, vocab 512), "gpt2-124m"
// (GPT-2 small: dim 768, 12 layers, 12 heads, vocab 50257, 1024 positions).
// Throws Error listing the names on an unknown one.
ModelConfig synthetic_config(const std::string& name);

// Matrices uniform in [-a, a] with a = 1/sqrt(in_features) * sqrt(3) (unit-variance
// outputs), norms 1, biases small; tied embeddings as the config says.
Weights make_random_weights(const ModelConfig& cfg, DType type, uint64_t seed, int threads);
// The same with the per-tensor types llama-quantize gives mix m (core/quant_mix.h).
Weights make_random_weights(const ModelConfig& cfg, const QuantMix& m, uint64_t seed, int threads);

}  // namespace tessera
