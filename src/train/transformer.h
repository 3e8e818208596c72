// The training forward and backward pass of a whole model (Llama or GPT-2
// family) over a batch (B, T), from the blocks in train/blocks.h. All
// activations and gradient buffers are allocated once in the constructor; a
// step does not allocate (apart from small per-thread rows inside blocks).
// T is the scalar type: float in production, double in the gradient tests.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "train/blocks.h"
#include "train/distill.h"
#include "train/lora.h"
#include "train/params.h"

namespace tessera::train {

struct ModelOptions {
  float z_loss = 0.f;         // alpha of alpha * log(Z)^2 (soft-caps and QK-norm are in ModelConfig)
  bool recompute = false;     // keep only each block's input; recompute the block in backward
  float dropout = 0.f;        // residual and embedding dropout probability (training steps only)
  bool bf16 = false;          // matrix products in bf16 (f32 accumulation, f32 master weights); float only
  int64_t logit_rows = 256;   // rows of the (rows, V) logits buffer of the fused output + loss
  float moe_balance = 0.f;    // alpha of the MoE load-balance loss alpha E sum_e f_e P_e (per MoE layer)
  float moe_router_z = 0.f;   // beta of the router z-loss beta mean_t logsumexp(r_t)^2 (per MoE layer)
  // Capacity factor: each expert takes at most ceil(moe_capacity N k / E) of a batch's slots,
  // first come (row order) first served; the rest are dropped (that row gets fewer experts).
  // 0: no limit. Training only: inference never drops.
  float moe_capacity = 0.f;
  // Multi-token prediction (ModelConfig::mtp_depth > 0; train/mtp.cpp): the objective adds
  // mtp_weight / depth x the sum of the modules' cross-entropies (DeepSeek-V3's lambda / D).
  float mtp_weight = 0.3f;
};

template <class T>
class Transformer {
 public:
  Transformer(const Layout& L, int64_t B, int64_t T_, const ModelOptions& o);

  // Forward and backward over tokens (B, T) with targets (B, T) (target < 0:
  // no loss at that position). Gradients are accumulated (+=) into g (the
  // layout's size), scaled by grad_scale (1 / target tokens of the whole
  // step). Returns the loss sums of this batch.
  // dropout_key picks the dropout masks of this batch (with ModelOptions::dropout > 0).
  // overwrite: g's contents are ignored and replaced (the first micro-batch of a
  // step): each weight matrix's product writes its gradient instead of adding
  // to it, and only the rest of g is zeroed, which saves a pass over g and a
  // read of every weight gradient. Bit-identical to zeroing g and accumulating.
  blk::CeResult forward_backward(const T* p, T* g, const int32_t* tokens, const int32_t* targets, float grad_scale,
                                 uint64_t dropout_key = 0, bool overwrite = false);
  // With LoRA attached, g may be null: the base is frozen and only the adapter's gradient
  // (set_lora_params' ga, +=) is computed (not on mixture-of-experts models: pass a g there).
  // Forward only: evaluation (no dropout), or with a dropout key the training forward.
  blk::CeResult forward(const T* p, const int32_t* tokens, const int32_t* targets, uint64_t dropout_key = 0);

  // LoRA adapters (train/lora.h) on the linear layers LL targets: called once, before the
  // first pass (allocates the adapters' activations); LL must outlive this model.
  void attach_lora(const LoraLayout& LL);
  // The adapter's parameters (LL.total) and its gradient buffer (+=; may be null in forward()).
  void set_lora_params(const T* a, T* ga) { la_ = a, lga_ = ga; }

  // Preference tuning (train/dpo.h): the passes leave each row's nll (0 without a target) in
  // row_nll (N) when set, and scale row n's gradient by row_weight[n] when set. Kept until changed.
  void set_row_nll(double* row_nll) { row_nll_ = row_nll; }
  void set_row_weights(const float* row_weight) { row_weight_ = row_weight; }
  // A reward model (train/reward.h): instead of the language-model loss, the passes write
  // r_b = xf[last_b] . w + w[C] for each row b (xf: the final-norm state; last (B): a row's
  // last token) into rewards (B); a forward_backward adds d r_b = dr[b] (times grad_scale)
  // into the model's gradient and into gw (C + 1). w null: the language-model loss again.
  void set_reward(const T* w, T* gw, const int32_t* last, const float* dr, double* rewards) {
    reward_w_ = w, reward_gw_ = gw, reward_last_ = last, reward_dr_ = dr, reward_out_ = rewards;
  }
  // QLoRA-style frozen base (LoraConfig::quantized_base): every matrix of the base (the
  // layers' projections and experts, the output layer, the token embedding; not GPT-2's
  // position table: params.h frozen_matrix) is read from w in its stored type instead of
  // from p, whose regions there are then never read: forward products on the inference
  // kernels (linear()), input gradients dX = dY W from W dequantized a chunk of rows at a
  // time. float, fp32 products only; the passes then take g = null (no base gradient).
  // w must outlive this model.
  void set_frozen_weights(const Weights& w);
  // LoRA off: the passes compute the base model (DPO's reference); on again by default.
  void enable_lora(bool on) { lora_on_ = on; }
  // Distillation: the teacher's log softmax(logits / tau) of this batch's rows (B*T, V) for the
  // next passes (the loss is kd_cross_entropy's: CeResult::kd_sum); null: plain cross-entropy.
  void set_teacher(const float* logp, const KdOptions& kd) { teacher_ = logp, kd_ = kd; }
  // Packed examples: seg (B*T), the first position of each token's example in its row (the
  // attention stays inside examples); null: plain causal rows. Kept until changed.
  void set_segments(const int32_t* seg) { seg_ = seg; }

  // Called by forward_backward with l as soon as block l's gradient in g is final (the
  // blocks in reverse order; the rest is final when the pass returns): ZeRO-2's buckets.
  void set_grad_ready(std::function<void(int64_t)> f) { grad_ready_ = std::move(f); }
  // Called with (l, true) just before block l's weights in p are read (its forward; in
  // forward_backward again before its backward) and with (l, false) once the pass is done
  // with them: ZeRO-3 gathers a block's weights there and drops them after. The weights
  // outside the blocks (embeddings, final norm, output, MTP modules) must be whole in p
  // for the whole pass.
  void set_weights_hook(std::function<void(int64_t, bool)> f) { weights_hook_ = std::move(f); }
  // Tensor parallelism (train/tensor_parallel.h): this model is one rank's slice of the
  // blocks; the attention output and down products' partial sums are all-reduced over c in
  // the forward, the sublayers' input gradients in the backward. Null: off.
  void set_tensor_parallel(class Communicator* c) { tp_ = c; }

  // Layer l's keys (after RoPE) and values of the last forward, rows of *stride elements
  // ((N, kv_dim) each; GPT-2: inside the fused qkv rows). Not in recompute mode.
  std::pair<const T*, const T*> layer_kv(int64_t l, int64_t* stride) const;

  size_t activation_bytes() const { return (acts_.size() + lora_acts_.size() + bn_acts_.size()) * sizeof(T); }
  // Rows routed to each expert (n_layers x E, zero for dense layers) by the forward passes
  // since the last call; then zeroed.
  std::vector<int64_t> take_expert_counts();
  // Slots dropped by the capacity limit in the forward passes since the last call; then zeroed.
  int64_t take_dropped() { return std::exchange(dropped_, 0); }
  int64_t batch() const { return B_; }
  int64_t seq() const { return T_; }

 private:
  struct LayerActs {  // views into acts_; shapes with N = B * T
    T *x_in, *xn1, *m1, *r1;  // (N, C), (N, C), (N), (N)
    T *q, *k, *v;             // (N, qd), (N, kvd), (N, kvd); GPT-2: q is (N, 3C) fused, k/v point into it
    T *q0, *k0, *rq, *rk;     // QK-norm: q, k before the norm (N, qd), (N, kvd); rstd (N * nh), (N * nkv)
    T *lse, *att, *x_mid;     // (B, nh, T) attention log-sum-exp, (N, qd), (N, C)
    T *xn2, *m2, *r2;         // (N, C), (N), (N)
    T *g, *u, *h;             // (N, H) each (GPT-2: g = pre-GELU, u unused)
    // Mixture-of-experts layers (train/moe_train.cpp); k = experts per row, Nk = N k:
    T *rl, *rp, *mw;          // (N, E) router logits, probabilities; (N, k) expert weights
    T *xg, *eg, *eu, *eh, *ed;  // (Nk, C) rows gathered by expert; (Nk, He) x3; (Nk, C) expert outputs
    T *sg, *su, *sh, *so, *sgate;  // shared expert (N, Hs) x3, (N, C) output, (N) gate
    int32_t *sel, *inv, *off;  // (Nk) expert of each slot, its gathered row, (E + 1) experts' first rows
    // Latent attention (train/mla_train.cpp); q, k, v, att are (N, n_heads x head_dim) there:
    T *cq, *cqn, *rqa;        // (N, q LoRA) before / after its norm, (N) rstd; null without a q LoRA
    T *c0, *cn, *rc, *kpe;    // (N, d_c) latent before / after kv_a_norm, (N) rstd, (N, rope) k_pe after RoPE
    T *kv, *att2;             // (N, n_heads (nope + v)) kv_b's output, (N, n_heads v) the output projection's input
  };
  void layer_fwd(const T* p, int64_t l, LayerActs& a, T* x_out);
  // The MoE feed-forward of layer l: ffn_out = sum_i w_i expert_i(ffn_in) (+ shared),
  // and its backward into dxn_ (=) from dy = d ffn_out (train/moe_train.cpp).
  void moe_fwd(const T* p, int64_t l, LayerActs& a, const T* ffn_in, T* ffn_out);
  void moe_bwd(const T* p, T* g, int64_t l, LayerActs& a, const T* dy, const T* ffn_in);
  // Sizes of one stored layer's MoE activations (floats, ints) and of the MoE gradient scratch.
  int64_t moe_act_floats() const;
  int64_t moe_grad_floats() const;
  void layer_bwd(const T* p, T* g, int64_t l, LayerActs& a, T* dx);  // dx: d x_out in, d x_in out
  // Latent attention (ModelConfig::mla(); train/mla_train.cpp): y = attention of layer l on x,
  // and its backward into dxn_ (=) from dy = d y. Floats per token of a stored layer's own
  // buffers, and of the backward scratch.
  void mla_fwd(const T* p, int64_t l, LayerActs& a, const T* x, T* y);
  void mla_bwd(const T* p, T* g, int64_t l, LayerActs& a, const T* dy, const T* x);
  int64_t mla_act_floats() const;
  int64_t mla_grad_floats() const;
  // Multi-token prediction modules (train/mtp.cpp): the blocks of every depth after the
  // main layers; depth k's loss (and, backward, its gradients) into r; the backward of all
  // depths, adding d (final hidden state) into dx_.
  struct MtpActs {  // per depth; shapes with N = B * T
    T *cat, *u, *h, *emb, *r;  // (N, 2C) [enorm(emb); hnorm(h)], (N, C) block input, output, embeddings; (2N) rstd
    int32_t *tok, *tgt;        // (N) the token k ahead (embedded), the target k + 1 ahead (-1: none)
  };
  void mtp_fwd(const T* p, const int32_t* tokens, const int32_t* targets);
  void mtp_head(const T* p, T* g, int64_t k, float scale, bool backward, blk::CeResult& r, T* dh);
  void mtp_bwd(const T* p, T* g, float scale, blk::CeResult& r);
  void head(const T* p, T* g, const int32_t* targets, float scale, bool backward, blk::CeResult& r);
  LayerActs& acts_for(int64_t l) { return o_.recompute ? work_ : layers_[size_t(l)]; }
  // Prefix tuning (LoraConfig::prefix_len): layer l's prefix keys merged into a.att / a.lse;
  // backward: delta_ from datt_ and a.att (attn_delta, null without a prefix), then dq_ += and
  // the prefix rows' gradients +=.
  bool prefix_on() const { return lora_ && lora_on_ && lora_->lora.prefix(); }
  // Bottleneck adapters (LoraConfig::adapter_dim) on layer l's site s (0 attention, 1 feed-forward).
  bool bn_on() const { return lora_ && lora_on_ && lora_->lora.bottleneck(); }
  void bottleneck_fwd(int64_t l, int s, T* y);
  const T* bottleneck_bwd(int64_t l, int s, const T* dy);
  void prefix_fwd(int64_t l, LayerActs& a);
  const T* attn_delta(int64_t l, LayerActs& a);
  void prefix_bwd(int64_t l, LayerActs& a);
  // The learned position table (GPT-2) from the first token's position (P with a prefix); null without one.
  template <class U>
  U* pos_embd(U* p) const {
    if (L_.pos_embd == kAbsent) return nullptr;
    return p + L_.pos_embd + (lora_ && lora_->lora.prefix() ? lora_->lora.prefix_len * c_.dim : 0);
  }
  blk::AttnShape attn_shape(int64_t l) const;  // layer l's (its sliding window)
  // Linear layers in the run's precision (fp32 sgemm, or bf16 products).
  void lin_fwd(T* Y, const T* X, const T* W, const T* b, int64_t N, int64_t I, int64_t O);
  void lin_bwd(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t N, int64_t I, int64_t O,
               bool accumulate, bool dw_accumulate);
  // The same, plus layer l's adapter at site s when it has one (train/lora.h).
  void lin_fwd_a(int64_t l, LoraSite s, T* Y, const T* X, const T* W, const T* b, int64_t N, int64_t I, int64_t O);
  void lin_bwd_a(int64_t l, LoraSite s, T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t N,
                 int64_t I, int64_t O, bool accumulate, bool dw_accumulate);
  const T* lora_input(int64_t l, LoraSite s, const T* X, int64_t I);  // X, or X dropped (adapter dropout)
  // Y (= or +=) X W^T and its backward (dW +=; dX = or +=), for the adapters' f32 products.
  void small_fwd(T* Y, const T* X, const T* W, int64_t N, int64_t I, int64_t O, bool accumulate);
  void small_bwd(T* dX, T* dW, const T* dY, const T* X, const T* W, int64_t N, int64_t I, int64_t O, bool accumulate);
  void embed(const T* p, const int32_t* tokens);
  void layers_fwd(const T* p, const int32_t* tokens, uint64_t dropout_key);  // embedding + every block
  // Dropout key of (layer, site); 0 (no dropout) outside training steps.
  uint64_t site_key(int64_t layer, int site) const {
    return drop_key_ == 0 ? 0 : drop_key_ ^ (uint64_t(layer + 1) * 0x100000001b3ull + uint64_t(site) * 0x9e3779b97f4a7c15ull);
  }
  const T* dropped(const T* dx, int64_t l, int site);  // dx masked like (l, site), in a scratch buffer
  void drop(T* x, int64_t l, int site) {
    if (drop_key_ != 0) blk::dropout(x, N_ * c_.dim, o_.dropout, site_key(l, site));
  }

  const Layout& L_;
  ModelConfig c_;
  ModelOptions o_;
  int64_t B_, T_, N_;
  aligned_vector<T> acts_;
  std::vector<LayerActs> layers_;
  LayerActs work_{};              // the recomputed block (recompute mode)
  std::vector<T*> x_in_;          // (n_layers + 1) residual inputs; the last is the final stream
  T *xf_, *mf_, *rf_, *logits_;   // (N, C), (N), (N), (logit_rows, V)
  T *dx_, *dxn_, *dq_, *dk_, *dv_, *datt_, *dg_, *du_, *dh_, *dxf_;
  std::vector<MtpActs> mtp_;                 // per depth
  std::vector<int32_t> mtp_ints_;            // their tok / tgt
  T *mtp_dh_ = nullptr, *mtp_dhp_ = nullptr;  // (N, C) d h of the depth in hand, d h from the next depth
  T *mtp_t1_ = nullptr, *mtp_t2_ = nullptr, *mtp_dcat_ = nullptr;  // (N, C) x2, (N, 2C) scratch
  // MoE gradient scratch: (Nk, C), (Nk, He) x3, (N, E), (N, k), shared (N, Hs) x3, (N, C).
  T *dmd_ = nullptr, *deh_ = nullptr, *deg_ = nullptr, *deu_ = nullptr, *dr_ = nullptr, *dmw_ = nullptr;
  T *dsh_ = nullptr, *dsg_ = nullptr, *dsu_ = nullptr, *dso_ = nullptr;
  // Latent attention backward scratch: (N, n_heads (nope + v)), (N, d_c), (N, d_c + rope), (N, q LoRA).
  T *mla_dkv_ = nullptr, *mla_dc_ = nullptr, *mla_dckv_ = nullptr, *mla_dcq_ = nullptr;
  std::vector<int32_t> iacts_;         // the layers' MoE routing indices
  std::vector<int64_t> expert_counts_;  // (n_layers, E) rows routed, since take_expert_counts()
  // Routing scratch, sized once: next gathered row per expert (E); P and routed counts (2E);
  // a row of E, then two rows of E per thread (the router backward).
  std::vector<int32_t> moe_next_;
  std::vector<double> moe_stat_;
  std::vector<T> moe_row_;
  const int32_t* tokens_ = nullptr;    // the pass's tokens (B, T): hash routing's keys (moe_fwd)
  bool counting_ = false;              // in layers_fwd: router losses and counts are taken
  double moe_bal_ = 0, moe_z_ = 0;     // this pass's router losses (sums over layers, times N)
  int64_t dropped_ = 0;                // slots dropped by the capacity limit, since take_dropped()
  float grad_scale_ = 0.f;             // this backward's grad_scale
  std::vector<float> cos_, sin_;  // RoPE (T, hd / 2)
  std::vector<T> attn_scratch_;   // (threads, attention_scratch(T)) for attention_fwd/bwd
  std::vector<std::vector<uint8_t>> sparse_masks_;  // per layer: a sparse pattern's (T, T) table (AttnShape::mask)
  uint64_t drop_key_ = 0;         // this batch's dropout key (0: none)
  std::function<void(int64_t)> grad_ready_;  // set_grad_ready
  std::function<void(int64_t, bool)> weights_hook_;  // set_weights_hook
  class Communicator* tp_ = nullptr;                 // set_tensor_parallel
  void tp_sum(T* x, int64_t n);                      // x <- its sum over the tensor-parallel ranks
  bool fresh_ = false;            // in an overwrite backward: the weight products write their gradients
  std::vector<std::pair<size_t, size_t>> zero_ranges_;  // [begin, end) of g not written by those products
  Isa isa_ = detect_isa();        // for the vectorised loss rows
  std::vector<double> ce_rows_;   // (2, logit_rows) per-row loss terms
  std::unique_ptr<KernelContext> bf16_;  // threads + packing scratch of the bf16 products (bf16 runs)
  std::unique_ptr<KernelContext> f32_;   // the same for gemm_f32 (fp32 runs on AVX-512)
  aligned_vector<uint32_t> head_fwd_pk_;  // the output weight (V, C) packed for the forward (when chunks > 1)
  aligned_vector<uint32_t> head_dx_pk_;   // and (C, V) for dX; remade in round_weights
  KernelContext& gemm_ctx() { return bf16_ ? *bf16_ : *f32_; }  // when either exists
  void head_fwd(T* Y, const T* X, const T* W, int64_t n);
  void head_bwd(T* dX, T* dW, const T* dY, const T* X, const T* W, int64_t n, bool dw_accumulate);
  aligned_vector<uint16_t> w16_;           // bf16 runs: the parameters rounded to bf16, once per pass
  const T* p16_of_ = nullptr;            // the parameters w16_ was made from (this pass)
  void round_weights(const T* p);        // bf16 runs: w16_ = bf16(p)
  const uint16_t* w16(const T* W) const { return bf16_ ? w16_.data() + (W - p16_of_) : nullptr; }
  // LoRA: the layout, this pass's adapter parameters and gradient, U = A x per layer and site
  // (n_layers, kLoraSites, N, r) (scaled by alpha / r), scratch (N, max out) (reference path only),
  // (N, max in) (adapter dropout), (N, r).
  const LoraLayout* lora_ = nullptr;
  const T* la_ = nullptr;
  T* lga_ = nullptr;
  uint64_t lora_key_ = 0;  // this pass's adapter-dropout key (0: none)
  const int32_t* seg_ = nullptr;  // set_segments
  const float* teacher_ = nullptr;  // set_teacher
  double* row_nll_ = nullptr;       // set_row_nll
  const float* row_weight_ = nullptr;  // set_row_weights
  bool lora_on_ = true;             // enable_lora
  const T* reward_w_ = nullptr;     // set_reward
  T* reward_gw_ = nullptr;
  const int32_t* reward_last_ = nullptr;
  const float* reward_dr_ = nullptr;
  double* reward_out_ = nullptr;
  void reward_head(T* g, float scale, bool backward);
  KdOptions kd_;
  std::vector<T> lora_acts_, lora_y_, lora_x_, lora_du_;
  const Weights* frozen_ = nullptr;  // set_frozen_weights
  std::unique_ptr<KernelContext> qctx_;
  std::vector<float> qchunk_;        // (kQRows, widest input) dequantized rows of a frozen matrix
  static constexpr int64_t kQRows = 256;
  // The frozen matrix (a tensor, or one expert of a (E, rows, cols) tensor) whose f32 place in
  // the parameters is W; null for everything the parameters hold themselves. Error for a
  // pointer inside a frozen tensor that is not one of its matrices.
  const TensorView* frozen_at(const T* W) const;
  std::unordered_map<size_t, TensorView> frozen_off_;          // parameter offset -> stored matrix
  std::vector<std::pair<size_t, size_t>> frozen_ranges_;      // [begin, end) of the frozen tensors
  void qlin_fwd(T* Y, const T* X, const TensorView& W, const T* b, int64_t N, int64_t I, int64_t O);
  void qlin_bwd(T* dX, const T* dY, const TensorView& W, int64_t N, int64_t I, int64_t O, bool accumulate);
  std::vector<T> bn_acts_, bn_da_, bn_dy_;  // adapters: (layers, 2, N (C + 2m)); (2, N, m) scratch; (N, C) d y
  std::vector<T> delta_;  // (B, n_heads, T) rowsum(d att * att) of the layer in hand (prefix tuning)
};

extern template class Transformer<float>;
extern template class Transformer<double>;

}  // namespace tessera::train
