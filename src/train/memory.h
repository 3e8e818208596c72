// Training-memory calculator: bytes per device for weights, gradients and
// optimizer states under ZeRO sharding (Rajbhandari et al. 2019, "ZeRO: Memory
// Optimizations Toward Training Trillion Parameter Models", section 3/5), and an
// estimate of the activations kept for the backward pass of a Llama or GPT-2
// model. Units: bytes everywhere (the ZeRO paper's "GB" is 1e9 bytes).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace tessera::train {

// How a training run stores its state, with Adam as the optimizer:
//   Mixed: bf16/fp16 weights and gradients, fp32 master weights + m + v
//          -> 2 + 2 + 12 bytes per parameter (the ZeRO paper's K = 12).
//   FP32:  fp32 weights and gradients, fp32 m + v -> 4 + 4 + 8 (no master copy).
//   BF16:  pure bf16 training: bf16 weights, gradients, m and v, no fp32 master
//          copy -> 2 + 2 + 4 (needs stochastic rounding or Kahan-compensated
//          updates to train well; the cheapest configuration, not the usual one).
enum class Precision { Mixed, FP32, BF16 };

// "mixed", "fp32", "bf16"; anything else throws Error naming --precision and the value.
Precision parse_precision(const std::string& s);
const char* precision_name(Precision p);

struct BytesPerParam {
  double weights = 0, grads = 0, optimizer = 0;  // bytes per parameter
  double total() const { return weights + grads + optimizer; }
};
BytesPerParam bytes_per_param(Precision p);

// Bytes of activations per element in the forward pass: 2 for Mixed/BF16, 4 for FP32.
double activation_bytes(Precision p);

// Model-state bytes held by one of `dp` data-parallel ranks.
struct DeviceMemory {
  double weights = 0, grads = 0, optimizer = 0;  // bytes per device
  double total() const { return weights + grads + optimizer; }
};

// ZeRO stage 0: everything replicated; 1: optimizer states sharded over dp
// ranks (P_os); 2: also gradients (P_os+g); 3: also weights (P_os+g+p).
// Throws Error naming --params (> 0, finite), --dp (>= 1) or --zero (0..3).
// in_flight: parameters whose gradients a rank holds whole besides its shard at
// stages >= 2 with dp > 1 (Tessera's buckets in flight: grad_buckets.h
// in_flight_elements), added to grads (and at stage 3 to weights, gathered the same
// way); 0 gives the paper's figure.
DeviceMemory zero_memory(double params, int64_t dp, int stage, Precision p, double in_flight = 0);

// Parameter count implied by a config, as Weights::n_params() counts a model of
// that shape (tied embeddings once; GPT-2 learned positions and biases included).
int64_t count_params(const ModelConfig& cfg);

// Activations kept for backward, in bytes, for `batch` sequences of `seq` tokens.
struct ActivationEstimate {
  int64_t tokens = 0;              // batch * seq
  double per_token_layer = 0;      // bytes saved per token by one block (full storage)
  double per_token_checkpoint = 0; // bytes per token per block kept under recomputation (the block input)
  double per_token_head = 0;       // bytes per token outside the blocks (final norm; logits unless fused)
  double fused_logits = 0;         // bytes of the logits buffer of a fused output + loss (logit_rows > 0)
  double full = 0;                 // every block's activations kept: tokens * (L * layer + head)
  double recompute = 0;            // per-block recomputation: tokens * (L * checkpoint + layer + head)
};

// Throws Error naming --batch / --seq when not positive, or the config field when invalid.
// logit_rows > 0 models a fused output + loss (Tessera's trainer: 256) that holds
// the logits of at most logit_rows tokens at a time instead of all of them.
// flash models FlashAttention-style attention (Tessera's trainer): one fp32
// log-sum-exp per head and token instead of the (T, T) probabilities.
ActivationEstimate activation_memory(const ModelConfig& cfg, int64_t batch, int64_t seq, Precision p,
                                     int64_t logit_rows = 0, bool flash = false);

// Formats bytes as GB (1e9) to 3 significant digits, rounding halves away from
// zero as the ZeRO paper prints them: 41.25e9 -> "41.3", 1.875e9 -> "1.88", 120e9 -> "120".
std::string format_gb(double bytes);

}  // namespace tessera::train
