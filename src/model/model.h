// Runs a model's forward pass for inference: prefill (many tokens as matrices)
// and decode (one token) against a KV cache. All buffers are planned once in the
// constructor for the worst case (max_batch tokens, n_ctx positions per
// sequence); forward() does not allocate.
//
// Two ways in: forward(ctx, batch, cache, out) runs rows of any number of
// sequences of a paged KVCache (model/kv_cache.h) in one pass (matrix products
// over all rows, each row's attention against its own sequence); the
// single-sequence forward(ctx, tokens, n, pos) runs sequence 0 of the model's
// own cache.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/aligned.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "kernels/team.h"
#include "model/batch.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace tessera {

// Prefix tuning's learned keys and values (train/lora.h LoraConfig::prefix_len; PEFT's
// PREFIX_TUNING adapters, formats/lora_adapter.h): per layer, len rows at positions [0, len)
// of the sequence, before its tokens, which sit at positions len, len + 1, ...
struct KvPrefix {
  int64_t len = 0, kv_dim = 0, n_layers = 0;
  std::vector<float> kv;  // (n_layers, 2, len, kv_dim): keys (after RoPE, the model's row order), then values
  const float* k(int64_t l) const { return kv.data() + size_t(l * 2 * len * kv_dim); }
  const float* v(int64_t l) const { return k(l) + len * kv_dim; }
};

// Bottleneck adapters (train/lora.h LoraConfig::adapter_dim; formats/lora_adapter.h): after a
// layer's attention output projection (site 0) and its feed-forward (site 1),
// y <- y + up act(down y + down_b) + up_b.
struct BottleneckAdapter {
  int64_t dim = 0;    // bottleneck width m
  bool gelu = false;  // activation: GELU (tanh), else ReLU
  struct Site {
    std::vector<float> down, down_b, up, up_b;  // (m, C), (m), (C, m), (C); empty: no adapter here
  };
  std::vector<std::array<Site, 2>> layers;  // [attention, feed-forward] per layer
};

struct RunOptions {
  int64_t n_ctx = 0;        // KV cache positions; 0 = the model's max_seq_len
  int64_t max_batch = 256;  // tokens per internal forward chunk
  DType kv_type = DType::F32;  // KV cache elements: F32, F16 or Q8_0 (head size a multiple of 32)
  int max_threads = 0;      // 0 = all hardware threads
  // Decode steps (one token) run as one persistent thread team with a
  // spinning barrier between phases (kernels/team.h) instead of a parallel
  // region per matrix; same results bit for bit. false = region per matrix.
  bool persistent_team = true;
  // The model's own cache for the single-sequence forward (one sequence of
  // n_ctx positions); false when only forward(ctx, batch, cache, out) is used.
  bool own_cache = true;
  int64_t kv_block_size = 32;  // positions per KV block
  // Self-speculative drafting with the model's first multi-token prediction module
  // (ModelConfig::mtp_depth >= 1; mtp_draft()): every forward also runs the module over
  // its rows, keeping its K/V and each position's final hidden state in the cache.
  bool mtp_draft = false;
  // A prefix adapter: every sequence of the caches this model makes (make_cache, the own one)
  // starts with its rows; a token at sequence position p is at cache position len + p, so it
  // attends to the prefix and is rotated as Hugging Face PEFT runs it. n_ctx counts the tokens.
  std::shared_ptr<const KvPrefix> prefix;
  std::shared_ptr<const BottleneckAdapter> bottleneck;  // applied in every forward
  // Tensor parallelism (model/tensor_parallel.h): the weights are this rank's slice
  // (tp_slice_weights) and each block's attention output and down products are summed over
  // the ranks through tp after they are computed. Decode steps then run on the regions'
  // path. Null: off.
  class TensorParallelSum* tp = nullptr;
};

class Model {
 public:
  Model(const Weights& w, const RunOptions& opt);

  const ModelConfig& config() const { return w_.cfg; }
  const Weights& weights() const { return w_; }
  int64_t n_ctx() const { return n_ctx_ - prefix_len_; }  // tokens a sequence may hold
  size_t kv_bytes() const { return own_ ? own_->bytes() : 0; }
  // A cache for forward(ctx, batch, ...) with this model's shapes: n_blocks blocks of
  // RunOptions::kv_block_size positions, of RunOptions::kv_type (plus, with a prefix adapter,
  // the blocks of its rows, written here, and one for a sequence's copy of a partial last one).
  // With window_seqs > 0, sliding-window layers keep only their window (a ring of blocks:
  // model/kv_cache.h) for up to window_seqs sequences live at once, each adding at most
  // window_rows positions per forward (0: max_batch) and rewound by at most max_batch.
  KVCache make_cache(int64_t n_blocks, int64_t window_seqs = 0, int64_t window_rows = 0) const;
  // Whether forward(ctx, tokens, n, pos) may start at pos on the own cache (a rewind past
  // what a sliding-window layer kept cannot: start again from 0).
  bool can_resume(int64_t pos) const { return !own_ || pos <= 0 || own_->can_keep(0, pos); }
  int64_t kv_block_size() const { return kv_block_size_; }
  // Whether a decode step (one token) on ctx runs as one persistent thread team
  // (RunOptions::persistent_team, 2 threads up to the CPUs available, layers
  // large enough to split across threads, a SIMD matrix-vector kernel for every matrix).
  bool decodes_as_team(const KernelContext& ctx) const;
  // Whether a chunk of n rows (n <= kTeamRows) runs on the team too: also every matrix has a
  // SIMD kernel for n rows, and the blocks are plain (no experts, no latent attention).
  bool team_rows_ok(const KernelContext& ctx, int64_t n) const;
  static constexpr int64_t kTeamRows = 8;  // rows a chunk may have on the team path
  size_t arena_bytes() const { return arena_.size() * sizeof(float) + kv_bytes(); }

  // Runs tokens(n) at positions [pos, pos + n) of the own cache's sequence
  // (which keeps positions [0, pos) and drops any after), appending their K/V,
  // and returns the last token's logits (V). Throws Error if pos + n exceeds
  // n_ctx, pos is past the cached positions, or a token id is out of range.
  const float* forward(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos);
  // Same, writing every token's logits into out (n, V).
  void forward_all(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, float* out);
  // Runs every row of batch against cache (extending each sequence, see
  // model/batch.h) and writes the logits of the rows with want_logits, in row
  // order, into out (batch.n_logits(), V). Throws Error, before any change to
  // the cache, on a bad token, sequence or position, or when the cache's pool
  // cannot hold the new positions.
  void forward(KernelContext& ctx, const Batch& batch, KVCache& cache, float* out);
  // RunOptions::mtp_draft: multi-token prediction module k's logits (V) at position pos - 1 of
  // the own cache's sequence (which holds [0, pos), pos >= 1), DeepSeek-V3's sequential MTP as
  // train/mtp.cpp trains it. Module k reads the hidden state that module k - 1 left for
  // position pos - 1 (k = 1: the model's final state there) and the embedding of `token`: the
  // token at position pos - 1 + k. Drafting chains them: token = the last token (at pos) for
  // k = 1, then each draft for the next module, which predicts one more token ahead. The K/V
  // and states a call writes at pos - 1 are what the forward of the tokens that follow writes
  // again. Throws Error without modules, for k outside 1..drafts_mtp(), or out of range.
  const float* mtp_draft(KernelContext& ctx, int32_t token, int64_t pos, int k = 1);
  int drafts_mtp() const { return mtp_ ? int(w_.cfg.mtp_depth) : 0; }  // modules that draft (0: off)

 private:
  // Buffers for one chunk of B <= max_batch tokens (shape comments use B).
  struct Acts {
    float* x;       // (B, C) residual stream
    float* xb;      // (B, C) normalised input
    float* q;       // (B, q_dim)   (GPT-2: (B, 3C) fused qkv)
    float* k;       // (B, kv_dim) (MLA: (B, cache_kv_dim) latent rows [c | k_pe])
    float* v;       // (B, kv_dim)
    float* att;     // (B, max(q_dim, cache_out_dim)) attention output
    float* hb;      // (B, H)
    float* hb2;     // (B, H)
    float* scores;  // (threads, score_floats()): decode scores (score_rows(), n_ctx) or a prefill tile
    float* router;  // (B, E) router logits, then probabilities (MoE layers)
    float* moe_w;   // (B, k) weights of the selected experts
    float* moe_x;   // (B k, C) rows gathered by expert
    float* moe_g;   // (B k, He) gate products, then the activations
    float* moe_u;   // (B k, He) up products
    float* moe_d;   // (B k, C) expert outputs
    float* moe_s;   // (B, C) shared expert output
    float* mla_q;   // (B, q LoRA rank)            latent attention (MLA)
    float* mla_kva; // (B, kv LoRA rank + rope)
    float* mla_qa;  // (B, n_heads (kv LoRA rank + rope)) absorbed queries
    float* mla_w32; // (threads, mla_w32_floats_) one head's absorbed matrix as f32 (prefill)
    float* mla_exp; // (n_ctx, d_c + nope + v + head_dim): an expanded prefill's latents, one head's [k_nope | v], its keys
    float* mla_att; // (B, n_heads v) value up-projection of the attention output
    float* kv32;    // one sequence's keys (then values) of a layer as contiguous f32 for the prefill GEMMs, (2, n_ctx, cache_kv_dim)
    float* logits;  // (B, V)
    float* mtp_cat; // (B, 2C) [enorm(embedding); hnorm(previous hidden state)] (mtp_draft)
    float* bn_h;    // (B, m) a bottleneck adapter's activation
    float* bn_o;    // (B, C) its output
  };
  // The first MTP module over the rows with pos >= 1 of a chunk whose final hidden states are
  // in the cache: the module at position pos - 1 on (hidden(pos - 1), token); its output in a_.x.
  // Module k (1-based) for the rows of a forward (the row of token t at position p is module k
  // at p - k), or for one draft position; writes its output rows to a_.x and, below the last
  // module, each state for module k + 1.
  void mtp_rows(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n);
  int64_t mtp_module(KernelContext& ctx, int k, const int32_t* tokens, const int64_t* at, const int32_t* seq,
                     int64_t n);
  // Final norm and classifier of the chunk rows out_rows_[0, n_out) of a_.x into out (n_out, V).
  void logits_rows(KernelContext& ctx, int64_t n_out, float* out);
  bool mtp_ = false;
  std::vector<int64_t> mtp_pos_;
  std::vector<int32_t> mtp_seq_, mtp_tok_;
  // The legacy single-sequence call as a batch of sequence 0 of the own cache.
  void forward_own(KernelContext& ctx, const int32_t* tokens, int64_t n, int64_t pos, bool all, float* out);
  void write_prefix(const KvPrefix& px, KVCache& cache) const;  // its rows into the cache's prefix blocks
  int64_t prefix_len_ = 0;
  std::shared_ptr<const KvPrefix> prefix_;
  std::vector<int64_t> batch_pos_;  // a batch's cache positions (with a prefix)
  void check_token(int32_t id, int64_t pos) const;  // Error naming the id and position when out of the vocabulary
  // Checks the rows and sets each sequence's length in cache to take them (see forward(batch)).
  void place_rows(const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n, KVCache& cache);
  // Rows [0, n) of a chunk: their tokens, positions and sequences in kv_. Logits of
  // the rows with want[t] (all when want is null) into out, in order.
  void chunk(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n,
             const uint8_t* want, float* out);
  // The blocks, written once over an executor (model/exec.h): RegionExec runs a
  // chunk's rows with a parallel region per matrix, TeamExec one decode step
  // on a thread of the persistent team.
  struct RegionExec;
  struct TeamExec;
  template <class Ex>
  void llama_layer(Ex& ex, int64_t l);  // model/llama.cpp
  template <class Ex>
  void gpt2_layer(Ex& ex, int64_t l);  // model/gpt2.cpp
  // Mixture-of-experts feed-forward of layer l on the normalised input xn,
  // added to the residual stream (model/moe.cpp): the chunk's n rows grouped
  // by expert (a_.x), or one decode step on a team thread (its own x, and hs:
  // its activation scratch).
  static constexpr int64_t kMaxMoeUsed = 16;  // experts per token
  // Latent attention of layer l on the normalised input, added to x (model/mla.cpp).
  template <class Ex>
  void mla_attention(Ex& ex, int64_t l, const float* in);
  template <class Ex>
  void post_norm(Ex& ex, const TensorView& g);  // a_.xb <- rmsnorm(a_.xb, g) (Gemma 2's sandwich norms)
  // RunOptions::bottleneck: a_.xb (a sublayer's output) += up act(down a_.xb + down_b) + up_b, for
  // layer l's site s (0 attention, 1 feed-forward); nothing without an adapter there (model/exec.h).
  template <class Ex>
  void bottleneck(Ex& ex, int64_t l, int s);
  struct BnViews {
    TensorView down, down_b, up, up_b;  // empty: no adapter at this site
  };
  std::shared_ptr<const BottleneckAdapter> bn_;
  void set_bottleneck(std::shared_ptr<const BottleneckAdapter> ad);  // Error when it does not fit
  std::vector<std::array<BnViews, 2>> bn_views_;  // per layer: attention, feed-forward
  void moe_rows(KernelContext& ctx, int64_t l, const float* xn, int64_t n);
  // Hash routing (model/moe_hash.h) of the chunk's row t: its k experts and weights.
  void moe_hash_row(int64_t t, int32_t* sel, float* w) const;
  void moe_team(TeamThread& tt, int64_t l, const float* xn, float* x, float* hs);
  // QK-norm and RoPE (Llama; GPT-2: neither) of one token's q / k rows
  // (sequence seq, position pos; the projections' biases are in already) for
  // the query heads of KV heads [h0, h1) and those KV heads, then their k / v
  // into the cache.
  void prep_heads(int64_t l, int32_t seq, int64_t pos, float* q, float* k, float* v, int64_t h0, int64_t h1);
  // n rows (tokens at pos of seq; n <= kTeamRows, a decode step or a small batch such as a
  // speculative verification) as a persistent team; the wanted rows' logits (V each, packed)
  // into out (want null: every row; a single unwanted row still writes out).
  void decode_team(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n,
                   const uint8_t* want, float* out);
  // prep_heads and attention of one row's q / k / v (at pos of seq), over the team; its attention output into att.
  // The path for heads that do not divide over the team (query sub-groups, split-K) and sparse layers;
  // team_attention_rows takes the rest.
  void team_attention(TeamThread& tt, int64_t l, int32_t seq, int64_t pos, float* q, float* k, float* v, float* att);
  // The same for n rows (row t: seq[t], pos[t], q / k / v rows q_stride / kv_stride apart, att rows
  // out_stride apart) with one barrier, where every thread can take whole KV heads of every row
  // (dense attention, KV heads a multiple of the team, no split-K); false (nothing done) otherwise.
  bool team_attention_rows(TeamThread& tt, int64_t l, int64_t n, const int32_t* seq, const int64_t* pos, float* q,
                           float* k, float* v, int64_t q_stride, int64_t kv_stride, float* att, int64_t out_stride);
  // attend_decode's arguments for query heads [kvh * group + g0, + G) of the token
  // at pos of seq (its q row and attention-output row) against layer l's cache,
  // with thread `rank`'s score scratch.
  DecodeAttnArgs decode_attn_args(int64_t l, int32_t seq, int64_t pos, int64_t kvh, int64_t g0, int64_t G,
                                  const float* q, float* out, int rank) const;
  // Causal attention of the chunk's n rows (q rows q_stride apart) into a_.att.
  void attention(KernelContext& ctx, int64_t l, int64_t n, const float* q, int64_t q_stride);
  // A sparse-pattern layer (AttnKind::Sparse; model/sparse_attention.cpp): the query at pos of seq
  // (q: its row of n_heads heads) over the keys it sees (LayerConfig::visible_keys), the query
  // groups of KV heads h0, h0 + hstep, ... into out (its attention-output row), with thread
  // `rank`'s scratch.
  void attend_sparse(Isa isa, int64_t l, int32_t seq, int64_t pos, const float* q, float* out, int rank, int64_t h0,
                     int64_t hstep) const;
  // A run of rows [t0, t0 + rows) of one sequence at consecutive positions, as GEMMs.
  void prefill_attention(KernelContext& ctx, int64_t l, int64_t t0, int64_t rows, const float* q, int64_t q_stride);
  static constexpr int64_t kQBlock = 64;  // query rows per prefill attention task
  static constexpr int64_t kKTile = 256;  // keys per prefill attention tile (online softmax)
  // Causal attention of nr query rows (positions p0.., q rows q_stride apart, hd
  // wide) of one head over keys [lc.first_key(p0), p0 + nr): K rows k_stride
  // apart (hd), V rows v_stride apart (vd), in key tiles with an online softmax;
  // out rows (vd) out_stride apart. scratch: kQBlock (min(kKTile, n_ctx) + vd + 2) floats.
  void attend_tiles(Isa isa, const LayerConfig& lc, int64_t p0, int64_t nr, const float* q, int64_t q_stride,
                    const float* K, int64_t k_stride, const float* V, int64_t v_stride, int64_t hd, int64_t vd,
                    float scale, float* out, int64_t out_stride, float* scratch) const;
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
  int64_t score_floats() const;  // per-thread attention scratch (a_.scores), floats

  const Weights& w_;
  KVCacheOptions cache_options(int64_t n_blocks, int64_t window_seqs, int64_t window_rows) const;
  int64_t n_ctx_, max_batch_;
  int max_threads_;
  DType kv_type_;
  aligned_vector<float> arena_;
  std::vector<float> rope_cos_, rope_sin_;  // (n_ctx, head_dim / 2) angle tables
  int64_t kv_block_size_;
  std::unique_ptr<KVCache> own_;  // sequence 0: the single-sequence forward's
  // The chunk being run: its rows' positions and sequences, and the cache.
  KVCache* kv_ = nullptr;
  const int64_t* cpos_ = nullptr;
  const int32_t* cseq_ = nullptr;
  const int32_t* ctok_ = nullptr;
  // Scratch reused across calls (sized on first use): the legacy call's row
  // positions / sequences, the rows that attend one at a time, the rows whose
  // logits are wanted, per-sequence first positions and counts of a batch.
  std::vector<int64_t> own_pos_;
  std::vector<int32_t> own_seq_;
  std::vector<uint8_t> own_want_;
  std::vector<int64_t> short_rows_, out_rows_, seq_first_, seq_count_;
  // MoE routing of a chunk: selected expert per (row, slot) (B k), each slot's
  // place among the rows gathered by expert (B k), and each expert's first row (E + 1).
  std::vector<int32_t> moe_sel_;
  std::vector<int64_t> moe_inv_, moe_off_;
  Acts a_{};
  // Persistent-team decode: per thread the residual stream x (C), the normalised
  // input (C) and the SwiGLU product (H), floats, team_act_stride_ apart; and the
  // matrix-vector scratch, team_scratch_stride_ bytes apart.
  bool persistent_team_;
  class TensorParallelSum* tp_ = nullptr;  // RunOptions::tp
  Team team_;
  aligned_vector<float> team_act_;
  aligned_vector<uint8_t> team_scratch_;
  size_t team_act_stride_ = 0, team_scratch_stride_ = 0;
  // Per team thread: MoE routing scratch (probabilities (E), weights (k), selection (k)).
  aligned_vector<float> team_route_;
  aligned_vector<float> team_part_;  // split-K partial attention outputs (team_attention)
  // Sparse patterns (attend_sparse): keys a query sees at most (+ 1), and per thread the gathered
  // K and V rows (bound, cache_kv_dim) each + scores (query group, bound), and the key positions.
  int64_t sparse_bound_ = 0, sparse_stride_ = 0;
  mutable std::vector<float> sparse_scratch_;
  mutable std::vector<int64_t> sparse_keys_;
  // MLA's absorbed products (model/mla.cpp), per (layer, head): Wk_h^T (kv LoRA
  // rank, nope) and Wv_h (v, kv LoRA rank) from attn_kv_b, in its own type
  // where that is f32 / f16 / bf16 / Q8_0, else Q8_0 (f32 where rows are not
  // whole blocks), built once in mla_mats_; run by the same kernels as any matrix.
  void prepare_mla();
  // A chunk of n rows that is one run of positions of one sequence, of at least
  // kMlaExpandRows rows: its attention runs expanded (mla_prefill_expanded), not absorbed.
  static constexpr int64_t kMlaExpandRows = 32;
  bool mla_expands(int64_t n) const;
  // Latent attention of such a chunk (its cache rows stored, its queries roped) into
  // a_.mla_att: per head, the visible keys' [k_nope | v] = kv_b_h c from the latent
  // cache (one product over every key), then tiled attention at the head's own sizes.
  void mla_prefill_expanded(KernelContext& ctx, int64_t l, int64_t n);
  bool mla_expandable_ = false;  // attn_kv_b's per-head rows can be viewed (not Q8_G; R4 tiles whole)
  std::vector<TensorView> mla_wk_, mla_wv_;
  int64_t mla_w32_floats_ = 0;  // kv LoRA rank x max(nope, v), rounded to 16
  aligned_vector<uint8_t> mla_mats_;
  size_t team_route_stride_ = 0;
};

}  // namespace tessera
