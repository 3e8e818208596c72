// Runs a model's forward pass for inference: prefill (many tokens as matrices)
// and decode (one token) against a KV cache. All buffers are planned once in the
// constructor for the worst case (max_batch tokens, n_ctx positions); forward()
// does not allocate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "kernels/kernels.h"
#include "model/weights.h"

namespace tessera {

struct RunOptions {
  int64_t n_ctx = 0;        // KV cache positions; 0 = the model's max_seq_len
  int64_t max_batch = 256;  // tokens per internal forward chunk
  bool kv_f16 = false;      // store K/V as f16 instead of f32
  int max_threads = 0;      // 0 = all hardware threads
};

class Model {
 public:
  Model(const Weights& w, const RunOptions& opt);

  const ModelConfig& config() const { return w_.cfg; }
  const Weights& weights() const { return w_; }
  int64_t n_ctx() const { return n_ctx_; }
  size_t kv_bytes() const { return kv_bytes_; }
  size_t arena_bytes() const { return arena_.size() * sizeof(float) + kv_.size(); }

  // Runs tokens(n) at positions [pos, pos + n), appending their K/V to the cache,
  // and returns the last token's logits (V). Throws Error if pos + n exceeds
  // n_ctx or a token id is out of range.
  const float* forward(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos);
  // Same, writing every token's logits into out (n, V).
  void forward_all(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, float* out);

 private:
  // Buffers for one chunk of B <= max_batch tokens (shape comments use B).
  struct Acts {
    float* x;       // (B, C) residual stream
    float* xb;      // (B, C) normalised input
    float* q;       // (B, q_dim)   (GPT-2: (B, 3C) fused qkv)
    float* k;       // (B, kv_dim)
    float* v;       // (B, kv_dim)
    float* att;     // (B, q_dim) attention output
    float* hb;      // (B, H)
    float* hb2;     // (B, H)
    float* scores;  // (threads, score_rows(), n_ctx)
    float* logits;  // (B, V)
  };
  void check(const int32_t* tokens, int64_t n, int64_t pos) const;
  // One chunk of n <= max_batch tokens; logits of all n rows into out, or of the last row when !all.
  void chunk(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, bool all, float* out);
  void llama_layer(KernelContext& ctx, int64_t l, int64_t n, int64_t pos);
  void gpt2_layer(KernelContext& ctx, int64_t l, int64_t n, int64_t pos);
  void store_kv(int64_t l, int64_t n, int64_t pos, const float* k, const float* v, int64_t k_stride, int64_t v_stride);
  void attention(KernelContext& ctx, int64_t l, int64_t n, int64_t pos, const float* q, int64_t q_stride);
  void add_bias(float* y, const TensorView& b, int64_t n, int64_t width);
  // Score rows per thread: a prefill block of queries, or one query-head group.
  int64_t score_rows() const;

  const Weights& w_;
  int64_t n_ctx_, max_batch_;
  int max_threads_;
  bool kv_f16_;
  aligned_vector<float> arena_;
  std::vector<float> rope_cos_, rope_sin_;  // (n_ctx, head_dim / 2) angle tables
  aligned_vector<uint8_t> kv_;  // K then V: (L, n_ctx, kv_dim) each, f32 or f16
  size_t kv_bytes_ = 0;
  Acts a_{};
};

}  // namespace tessera
