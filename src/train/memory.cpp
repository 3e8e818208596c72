#include "train/memory.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"
#include "model/arch.h"

namespace tessera::train {

Precision parse_precision(const std::string& s) {
  if (s == "mixed") return Precision::Mixed;
  if (s == "fp32") return Precision::FP32;
  if (s == "bf16") return Precision::BF16;
  fail("--precision: unknown precision '", s, "' (mixed, fp32, bf16)");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::Mixed: return "mixed";
    case Precision::FP32: return "fp32";
    case Precision::BF16: return "bf16";
  }
  return "?";
}

BytesPerParam bytes_per_param(Precision p) {
  switch (p) {
    case Precision::Mixed: return {2, 2, 12};  // fp16/bf16 w, g; fp32 master w, m, v
    case Precision::FP32: return {4, 4, 8};    // fp32 w, g; fp32 m, v
    case Precision::BF16: return {2, 2, 4};    // bf16 w, g; bf16 m, v
  }
  return {};
}

double activation_bytes(Precision p) { return p == Precision::FP32 ? 4.0 : 2.0; }

DeviceMemory zero_memory(double params, int64_t dp, int stage, Precision p, double in_flight) {
  if (!(params > 0) || !std::isfinite(params)) fail("--params must be a positive number of parameters, got ", params);
  if (dp < 1) fail("--dp must be at least 1 (data-parallel ranks), got ", dp);
  if (stage < 0 || stage > 3) fail("--zero must be a ZeRO stage 0, 1, 2 or 3, got ", stage);
  const BytesPerParam b = bytes_per_param(p);
  const double n = double(dp);
  // Psi parameters; stage s shards the first s of (optimizer states, gradients, weights) over n ranks.
  DeviceMemory m;
  m.optimizer = params * b.optimizer / (stage >= 1 ? n : 1.0);
  m.grads = params * b.grads / (stage >= 2 ? n : 1.0) + (stage >= 2 && dp > 1 ? in_flight * b.grads : 0.0);
  m.weights = params * b.weights / (stage >= 3 ? n : 1.0) + (stage >= 3 && dp > 1 ? in_flight * b.weights : 0.0);
  return m;
}

int64_t count_params(const ModelConfig& c) { return tessera::count_params(c); }  // the architecture's table

// Activations saved for backward by a standard (non-fused, non-flash) implementation,
// per token, elements in the activation dtype (a bytes) unless noted; T = seq:
//
//   Llama block                                   GPT-2 block
//   x, block input = RMSNorm-1 input   C          x, LayerNorm-1 input         C
//   RMSNorm-1 output                   C          LayerNorm-1 output           C
//   q, k, v after RoPE         q + 2*kv           q, k, v (fused qkv output)   3C
//   attention probabilities    n_heads*T          attention probabilities      n_heads*T
//     (softmax of the (T, T) scores: one row of T per head per token; with flash,
//      FlashAttention as Tessera's trainer runs it, one fp32 log-sum-exp per head: n_heads x 4B)
//   attention output (wo input)        q          attention output (wo input)  C
//   residual after attention           C          residual after attention     C
//     (= norm-2 input)                              (= LayerNorm-2 input)
//   RMSNorm-2 output                   C          LayerNorm-2 output           C
//   gate, up (w_gate, w_up outputs)   2H          fc output (GELU input)       H
//   silu(gate) * up (w_down input)     H          GELU output (w_down input)   H
//   rstd per norm, fp32            2 x 4B         mean + rstd per norm, fp32   4 x 4B
//
// Latent attention (MLA) layers keep every head's expanded key and value (q each instead
// of kv), the q LoRA's output before and after its norm (2 q_lora), the latent before and
// after its norm (2 d_c), the RoPE key, kv_b's output n_heads (nope + v) and the output
// projection's input n_heads v, plus one or two more rstd.
//
// The block output is the next block's input and is counted there. Outside the
// blocks (the "head"): the last block's output (final-norm input) C, the final
// norm output C, the logits V, and the norm statistics in fp32. Embedding output
// is block 0's input. Transient buffers of the backward pass (activation
// gradients, one block at a time) and dropout masks are not counted.
//
// Full storage keeps every block:   tokens * (L * layer + head).
// Per-block recomputation keeps only each block's input (C per token) and, while
// a block's backward runs, that one block's recomputed activations (whose input
// is the checkpoint already counted):  tokens * (L * C*a + (layer - C*a) + head).
ActivationEstimate activation_memory(const ModelConfig& c, int64_t batch, int64_t seq, Precision p,
                                     int64_t logit_rows, bool flash) {
  if (logit_rows < 0) fail("--logit-rows must be >= 0, got ", logit_rows);
  if (batch < 1) fail("--batch must be at least 1, got ", batch);
  if (seq < 1) fail("--seq must be at least 1, got ", seq);
  c.validate(c.name.empty() ? "model config" : c.name);
  if (c.arch == Arch::GPT2 && seq > c.max_seq_len)
    fail("--seq ", seq, " exceeds the model's ", c.max_seq_len, " learned positions (GPT-2)");
  if (batch > std::numeric_limits<int64_t>::max() / seq) fail("--batch ", batch, " x --seq ", seq, " overflows");
  const double a = activation_bytes(p);
  const double C = double(c.dim), H = double(c.hidden_dim), V = double(c.vocab_size), T = double(seq);
  const double q = double(c.q_dim()), kv = double(c.kv_dim()), nh = double(c.n_heads);
  const bool llama = c.arch == Arch::Llama;
  const double stats = llama ? 1 * 4.0 : 2 * 4.0;  // fp32 bytes per norm per token
  ActivationEstimate e;
  e.tokens = batch * seq;
  const double ffn = llama ? 3 * H : 2 * H;
  const double attn = flash ? nh * 4.0 : a * nh * T;
  e.per_token_layer = a * (2 * C + (q + 2 * kv) + q + 2 * C + ffn) + attn + 2 * stats;
  if (c.mla()) {  // keys and values expanded per head (q each), plus the latents (train/mla_train.cpp)
    const double qr = double(c.mla_q_lora), dc = double(c.mla_kv_lora), dr = double(c.mla_rope);
    const double vd = double(c.mla_v_dim), kvw = double(c.head_dim - c.mla_rope) + vd;
    e.per_token_layer += a * (2 * q - 2 * kv + (qr > 0 ? 2 * qr : 0) + 2 * dc + dr + nh * kvw + nh * vd) +
                         (qr > 0 ? 2 : 1) * stats;
  }
  e.per_token_checkpoint = a * C;
  const bool fused = logit_rows > 0;
  e.per_token_head = a * (2 * C + (fused ? 0 : V)) + stats;
  e.fused_logits = fused ? double(std::min(logit_rows, e.tokens)) * V * a : 0;
  const double L = double(c.n_layers), n = double(e.tokens);
  e.full = n * (L * e.per_token_layer + e.per_token_head) + e.fused_logits;
  e.recompute = n * (L * e.per_token_checkpoint + (e.per_token_layer - e.per_token_checkpoint) + e.per_token_head) +
                e.fused_logits;
  return e;
}

std::string format_gb(double bytes) {
  const double v = bytes / 1e9;
  if (v == 0 || !std::isfinite(v)) return v == 0 ? "0" : std::to_string(v);
  // 3 significant digits: scale so that the kept digits are the integer part, round half away.
  int e = int(std::floor(std::log10(std::fabs(v))));
  double scale = std::pow(10.0, 2 - e);
  double r = std::round(v * scale);
  if (std::fabs(r) >= 1000) {  // 999.5 -> 1000: one more digit before the point
    ++e;
    scale /= 10;
    r = std::round(v * scale);
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", e >= 2 ? 0 : 2 - e, r / scale);
  return buf;
}

}  // namespace tessera::train
