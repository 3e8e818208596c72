#include "train/transformer.h"

#include "train/communicator.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include <omp.h>

#include "core/aligned.h"
#include "core/error.h"
#include "kernels/gemm_bf16.h"

namespace tessera::train {

template <class T>
Transformer<T>::Transformer(const Layout& L, int64_t B, int64_t T_, const ModelOptions& o)
    : L_(L), c_(L.cfg), o_(o), B_(B), T_(T_), N_(B * T_) {
  if (B <= 0 || T_ <= 0) fail("training batch must be positive, got batch ", B, " x seq ", T_);
  if (T_ > c_.max_seq_len) fail("sequence length ", T_, " exceeds the model's context (max_seq_len ", c_.max_seq_len, ")");
  if (o_.logit_rows <= 0) o_.logit_rows = 256;
  const int64_t N = N_, C = c_.dim, H = c_.hidden_dim, V = c_.vocab_size;
  const bool gpt2 = c_.arch == Arch::GPT2;
  // Latent attention expands every head's key and value to (n_heads, head_dim) rows (mla_fwd).
  const int64_t qd = gpt2 ? C : c_.q_dim(), kvd = gpt2 ? C : c_.mla() ? qd : c_.kv_dim();
  const int64_t qbuf = gpt2 ? 3 * C : qd, kbuf = gpt2 ? 0 : kvd;
  const int64_t n_stored = o_.recompute ? 1 : c_.n_blocks();  // the MTP modules' blocks too
  const int64_t D = c_.mtp_depth;
  // Elements per token of a stored layer, which dominate (attention keeps a log-sum-exp per head, not
  // the (T, T) probabilities); checked in double before the int64 sizes below are formed, then the whole plan.
  const int64_t qkn_tok = c_.qk_norm ? qd + kvd + c_.n_heads + c_.n_kv_heads : 0;
  const int64_t mla_tok = c_.mla() ? mla_act_floats() : 0;
  const int64_t layer_tok = qkn_tok + mla_tok + 3 * C + 4 + qbuf + 2 * kbuf + c_.n_heads + qd + 3 * H;
  const std::string mem_what = "batch " + std::to_string(B) + " x seq " + std::to_string(T_) +
                               ": the training activations need",
                    mem_hint = "lower --batch or --seq, or use --recompute";
  require_memory(double(sizeof(T)) * double(n_stored) * double(B) * double(T_) * double(layer_tok), mem_what,
                 mem_hint);
  const int64_t per_layer = N * layer_tok;
  const int64_t grads = N * C * 3 + N * qbuf + 2 * N * kbuf + N * qd + 3 * N * H + (c_.mla() ? N * mla_grad_floats() : 0);
  // Every buffer starts on a cache line: at most 28 per stored layer (plan) and n_layers + 19 others.
  constexpr int64_t kAlign = 64 / sizeof(T);
  const int64_t slack = kAlign * (28 * n_stored + c_.n_layers + 19 + 5 * D + 5);
  // Mixture-of-experts layers: their routing buffers per stored MoE layer, and one gradient scratch.
  int64_t moe_stored = 0;
  for (int64_t l = 0; l < c_.n_layers; ++l) moe_stored += c_.moe_layer(l);
  if (o_.recompute) moe_stored = std::min<int64_t>(moe_stored, 1);
  const int64_t moe_total = moe_stored * moe_act_floats() + (moe_stored > 0 ? moe_grad_floats() : 0);
  const int64_t mtp_total = D > 0 ? D * N * (5 * C + 2) + 6 * N * C : 0;  // mtp_fwd's per depth, mtp_bwd's scratch
  const int64_t total = per_layer * n_stored + N * C * (c_.n_layers + 1) + N * C + 2 * N + o_.logit_rows * V + grads +
                        moe_total + kAlign * 24 * moe_stored + kAlign * 12 + mtp_total;
  require_memory(double(sizeof(T)) * double(total + slack), mem_what, mem_hint);
  acts_.assign(size_t(total + slack), T(0));
  T* cur = acts_.data();
  auto take = [&](int64_t n) {
    T* r = cur;
    cur += (n + kAlign - 1) / kAlign * kAlign;
    return r;
  };
  const int64_t E = c_.moe_experts, k = c_.moe_used, Nk = N * k, He = c_.moe_hidden, Hs = c_.moe_shared_hidden;
  iacts_.assign(size_t(moe_stored * (2 * Nk + E + 1)), 0);
  int32_t* icur = iacts_.data();
  auto plan_moe = [&](LayerActs& a) {
    a.rl = take(N * E), a.rp = take(N * E), a.mw = take(Nk);
    a.xg = take(Nk * C), a.eg = take(Nk * He), a.eu = take(Nk * He), a.eh = take(Nk * He), a.ed = take(Nk * C);
    if (Hs > 0) a.sg = take(N * Hs), a.su = take(N * Hs), a.sh = take(N * Hs), a.so = take(N * C), a.sgate = take(N);
    a.sel = icur, a.inv = icur + Nk, a.off = icur + 2 * Nk;
    icur += 2 * Nk + E + 1;
  };
  auto plan = [&](LayerActs& a, int64_t l) {
    if (l < 0 ? moe_stored > 0 : c_.moe_layer(l)) plan_moe(a);
    a.xn1 = take(N * C), a.m1 = take(N), a.r1 = take(N);
    a.q = take(N * qbuf);
    if (gpt2) {
      a.k = a.q + C, a.v = a.q + 2 * C;
    } else {
      a.k = take(N * kbuf), a.v = take(N * kbuf);
    }
    if (c_.qk_norm) a.q0 = take(N * qd), a.k0 = take(N * kvd), a.rq = take(N * c_.n_heads), a.rk = take(N * c_.n_kv_heads);
    if (c_.mla()) {
      const int64_t qr = c_.mla_q_lora, dc = c_.mla_kv_lora, dr = c_.mla_rope, vd = c_.mla_v_dim;
      if (qr > 0) a.cq = take(N * qr), a.cqn = take(N * qr), a.rqa = take(N);
      a.c0 = take(N * dc), a.cn = take(N * dc), a.rc = take(N), a.kpe = take(N * dr);
      a.kv = take(N * c_.n_heads * (c_.head_dim - dr + vd)), a.att2 = take(N * c_.n_heads * vd);
    }
    a.lse = take(B * c_.n_heads * T_), a.att = take(N * qd), a.x_mid = take(N * C);
    a.xn2 = take(N * C), a.m2 = take(N), a.r2 = take(N);
    a.g = take(N * H), a.u = take(N * H), a.h = take(N * H);
  };
  if (o_.recompute) {
    plan(work_, -1);
  } else {
    layers_.resize(size_t(c_.n_blocks()));
    for (int64_t l = 0; l < c_.n_blocks(); ++l) plan(layers_[size_t(l)], l);
  }
  if (D > 0) {
    mtp_.resize(size_t(D));
    mtp_ints_.assign(size_t(2 * D * N), 0);
    for (int64_t k = 0; k < D; ++k) {
      MtpActs& m = mtp_[size_t(k)];
      m.cat = take(2 * N * C), m.u = take(N * C), m.h = take(N * C), m.emb = take(N * C), m.r = take(2 * N);
      m.tok = mtp_ints_.data() + 2 * k * N, m.tgt = m.tok + N;
    }
    mtp_dh_ = take(N * C), mtp_dhp_ = take(N * C), mtp_t1_ = take(N * C), mtp_t2_ = take(N * C);
    mtp_dcat_ = take(2 * N * C);
  }
  x_in_.resize(size_t(c_.n_layers + 1));
  for (auto& x : x_in_) x = take(N * C);
  if (!o_.recompute)
    for (int64_t l = 0; l < c_.n_layers; ++l) layers_[size_t(l)].x_in = x_in_[size_t(l)];
  xf_ = take(N * C), mf_ = take(N), rf_ = take(N), logits_ = take(o_.logit_rows * V);
  dx_ = take(N * C), dxn_ = take(N * C), dxf_ = take(N * C);
  dq_ = take(N * qbuf);
  if (gpt2) {
    dk_ = dq_ + C, dv_ = dq_ + 2 * C;
  } else {
    dk_ = take(N * kbuf), dv_ = take(N * kbuf);
  }
  datt_ = take(N * qd), dg_ = take(N * H), du_ = take(N * H), dh_ = take(N * H);
  if (c_.mla()) {
    const int64_t dc = c_.mla_kv_lora, dr = c_.mla_rope;
    mla_dkv_ = take(N * c_.n_heads * (c_.head_dim - dr + c_.mla_v_dim)), mla_dc_ = take(N * dc);
    mla_dckv_ = take(N * (dc + dr)), mla_dcq_ = take(N * c_.mla_q_lora);
  }
  if (moe_stored > 0) {
    dmd_ = take(Nk * C), deh_ = take(Nk * He), deg_ = take(Nk * He), deu_ = take(Nk * He);
    dr_ = take(N * E), dmw_ = take(Nk);
    if (Hs > 0) dsh_ = take(N * Hs), dsg_ = take(N * Hs), dsu_ = take(N * Hs), dso_ = take(N * C);
    expert_counts_.assign(size_t(c_.n_layers * E), 0);
    moe_next_.assign(size_t(E), 0), moe_stat_.assign(size_t(2 * E), 0.0);
    moe_row_.assign(size_t(E) * size_t(1 + 2 * omp_get_max_threads()), T(0));
  }
  if (cur > acts_.data() + acts_.size()) fail("internal: training arena overflow");
  // With forward_backward(overwrite), the first product of each weight matrix writes its gradient; every
  // other element of the buffer (norm gains, biases, embeddings, padding) is zeroed first.
  std::vector<std::pair<size_t, size_t>> written;  // [begin, end) of each GEMM-written weight
  auto mat = [&](size_t off) {
    if (off == kAbsent) return;
    for (const auto& t : L_.tensors)
      if (t.offset == off) written.emplace_back(off, off + t.numel);
  };
  for (const auto& o : L_.layers)
    for (size_t off : {o.wq, o.wk, o.wv, o.wqkv, o.wo, o.w_gate, o.w_up, o.w_down, o.wq_a, o.wq_b, o.wkv_a, o.wkv_b})
      mat(off);
  mat(L_.output);
  std::sort(written.begin(), written.end());
  size_t at = 0;
  for (const auto& [b, e] : written) {
    if (b > at) zero_ranges_.emplace_back(at, b);
    at = std::max(at, e);
  }
  if (at < L_.total) zero_ranges_.emplace_back(at, L_.total);
  attn_scratch_.resize(size_t(omp_get_max_threads() * blk::attention_scratch(T_)));
  if (c_.has_sparse_attention()) {  // each sparse layer's (T, T) visibility table, made once
    sparse_masks_.resize(size_t(c_.n_layers));
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      const LayerConfig& lc = c_.layer(l);
      if (lc.attn != AttnKind::Sparse) continue;
      const int64_t heads = lc.head_dilation.empty() ? 1 : c_.n_heads;  // per-head dilations: a table per head
      require_memory(double(heads) * double(T_) * double(T_), "the sparse attention pattern's table", "lower --seq");
      auto& m = sparse_masks_[size_t(l)];
      m.assign(size_t(heads * T_ * T_), 0);
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < T_; ++i)
          for (int64_t j = 0; j <= i; ++j) m[size_t((h * T_ + i) * T_ + j)] = lc.sees(i, j, heads > 1 ? h : -1);
    }
  }
  ce_rows_.resize(size_t(2 * o_.logit_rows));
  if (o_.bf16) {
    if (!std::is_same_v<T, float>) fail("internal: bf16 training runs on float parameters");
    bf16_ = std::make_unique<KernelContext>(omp_get_max_threads());
    w16_.resize(L_.total);
    if (!gemm_bf16_available(*bf16_))
      std::fprintf(stderr, "warning: this CPU has no AVX-512 BF16; bf16 matrix products use the slow scalar reference\n");
  }
  // fp32 runs on AVX-512: the linear layers on gemm_f32 (faster than OpenBLAS sgemm on these shapes).
  if (std::is_same_v<T, float> && !o_.bf16 && isa_ == Isa::AVX512)
    f32_ = std::make_unique<KernelContext>(omp_get_max_threads());
  // The output layer's weight is multiplied once per logit chunk, forward and for dX: packed once per pass.
  if ((f32_ || (bf16_ && gemm_bf16_available(*bf16_))) && N > o_.logit_rows) {
    head_fwd_pk_.resize(size_t(gemm_packed_words(V, C, !bf16_)));
    head_dx_pk_.resize(size_t(gemm_packed_words(C, V, !bf16_)));
  }
  if (!gpt2) {
    const int64_t half = c_.rope_dims() / 2;  // MLA: only each head's RoPE part turns
    cos_.resize(size_t(T_ * half)), sin_.resize(size_t(T_ * half));
    ops::rope_tables(cos_.data(), sin_.data(), T_, c_.rope_dims(), c_.rope_theta, c_.rope_freq_div());
  }
}

namespace {
template <class T>
void fill_zero(T* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = T(0);
}
}  // namespace

template <class T>
void Transformer<T>::lin_fwd(T* Y, const T* X, const T* W, const T* b, int64_t N, int64_t I, int64_t O) {
  if (const TensorView* q = frozen_at(W)) return qlin_fwd(Y, X, *q, b, N, I, O);  // a frozen stored matrix
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_) return blk::linear_fwd_gemm(*bf16_, Y, X, W, w16(W), b, N, I, O);
    if (f32_) return blk::linear_fwd_gemm(*f32_, Y, X, W, nullptr, b, N, I, O, true);
  }
  blk::linear_fwd(Y, X, W, b, N, I, O);
}

template <class T>
void Transformer<T>::lin_bwd(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t N, int64_t I, int64_t O,
                             bool accumulate, bool dw_accumulate) {
  if (const TensorView* q = frozen_at(W)) {  // frozen: only the input gradient
    if (dW || db) fail("internal: a gradient for a frozen matrix");
    if (dX) qlin_bwd(dX, dY, *q, N, I, O, accumulate);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    blk::LinearBwdOptions o;
    o.accumulate = accumulate, o.dw_accumulate = dw_accumulate;
    if (bf16_) return blk::linear_bwd_gemm(*bf16_, dX, dW, db, dY, X, W, w16(W), N, I, O, o);
    o.f32 = true;
    if (f32_) return blk::linear_bwd_gemm(*f32_, dX, dW, db, dY, X, W, nullptr, N, I, O, o);
  }
  blk::linear_bwd(dX, dW, db, dY, X, W, N, I, O, accumulate, dw_accumulate);
}

// The output layer's products: with its weight pre-packed (once per pass, in
// round_weights) where our GEMM runs them; otherwise as any linear layer.
template <class T>
void Transformer<T>::head_fwd(T* Y, const T* X, const T* W, int64_t n) {
  const int64_t C = c_.dim, V = c_.vocab_size;
  if (frozen_) return qlin_fwd(Y, X, frozen_->output, nullptr, n, C, V);
  if constexpr (std::is_same_v<T, float>) {
    if (!head_fwd_pk_.empty()) {
      return blk::linear_fwd_gemm(gemm_ctx(), Y, X, W, w16(W), nullptr, n, C, V, !bf16_, head_fwd_pk_.data());
    }
  }
  lin_fwd(Y, X, W, (const T*)nullptr, n, C, V);
}

template <class T>
void Transformer<T>::head_bwd(T* dX, T* dW, const T* dY, const T* X, const T* W, int64_t n, bool dw_accumulate) {
  const int64_t C = c_.dim, V = c_.vocab_size;
  if (frozen_) {
    if (dW) fail("internal: a gradient for the frozen output layer");
    return qlin_bwd(dX, dY, frozen_->output, n, C, V, false);
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!head_dx_pk_.empty()) {
      blk::LinearBwdOptions o;
      o.dw_accumulate = dw_accumulate, o.f32 = !bf16_, o.wt_packed = head_dx_pk_.data();
      return blk::linear_bwd_gemm(gemm_ctx(), dX, dW, nullptr, dY, X, W, w16(W), n, C, V, o);
    }
  }
  lin_bwd(dX, dW, (T*)nullptr, dY, X, W, n, C, V, false, dw_accumulate);
}

template <class T>
blk::AttnShape Transformer<T>::attn_shape(int64_t l) const {
  blk::AttnShape s;
  s.B = B_, s.T = T_, s.n_heads = c_.n_heads, s.n_kv_heads = c_.n_kv_heads, s.hd = c_.head_dim;
  if (c_.arch == Arch::GPT2) {
    s.q_stride = s.kv_stride = 3 * c_.dim;
  } else if (c_.mla()) {  // every head's expanded key and value (mla_fwd)
    s.n_kv_heads = c_.n_heads, s.q_stride = s.kv_stride = c_.q_dim();
  } else {
    s.q_stride = c_.q_dim(), s.kv_stride = c_.kv_dim();
  }
  s.softcap = c_.attn_softcap;
  s.isa = isa_;
  const LayerConfig& lc = c_.layer(l);
  s.window = lc.attn == AttnKind::SlidingWindow ? lc.window : 0;
  s.pattern = lc.attn == AttnKind::Sparse ? &c_.layer(l) : nullptr;
  if (s.pattern) s.mask = sparse_masks_[size_t(l)].data(), s.mask_head_stride = lc.head_dilation.empty() ? 0 : T_ * T_;
  s.seg = seg_;
  return s;
}

// Pre-norm (default): x_mid = x + attn(norm1(x)), out = x_mid + ffn(norm2(x_mid)),
//   with xn1 = norm1(x) and xn2 = norm2(x_mid) saved.
// Post-norm (the original Transformer): x_mid = norm1(x + attn(x)),
//   out = norm2(x_mid + ffn(x_mid)), with the sums saved in xn1 and xn2 (the
//   norms' inputs) and the sublayers reading x and x_mid directly.
template <class T>
void Transformer<T>::tp_sum(T* x, int64_t n) {
  if (tp_) tp_->all_reduce_sum(x, size_t(n));
}

template <class T>
void Transformer<T>::layer_fwd(const T* p, int64_t l, LayerActs& a, T* x_out) {
  const auto& o = L_.layers[size_t(l)];
  const int64_t N = N_, C = c_.dim, H = c_.hidden_dim;
  const T eps = T(c_.norm_eps);
  auto P = [&](size_t off) { return off == kAbsent ? nullptr : p + off; };
  const bool post = c_.norm_placement == NormPlacement::Post, llama = c_.arch == Arch::Llama;
  // y = norm(x) with the layer's first (1) or second (2) norm, saving its statistics.
  auto norm = [&](int k, T* y, const T* x) {
    const size_t gw = k == 1 ? o.attn_norm : o.ffn_norm, gb = k == 1 ? o.attn_norm_b : o.ffn_norm_b;
    if (llama) blk::rmsnorm_fwd(y, k == 1 ? a.r1 : a.r2, x, P(gw), N, C, eps, isa_);
    else blk::layernorm_fwd(y, k == 1 ? a.m1 : a.m2, k == 1 ? a.r1 : a.r2, x, P(gw), P(gb), N, C, eps, isa_);
  };
  const T* x = a.x_in;
  const T* attn_in = x;
  if (!post) norm(1, a.xn1, x), attn_in = a.xn1;
  T* attn_out = post ? a.xn1 : a.x_mid;  // the attention sublayer's output, before the residual
  if (c_.mla()) {
    mla_fwd(p, l, a, attn_in, attn_out);
  } else if (llama) {
    const int64_t qd = c_.q_dim(), kvd = c_.kv_dim();
    lin_fwd_a(l, LoraSite::Q, a.q, attn_in, P(o.wq), P(o.bq), N, C, qd);    // (N, qd)
    lin_fwd_a(l, LoraSite::K, a.k, attn_in, P(o.wk), P(o.bk), N, C, kvd);   // (N, kvd)
    lin_fwd_a(l, LoraSite::V, a.v, attn_in, P(o.wv), P(o.bv), N, C, kvd);   // (N, kvd)
    if (c_.qk_norm) {  // RMSNorm over every head of q and k: rows of head_dim
      std::copy(a.q, a.q + N * qd, a.q0);
      std::copy(a.k, a.k + N * kvd, a.k0);
      blk::rmsnorm_fwd(a.q, a.rq, a.q0, P(o.q_norm), N * c_.n_heads, c_.head_dim, eps, isa_);
      blk::rmsnorm_fwd(a.k, a.rk, a.k0, P(o.k_norm), N * c_.n_kv_heads, c_.head_dim, eps, isa_);
    }
    blk::rope(a.q, N, T_, c_.n_heads, c_.head_dim, qd, cos_.data(), sin_.data(), c_.rope_style, false);
    blk::rope(a.k, N, T_, c_.n_kv_heads, c_.head_dim, kvd, cos_.data(), sin_.data(), c_.rope_style, false);
    blk::attention_fwd(a.att, a.lse, a.q, a.k, a.v, attn_shape(l), attn_scratch_.data());  // (N, qd)
    prefix_fwd(l, a);
    lin_fwd_a(l, LoraSite::O, attn_out, a.att, P(o.wo), (const T*)nullptr, N, qd, C);
    tp_sum(attn_out, N * C);  // tensor parallelism: the heads' partial sums
  } else {
    lin_fwd_a(l, LoraSite::Qkv, a.q, attn_in, P(o.wqkv), P(o.bqkv), N, C, 3 * C);  // (N, 3C)
    blk::attention_fwd(a.att, a.lse, a.q, a.k, a.v, attn_shape(l), attn_scratch_.data());
    prefix_fwd(l, a);
    lin_fwd_a(l, LoraSite::O, attn_out, a.att, P(o.wo), P(o.bo), N, C, C);
  }
  bottleneck_fwd(l, 0, attn_out);
  drop(attn_out, l, 0);
  blk::add(attn_out, x, N * C);
  if (post) norm(1, a.x_mid, a.xn1);
  const T* ffn_in = a.x_mid;
  if (!post) norm(2, a.xn2, a.x_mid), ffn_in = a.xn2;
  T* ffn_out = post ? a.xn2 : x_out;
  if (c_.moe_layer(l)) {
    moe_fwd(p, l, a, ffn_in, ffn_out);
  } else if (llama) {
    lin_fwd_a(l, LoraSite::Gate, a.g, ffn_in, P(o.w_gate), (const T*)nullptr, N, C, H);  // (N, H)
    lin_fwd_a(l, LoraSite::Up, a.u, ffn_in, P(o.w_up), (const T*)nullptr, N, C, H);    // (N, H)
    if (c_.activation() == FfnAct::GeGLU)
      blk::geglu_fwd(a.h, a.g, a.u, N * H, isa_);
    else
      blk::swiglu_fwd(a.h, a.g, a.u, N * H, isa_);
    lin_fwd_a(l, LoraSite::Down, ffn_out, a.h, P(o.w_down), (const T*)nullptr, N, H, C);
    tp_sum(ffn_out, N * C);  // the hidden units' partial sums
  } else {
    lin_fwd_a(l, LoraSite::Up, a.g, ffn_in, P(o.w_up), P(o.b_up), N, C, H);  // (N, H) pre-activation
    if (c_.activation() == FfnAct::ReLU)
      blk::relu_fwd(a.h, a.g, N * H);
    else
      blk::gelu_fwd(a.h, a.g, N * H, isa_);
    lin_fwd_a(l, LoraSite::Down, ffn_out, a.h, P(o.w_down), P(o.b_down), N, H, C);
  }
  bottleneck_fwd(l, 1, ffn_out);
  drop(ffn_out, l, 1);
  blk::add(ffn_out, a.x_mid, N * C);
  if (post) norm(2, x_out, a.xn2);
}

template <class T>
void Transformer<T>::layer_bwd(const T* p, T* g, int64_t l, LayerActs& a, T* dx) {
  const auto& o = L_.layers[size_t(l)];
  const int64_t N = N_, C = c_.dim, H = c_.hidden_dim;
  auto P = [&](size_t off) { return off == kAbsent ? nullptr : p + off; };
  auto G = [&](size_t off) { return off == kAbsent || !g ? nullptr : g + off; };  // null g: frozen
  const bool wa = !fresh_;  // each weight's one product writes its gradient on a fresh buffer
  const bool post = c_.norm_placement == NormPlacement::Post, llama = c_.arch == Arch::Llama;
  // dx (=, or += when accumulate) the backward of norm k at input x for dy.
  auto norm_bwd = [&](int k, T* dxo, const T* dy, const T* x, bool accumulate) {
    const size_t gw = k == 1 ? o.attn_norm : o.ffn_norm, gb = k == 1 ? o.attn_norm_b : o.ffn_norm_b;
    if (llama)
      blk::rmsnorm_bwd(dxo, G(gw), dy, x, P(gw), k == 1 ? a.r1 : a.r2, N, C, accumulate, isa_);
    else
      blk::layernorm_bwd(dxo, G(gw), G(gb), dy, x, P(gw), k == 1 ? a.m1 : a.m2, k == 1 ? a.r1 : a.r2, N, C,
                         accumulate, isa_);
  };
  // dx holds d x_out. Pre-norm: the residual passes it on to x_mid and x_in unchanged,
  // and each sublayer's input gradient goes back through its norm into dx (+=).
  // Post-norm: dx goes back through norm 2 (=), then the sublayer's input gradient
  // (x_mid's) is added; the same again through norm 1 and the attention.
  if (post) {  // dx = d (x_mid + ffn(x_mid)); dxn_ is free here (layernorm_bwd may not alias dx and dy)
    std::copy(dx, dx + N * C, dxn_);
    norm_bwd(2, dx, dxn_, a.xn2, false);
  }
  const T* ffn_in = post ? a.x_mid : a.xn2;
  if (c_.moe_layer(l)) {
    moe_bwd(p, g, l, a, bottleneck_bwd(l, 1, dropped(dx, l, 1)), ffn_in);
  } else if (llama) {
    lin_bwd_a(l, LoraSite::Down, dh_, G(o.w_down), (T*)nullptr, bottleneck_bwd(l, 1, dropped(dx, l, 1)), a.h, P(o.w_down), N, H, C, false, wa);
    if (c_.activation() == FfnAct::GeGLU)
      blk::geglu_bwd(dg_, du_, dh_, a.g, a.u, N * H, isa_);
    else
      blk::swiglu_bwd(dg_, du_, dh_, a.g, a.u, N * H, isa_);
    lin_bwd_a(l, LoraSite::Gate, dxn_, G(o.w_gate), (T*)nullptr, dg_, ffn_in, P(o.w_gate), N, C, H, false, wa);
    lin_bwd_a(l, LoraSite::Up, dxn_, G(o.w_up), (T*)nullptr, du_, ffn_in, P(o.w_up), N, C, H, true, wa);
    tp_sum(dxn_, N * C);  // d ffn_in: every rank's hidden units contribute
  } else {
    lin_bwd_a(l, LoraSite::Down, dh_, G(o.w_down), G(o.b_down), bottleneck_bwd(l, 1, dropped(dx, l, 1)), a.h, P(o.w_down), N, H, C, false, wa);
    if (c_.activation() == FfnAct::ReLU)
      blk::relu_bwd(dg_, dh_, a.g, N * H);
    else
      blk::gelu_bwd(dg_, dh_, a.g, N * H, isa_);
    lin_bwd_a(l, LoraSite::Up, dxn_, G(o.w_up), G(o.b_up), dg_, ffn_in, P(o.w_up), N, C, H, false, wa);
  }
  if (post) {
    blk::add(dx, dxn_, N * C);                    // dx = d x_mid
    std::copy(dx, dx + N * C, dxn_);
    norm_bwd(1, dx, dxn_, a.xn1, false);          // dx = d (x_in + attn(x_in))
  } else {
    norm_bwd(2, dx, dxn_, a.x_mid, true);         // dx = d x_mid
  }
  const T* attn_in = post ? a.x_in : a.xn1;
  if (c_.mla()) {
    mla_bwd(p, g, l, a, bottleneck_bwd(l, 0, dropped(dx, l, 0)), attn_in);
  } else if (llama) {
    const int64_t qd = c_.q_dim(), kvd = c_.kv_dim();
    lin_bwd_a(l, LoraSite::O, datt_, G(o.wo), (T*)nullptr, bottleneck_bwd(l, 0, dropped(dx, l, 0)), a.att, P(o.wo), N, qd, C, false, wa);
    blk::attention_bwd(dq_, dk_, dv_, datt_, a.lse, a.q, a.k, a.v, attn_shape(l), attn_scratch_.data(),
                       attn_delta(l, a));
    prefix_bwd(l, a);
    blk::rope(dq_, N, T_, c_.n_heads, c_.head_dim, qd, cos_.data(), sin_.data(), c_.rope_style, true);
    blk::rope(dk_, N, T_, c_.n_kv_heads, c_.head_dim, kvd, cos_.data(), sin_.data(), c_.rope_style, true);
    if (c_.qk_norm) {  // in place: the rows of dq/dk become the gradients before the norm
      blk::rmsnorm_bwd(dq_, G(o.q_norm), dq_, a.q0, P(o.q_norm), a.rq, N * c_.n_heads, c_.head_dim, false, isa_);
      blk::rmsnorm_bwd(dk_, G(o.k_norm), dk_, a.k0, P(o.k_norm), a.rk, N * c_.n_kv_heads, c_.head_dim, false, isa_);
    }
    lin_bwd_a(l, LoraSite::Q, dxn_, G(o.wq), G(o.bq), dq_, attn_in, P(o.wq), N, C, qd, false, wa);
    lin_bwd_a(l, LoraSite::K, dxn_, G(o.wk), G(o.bk), dk_, attn_in, P(o.wk), N, C, kvd, true, wa);
    lin_bwd_a(l, LoraSite::V, dxn_, G(o.wv), G(o.bv), dv_, attn_in, P(o.wv), N, C, kvd, true, wa);
    tp_sum(dxn_, N * C);  // d attn_in: every rank's heads contribute
  } else {
    lin_bwd_a(l, LoraSite::O, datt_, G(o.wo), G(o.bo), bottleneck_bwd(l, 0, dropped(dx, l, 0)), a.att, P(o.wo), N, C, C, false, wa);
    blk::attention_bwd(dq_, dk_, dv_, datt_, a.lse, a.q, a.k, a.v, attn_shape(l), attn_scratch_.data(),
                       attn_delta(l, a));
    prefix_bwd(l, a);
    lin_bwd_a(l, LoraSite::Qkv, dxn_, G(o.wqkv), G(o.bqkv), dq_, attn_in, P(o.wqkv), N, C, 3 * C, false, wa);
  }
  if (post)
    blk::add(dx, dxn_, N * C);           // dx = d x_in
  else
    norm_bwd(1, dx, dxn_, a.x_in, true);  // dx = d x_in
}

template <class T>
void Transformer<T>::head(const T* p, T* g, const int32_t* targets, float scale, bool backward, blk::CeResult& r) {
  const int64_t N = N_, C = c_.dim, V = c_.vocab_size;
  const T* xL = x_in_[size_t(c_.n_layers)];
  if (c_.arch == Arch::Llama) {
    blk::rmsnorm_fwd(xf_, rf_, xL, p + L_.out_norm, N, C, T(c_.norm_eps), isa_);
  } else {
    blk::layernorm_fwd(xf_, mf_, rf_, xL, p + L_.out_norm, p + L_.out_norm_b, N, C, T(c_.norm_eps), isa_);
  }
  blk::CeOptions ce;
  ce.z_loss = o_.z_loss, ce.softcap = c_.final_softcap, ce.scale = scale, ce.isa = isa_;
  ce.row_scratch = ce_rows_.data();
  const float* weights = row_weight_;
  if (reward_w_) {  // a reward model: one scalar per row from the final state at its last token
    reward_head(g, scale, backward);
    if (!backward) return;
  }
  // The logits exist for logit_rows rows at a time: forward, loss and its
  // gradient in place, then the two backward products.
  for (int64_t r0 = 0; r0 < (reward_w_ ? 0 : N); r0 += o_.logit_rows) {
    const int64_t n = std::min(o_.logit_rows, N - r0);
    head_fwd(logits_, xf_ + r0 * C, p + L_.output, n);  // (n, V)
    ce.row_weight = weights ? weights + r0 : nullptr;
    const blk::CeResult cr =
        teacher_ ? kd_cross_entropy(logits_, targets + r0, teacher_ + r0 * V, n, V, kd_, scale)
                 : blk::cross_entropy(logits_, targets + r0, n, V, ce);
    r.loss_sum += cr.loss_sum, r.z_sum += cr.z_sum, r.kd_sum += cr.kd_sum, r.count += cr.count;
    if (row_nll_ && !teacher_) std::copy(ce_rows_.begin(), ce_rows_.begin() + n, row_nll_ + r0);
    if (backward)  // on a fresh buffer the first chunk writes the output weight's gradient
      head_bwd(dxf_ + r0 * C, g ? g + L_.output : nullptr, logits_, xf_ + r0 * C, p + L_.output, n,
               !(fresh_ && r0 == 0));
  }
  if (!backward) return;
  if (c_.arch == Arch::Llama) {
    blk::rmsnorm_bwd(dx_, g ? g + L_.out_norm : nullptr, dxf_, xL, p + L_.out_norm, rf_, N, C, false, isa_);
  } else {
    blk::layernorm_bwd(dx_, g ? g + L_.out_norm : nullptr, g ? g + L_.out_norm_b : nullptr, dxf_, xL,
                       p + L_.out_norm, mf_, rf_, N, C, false, isa_);
  }
}

// r_b = xf[last_b] . w + w[C]; backward: d xf (zero but at the last rows) and gw, times dr_b * scale.
template <class T>
void Transformer<T>::reward_head(T* g, float scale, bool backward) {
  const int64_t C = c_.dim, V = c_.vocab_size;
  for (int64_t b = 0; b < B_; ++b) {
    const T* h = xf_ + (b * T_ + reward_last_[b]) * C;
    T r = reward_w_[C];
    for (int64_t c = 0; c < C; ++c) r += h[c] * reward_w_[c];
    reward_out_[b] = double(r);
  }
  if (!backward) return;
  if (fresh_ && g) fill_zero(g + L_.output, V * C);  // the output layer takes no product here
  fill_zero(dxf_, N_ * C);
  for (int64_t b = 0; b < B_; ++b) {
    const T d = T(reward_dr_[b]) * T(scale);
    const T* h = xf_ + (b * T_ + reward_last_[b]) * C;
    T* dh = dxf_ + (b * T_ + reward_last_[b]) * C;
    for (int64_t c = 0; c < C; ++c) dh[c] = d * reward_w_[c], reward_gw_[c] += d * h[c];
    reward_gw_[C] += d;
  }
}

template <class T>
void Transformer<T>::embed(const T* p, const int32_t* tokens) {
  for (int64_t i = 0; i < N_; ++i)
    if (tokens[i] < 0 || tokens[i] >= c_.vocab_size)
      fail("token id ", tokens[i], " at position ", i, " out of range [0, ", c_.vocab_size, ")");
  if (frozen_) {  // rows of the stored table (set_frozen_weights), then the learned positions
    if constexpr (std::is_same_v<T, float>) {
      const int64_t C = c_.dim;
      const T* P = pos_embd(p);
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N_; ++n) {
        T* x = x_in_[0] + n * C;
        dequantize_row(frozen_->tok_embd, tokens[n], x);
        if (P)
          for (int64_t c = 0; c < C; ++c) x[c] += P[(n % T_) * C + c];
      }
    }
  } else {
    blk::embed_fwd(x_in_[0], p + L_.tok_embd, pos_embd(p), tokens, N_, T_, c_.dim);
  }
  drop(x_in_[0], -1, 2);
}

template <class T>
const T* Transformer<T>::dropped(const T* dx, int64_t l, int site) {
  if (drop_key_ == 0) return dx;
  std::copy(dx, dx + N_ * c_.dim, dxf_);  // dxf_ is free during the layers' backward
  blk::dropout(dxf_, N_ * c_.dim, o_.dropout, site_key(l, site));
  return dxf_;
}

template <class T>
void Transformer<T>::layers_fwd(const T* p, const int32_t* tokens, uint64_t dropout_key) {
  drop_key_ = o_.dropout > 0.f ? dropout_key : 0;
  lora_key_ = lora_ && lora_->lora.dropout > 0.f ? dropout_key : 0;
  embed(p, tokens);
  tokens_ = tokens;  // hash routing (moe_fwd)
  counting_ = true, moe_bal_ = moe_z_ = 0;  // router losses and counts of this pass (not of recomputation)
  for (int64_t l = 0; l < c_.n_layers; ++l) {
    LayerActs& a = acts_for(l);
    a.x_in = x_in_[size_t(l)];
    if (weights_hook_) weights_hook_(l, true);
    layer_fwd(p, l, a, x_in_[size_t(l + 1)]);
    if (weights_hook_) weights_hook_(l, false);
  }
  counting_ = false;
}

template <class T>
void Transformer<T>::round_weights(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_) convert_to_bf16(*bf16_, p, w16_.data(), int64_t(L_.total));
    p16_of_ = p;
    if (!head_fwd_pk_.empty() && !frozen_) {  // the output layer's weight in the GEMM's panels, both ways
      KernelContext& ctx = gemm_ctx();
      const float* W = p + L_.output;
      const uint16_t* W16 = w16(W);
      const int64_t C = c_.dim, V = c_.vocab_size;
      auto op = [&](int64_t s_row, int64_t s_k) {
        return W16 ? GemmOperand{W16, true, s_row, s_k} : GemmOperand{W, false, s_row, s_k};
      };
      gemm_pack_b(ctx, op(C, 1), V, C, !bf16_, head_fwd_pk_.data());
      gemm_pack_b(ctx, op(1, C), C, V, !bf16_, head_dx_pk_.data());
    }
  }
}

template <class T>
blk::CeResult Transformer<T>::forward(const T* p, const int32_t* tokens, const int32_t* targets, uint64_t dropout_key) {
  round_weights(p);
  layers_fwd(p, tokens, dropout_key);
  blk::CeResult r;
  head(p, nullptr, targets, 1.f, false, r);
  r.moe_balance_sum = moe_bal_, r.moe_z_sum = moe_z_;
  if (c_.mtp_depth > 0 && !reward_w_) {  // the modules' losses, for the metrics
    mtp_fwd(p, tokens, targets);
    for (int64_t k = 1; k <= c_.mtp_depth; ++k) mtp_head(p, nullptr, k, 1.f, false, r, nullptr);
  }
  return r;
}

template <class T>
blk::CeResult Transformer<T>::forward_backward(const T* p, T* g, const int32_t* tokens, const int32_t* targets,
                                               float grad_scale, uint64_t dropout_key, bool overwrite) {
  round_weights(p);
  layers_fwd(p, tokens, dropout_key);
  if (!g && !lora_) fail("internal: a frozen base needs an adapter");
  fresh_ = overwrite && g;
  grad_scale_ = grad_scale;
  if (fresh_)  // everything the weights' first products do not write: zero, in parallel
    for (const auto& [b, e] : zero_ranges_) fill_zero(g + b, int64_t(e - b));
  blk::CeResult r;
  if (c_.mtp_depth > 0) {
    if (reward_w_ || teacher_ || row_weight_ || !g) fail("internal: multi-token prediction with a reward, teacher, DPO or LoRA pass");
    mtp_fwd(p, tokens, targets);
  }
  head(p, g, targets, grad_scale, true, r);
  r.moe_balance_sum = moe_bal_, r.moe_z_sum = moe_z_;
  if (c_.mtp_depth > 0) mtp_bwd(p, g, grad_scale * o_.mtp_weight / float(c_.mtp_depth), r);  // += into dx_
  for (int64_t l = c_.n_layers - 1; l >= 0; --l) {
    LayerActs& a = acts_for(l);
    if (weights_hook_) weights_hook_(l, true);
    if (o_.recompute) {  // rebuild this block's activations from its saved input
      a.x_in = x_in_[size_t(l)];
      layer_fwd(p, l, a, xf_);  // x_out is not needed again: write it over a scratch (N, C)
    }
    layer_bwd(p, g, l, a, dx_);
    if (grad_ready_ && g) grad_ready_(l);
    if (weights_hook_) weights_hook_(l, false);
  }
  fresh_ = false;
  if (!g) return r;  // frozen base: no embedding gradient
  blk::embed_bwd(g + L_.tok_embd, pos_embd(g), dropped(dx_, -1, 2), tokens, N_, T_, c_.dim);
  return r;
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace tessera::train
