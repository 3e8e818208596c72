// AdamW with decoupled weight decay, gradient-norm clipping and learning-rate
// schedules. Operates on the flat parameter layout (train/params.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "train/params.h"

namespace tessera::train {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;
  bool decay_embeddings = false;  // token / position embeddings (and a tied classifier)
  bool decay_norms = false;       // norm gains and biases
};

// Per-element decay mask (1 = decayed) for the layout under cfg (routers' selection biases: never).
std::vector<uint8_t> decay_mask(const Layout& L, const AdamWConfig& cfg);

// DeepSeek-V3's auxiliary-loss-free load balancing: each MoE layer's selection
// bias b (E, in p) moves toward even loads, b_e += rate x sign(mean - c_e), where
// c (n_layers, E) holds the tokens routed to each expert in the step (every rank's).
void moe_bias_update(const Layout& L, float* p, const std::vector<double>& counts, float rate);

// One AdamW step (PyTorch's torch.optim.AdamW semantics) at step t (1-based):
//   p *= 1 - lr * wd * mask;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// isa AVX512 (float): the AVX-512 kernel of kernels/adamw.h; the default is this
// machine's ISA (Isa::Scalar gives the scalar loop, the specification).
// grad_scale multiplies g as it is read (gradient clipping without a pass over g).
template <class T>
void adamw_step(T* p, const T* g, T* m, T* v, const uint8_t* mask, size_t n, int64_t t, float lr,
                const AdamWConfig& cfg, Isa isa = detect_isa(), float grad_scale = 1.f);

// L2 norm of g(n) in double, summed in fixed blocks (deterministic for any thread count).
template <class T>
double grad_norm(const T* g, size_t n);

struct Schedule {
  enum Kind { Constant, Cosine, CosineRestarts } kind = Cosine;
  float lr = 3e-4f, min_lr = 3e-5f;
  int64_t warmup = 0;       // linear warmup steps from lr / warmup to lr
  int64_t total = 1000;     // Cosine: decays to min_lr at this step
  int64_t period = 1000;    // CosineRestarts (SGDR): first period after warmup
  float period_mult = 1.f;  // each period is this much longer than the last
  float at(int64_t step) const;  // step is 0-based
  void validate() const;         // Error naming the field
};
Schedule::Kind parse_schedule_kind(const std::string& s);  // "constant", "cosine", "sgdr"

}  // namespace tessera::train
