// RoPE frequency scaling as one divisor per rotary frequency: frequency i,
// theta^(-2i / head_dim), is divided by factors[i] (head_dim / 2 values).
// Both scalings that real Llama-family checkpoints use take this form:
//   - "llama3" (Llama 3.1 / 3.2 / 3.3): low frequencies divided by `factor`,
//     high ones kept, a smooth ramp between (Hugging Face's
//     _compute_llama3_parameters; llama.cpp stores the divisors as the
//     rope_freqs.weight tensor);
//   - "linear" position interpolation: every frequency divided by `factor`.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera {

struct Llama3RopeScaling {
  double factor = 8;              // divisor of the low frequencies
  double low_freq_factor = 1;     // wavelengths above original_context / low_freq_factor get `factor`
  double high_freq_factor = 4;    // wavelengths below original_context / high_freq_factor are kept
  int64_t original_context = 8192;  // original_max_position_embeddings
};

// The (head_dim / 2) divisors of llama3 scaling for base `theta`.
std::vector<float> llama3_rope_factors(const Llama3RopeScaling& s, double theta, int64_t head_dim);

// Llama3 parameters whose divisors equal `factors` (to 1e-5 relative), or nullopt
// when no such parameters exist. Only the divisors matter to the model, so the
// parameters are one valid choice: `original_context` is kept as given and the
// others are solved for (llama.cpp's GGUF keeps only the divisors).
std::optional<Llama3RopeScaling> fit_llama3_rope(const std::vector<float>& factors, double theta, int64_t head_dim,
                                                 int64_t original_context = 8192);

// The common value when every divisor is equal (linear scaling), else nullopt.
std::optional<float> uniform_rope_factor(const std::vector<float>& factors);

// "none", "linear x4", "llama3 (factor 32, low 1, high 4, original context 8192)", or
// "per-frequency divisors" when neither form fits.
std::string describe_rope_scaling(const std::vector<float>& factors, double theta, int64_t head_dim);

}  // namespace tessera
