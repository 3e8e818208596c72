// Runs a model's forward pass for inference: prefill (many tokens as matrices)
// and decode (one token) against a KV cache. All buffers are planned once in the
// constructor for the worst case (max_batch tokens, n_ctx positions); forward()
// does not allocate.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "kernels/team.h"
#include "model/weights.h"

namespace tessera {

struct RunOptions {
  int64_t n_ctx = 0;        // KV cache positions; 0 = the model's max_seq_len
  int64_t max_batch = 256;  // tokens per internal forward chunk
  bool kv_f16 = false;      // store K/V as f16 instead of f32
  int max_threads = 0;      // 0 = all hardware threads
  // Decode steps (one token) run as one persistent thread team with a
  // spinning barrier between phases (kernels/team.h) instead of a parallel
  // region per matrix; same results bit for bit. false = region per matrix.
  bool persistent_team = true;
};

class Model {
 public:
  Model(const Weights& w, const RunOptions& opt);

  const ModelConfig& config() const { return w_.cfg; }
  const Weights& weights() const { return w_; }
  int64_t n_ctx() const { return n_ctx_; }
  size_t kv_bytes() const { return kv_bytes_; }
  // Whether a decode step (one token) on ctx runs as one persistent thread team
  // (RunOptions::persistent_team, 2 threads up to the CPUs available, layers
  // large enough to split across threads, a SIMD matrix-vector kernel for every matrix).
  bool decodes_as_team(const KernelContext& ctx) const;
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
    float* kv32;    // f16 cache only: one layer's keys then values as f32 for the prefill GEMMs, (2, n_ctx, kv_dim)
    float* logits;  // (B, V)
  };
  void check(const int32_t* tokens, int64_t n, int64_t pos) const;
  // One chunk of n <= max_batch tokens; logits of all n rows into out, or of the last row when !all.
  void chunk(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, bool all, float* out);
  void llama_layer(KernelContext& ctx, int64_t l, int64_t n, int64_t pos);
  void gpt2_layer(KernelContext& ctx, int64_t l, int64_t n, int64_t pos);
  // Bias, QK-norm and RoPE (Llama; GPT-2: its fused bias only) of one token's
  // q / k / v rows (at position pos) for the query heads of KV heads [h0, h1)
  // and those KV heads, then their k / v into the cache.
  void prep_heads(int64_t l, int64_t pos, float* q, float* k, float* v, int64_t h0, int64_t h1);
  // One decode step (token at pos) as a persistent team; logits (V) into out.
  void decode_team(KernelContext& ctx, int32_t token, int64_t pos, float* out);
  void team_attention(TeamThread& tt, int64_t l, int64_t pos);
  // attend_decode's arguments for query heads [kvh * group + g0, + G) of the token
  // at pos (its q row and attention-output row) against layer l's cache, with
  // thread `rank`'s score scratch.
  DecodeAttnArgs decode_attn_args(int64_t l, int64_t pos, int64_t kvh, int64_t g0, int64_t G, const float* q,
                                  float* out, int rank) const;
  void attention(KernelContext& ctx, int64_t l, int64_t n, int64_t pos, const float* q, int64_t q_stride);
  void add_bias(KernelContext& ctx, float* y, const TensorView& b, int64_t n, int64_t width);
  // f(t) for the n rows t of a chunk (norms, residuals, biases, RoPE: independent
  // per token), over the threads when n is a prefill's (so the GEMMs' other
  // threads do not wait on one).
  static constexpr int64_t kThreadedRows = 8;  // rows from which per_token forks the threads
  template <class F>
  void per_token(const KernelContext& ctx, int64_t n, F&& f) const {
    const int nt = std::min(ctx.n_threads, max_threads_);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && n >= kThreadedRows)
    for (int64_t t = 0; t < n; ++t) f(t);
  }
  // Score rows per thread: a prefill block of queries, or one query-head group.
  int64_t score_rows() const;

  const Weights& w_;
  int64_t n_ctx_, max_batch_;
  int max_threads_;
  bool kv_f16_;
  aligned_vector<float> arena_;
  std::vector<float> rope_cos_, rope_sin_;  // (n_ctx, head_dim / 2) angle tables
  huge_vector<uint8_t> kv_;  // K then V: (L, n_ctx, kv_dim) each, f32 or f16; huge pages (core/aligned.h)
  size_t kv_bytes_ = 0;
  Acts a_{};
  // Persistent-team decode: per thread the residual stream x (C), the normalised
  // input (C) and the SwiGLU product (H), floats, team_act_stride_ apart; and the
  // matrix-vector scratch, team_scratch_stride_ bytes apart.
  bool persistent_team_;
  Team team_;
  aligned_vector<float> team_act_;
  aligned_vector<uint8_t> team_scratch_;
  size_t team_act_stride_ = 0, team_scratch_stride_ = 0;
};

}  // namespace tessera
