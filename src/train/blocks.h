// Forward and backward of every training block, written once for float
// (production) and double (the finite-difference tests). Row-major buffers;
// N is the number of token rows (batch * sequence). Backward functions
// accumulate (+=) into parameter gradients and, unless said otherwise, write
// (=) the input gradient.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "model/config.h"

namespace tessera::train::blk {

// C(M, N) = alpha * op(A) op(B) + beta * C through OpenBLAS (s/d gemm), row-major.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

// Y(N, O) = X(N, I) W(O, I)^T (+ b(O))
template <class T>
void linear_fwd(T* Y, const T* X, const T* W, const T* b, int64_t N, int64_t I, int64_t O);
// dX(N, I) (= or += when accumulate) dY W;  dW(O, I) (+= or, with dw_accumulate false, =) dY^T X;
// db(O) += colsum(dY). dX, dW and db may each be null (not computed: a frozen weight).
template <class T>
void linear_bwd(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t N, int64_t I, int64_t O,
                bool accumulate, bool dw_accumulate = true);

// The same products on our GEMM (kernels/gemm_bf16.h), float only. By default in
// bf16 (operands rounded to bf16, f32 accumulation): bf16 mixed precision with f32
// master weights; W16, when not null, is W already rounded to bf16 (read instead of
// W: half the bytes, no rounding). f32: gemm_f32 (W16 must be null), fp32 training on AVX-512.
// w_packed: W (O, I) pre-packed by gemm_pack_b for the forward product.
// accumulate: Y += X W^T (+ b) instead of =.
void linear_fwd_gemm(KernelContext& ctx, float* Y, const float* X, const float* W, const uint16_t* W16,
                     const float* b, int64_t N, int64_t I, int64_t O, bool f32 = false,
                     const uint32_t* w_packed = nullptr, bool accumulate = false);
struct LinearBwdOptions {
  bool accumulate = false;             // dX += (else dX =)
  bool dw_accumulate = true;           // dW += (else dW =: the first micro-batch writes the gradient)
  bool f32 = false;                    // gemm_f32 instead of bf16 (W16 must then be null)
  const uint32_t* wt_packed = nullptr; // W^T (I, O) pre-packed for dX (null: packed in the products)
};
void linear_bwd_gemm(KernelContext& ctx, float* dX, float* dW, float* db, const float* dY, const float* X,
                     const float* W, const uint16_t* W16, int64_t N, int64_t I, int64_t O,
                     const LinearBwdOptions& o);

// x(N, C) = E[tok] (+ P[t % T])   (P: GPT-2 learned positions, may be null)
template <class T>
void embed_fwd(T* x, const T* E, const T* P, const int32_t* tok, int64_t N, int64_t T_, int64_t C);
// dE[tok] += dx; dP[t] += dx. Deterministic: parallel over columns.
template <class T>
void embed_bwd(T* dE, T* dP, const T* dx, const int32_t* tok, int64_t N, int64_t T_, int64_t C);

// y(N, C) = x / rms(x) * w; saves rstd(N). With isa AVX512 (float only) the rows run
// on kernels/norm.h.
template <class T>
void rmsnorm_fwd(T* y, T* rstd, const T* x, const T* w, int64_t N, int64_t C, T eps, Isa isa = Isa::Scalar);
// dx (= or +=) ; dw += (per column, rows summed in order; null: frozen). dx may alias dy.
template <class T>
void rmsnorm_bwd(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t N, int64_t C,
                 bool accumulate, Isa isa = Isa::Scalar);

// y(N, C) = (x - mean) * rstd * w + b; saves mean(N), rstd(N). isa AVX512 (float): kernels/norm.h.
template <class T>
void layernorm_fwd(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t C, T eps,
                   Isa isa = Isa::Scalar);
// dx (= or +=); dw, db += (per column, rows summed in order; both null: frozen). dx must not alias dy.
template <class T>
void layernorm_bwd(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean, const T* rstd,
                   int64_t N, int64_t C, bool accumulate, Isa isa = Isa::Scalar);

// Rotates every head of x(N, stride) (heads n_heads x hd at the start of each
// row) by the angles of position (row % T_); inverse = true applies the
// transpose (the backward of rope). cos/sin: (T_, hd / 2) tables. head_stride > 0: the
// heads start head_stride apart and only their first hd elements turn (MLA's RoPE part,
// with x pointing at the first head's part).
template <class T>
void rope(T* x, int64_t N, int64_t T_, int64_t n_heads, int64_t hd, int64_t stride, const float* cos_t,
          const float* sin_t, ops::RopeStyle style, bool inverse, int64_t head_stride = 0);

constexpr int64_t kAttnRows = 64;  // query rows per attention block
struct AttnShape {
  int64_t B, T, n_heads, n_kv_heads, hd;
  int64_t q_stride, kv_stride;  // row strides of q and of k/v (elements)
  float softcap = 0.f;          // scores -> cap * tanh(scores / cap) when > 0
  Isa isa = Isa::Scalar;        // AVX512: float softmax rows on kernels/act.h
  int64_t window = 0;           // > 0: a query at i sees keys [i - window + 1, i] only (sliding window)
  // Packed sequences: seg (B*T), when set, is the first key position (within its row) each query
  // may see, so examples packed into one row do not attend to each other (non-decreasing in i).
  const int32_t* seg = nullptr;
  int64_t block_rows = kAttnRows;  // query rows per block (tests use small blocks to cross their edges)
  // A sparse pattern (AttnKind::Sparse): keys it hides are masked (softmax rows on the scalar path).
  // mask, when given: its (T, T) table, mask[i T + j] != 0 when query i sees key j (pattern->sees);
  // with per-head dilations one table per query head, mask_head_stride (T T) apart.
  const LayerConfig* pattern = nullptr;
  const uint8_t* mask = nullptr;
  int64_t mask_head_stride = 0;
};
// Causal GQA attention (within s.window / s.seg when set), FlashAttention-style:
// q (B*T, q_stride) head h at column h*hd; k, v (B*T, kv_stride). out (B*T,
// n_heads*hd). Saves only lse (B, n_heads, T), each row's log-sum-exp of its
// (capped, scaled) scores; the probabilities of one block of block_rows queries
// live in scratch, so memory grows with T, not T^2. The backward recomputes them
// block by block from q, k and lse; masked keys get no gradient. scratch:
// attention_scratch(T, block_rows) elements for each OpenMP thread (omp_get_max_threads()).
template <class T>
void attention_fwd(T* out, T* lse, const T* q, const T* k, const T* v, const AttnShape& s, T* scratch);
// dq, dk, dv written (=), same layouts as q, k, v. delta (B, n_heads, T), when given, is each
// row's sum(dout * out) over the whole attention (attention_delta): needed when the softmax
// also ran over keys outside these (a prefix), and lse is then the merged one.
template <class T>
void attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* lse, const T* q, const T* k, const T* v,
                   const AttnShape& s, T* scratch, const T* delta = nullptr);
inline int64_t attention_scratch(int64_t T_, int64_t block_rows = kAttnRows) { return 3 * block_rows * T_; }
// delta (B, n_heads, T) = per head and row, dout . out (out: the attention's output).
template <class T>
void attention_delta(T* delta, const T* dout, const T* out, const AttnShape& s);

// Prefix tuning (train/lora.h): every query also sees P learned key/value rows pk, pv
// (P, n_kv_heads * hd), shared by the batch, at positions [0, P) before the tokens (query i at
// P + i) and without RoPE: soft-capped like the rest, and with a sliding window W query i
// sees only prefix rows j > P + i - W. The two key sets merge exactly by their log-sum-exps:
// after attention_fwd, prefix_attention_fwd turns (out, lse) of the causal keys into those of
// all keys, lse = logaddexp(l1, l2), out = e^(l1 - lse) o1 + e^(l2 - lse) o2.
// Backward: attention_bwd with delta (and the merged lse) for the causal keys, then
// prefix_attention_bwd: dq +=, dpk += and dpv += (summed over the batch).
// scratch: attention_scratch(max(T, P), block_rows) per OpenMP thread.
template <class T>
void prefix_attention_fwd(T* out, T* lse, const T* q, const T* pk, const T* pv, int64_t P, const AttnShape& s,
                          T* scratch);
template <class T>
void prefix_attention_bwd(T* dq, T* dpk, T* dpv, const T* dout, const T* lse, const T* delta, const T* q,
                          const T* pk, const T* pv, int64_t P, const AttnShape& s, T* scratch);

// h(n) = silu(g) * u. With isa AVX512 (float only) the AVX-512 kernels of
// kernels/act.h run; the loops here are their specification.
template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t n, Isa isa = Isa::Scalar);
template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n, Isa isa = Isa::Scalar);

// h(n) = gelu_tanh(g) * u (GeGLU). The backward recomputes gelu(g).
template <class T>
void geglu_fwd(T* h, const T* g, const T* u, int64_t n, Isa isa = Isa::Scalar);
template <class T>
void geglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n, Isa isa = Isa::Scalar);
// y(n) = max(0, x); dx = dy where x > 0.
template <class T>
void relu_fwd(T* y, const T* x, int64_t n);
template <class T>
void relu_bwd(T* dx, const T* dy, const T* x, int64_t n);
// y(n) = gelu_tanh(x)
template <class T>
void gelu_fwd(T* y, const T* x, int64_t n, Isa isa = Isa::Scalar);
template <class T>
void gelu_bwd(T* dx, const T* dy, const T* x, int64_t n, Isa isa = Isa::Scalar);

// y(n) += x(n)
template <class T>
void add(T* y, const T* x, int64_t n);

// Inverted dropout in place: x[i] = keep ? x[i] / (1 - p) : 0, where keep is a
// hash of (key, i) >= p. The mask is a pure function of the key, so the
// backward is the same call on the gradient (and recomputation repeats it).
template <class T>
void dropout(T* x, int64_t n, float p, uint64_t key);

struct CeOptions {
  float z_loss = 0.f;   // alpha * log(Z)^2 per token
  float softcap = 0.f;  // logits -> cap * tanh(logits / cap) when > 0
  float scale = 1.f;    // multiplies the gradient (1 / number of target tokens)
  Isa isa = Isa::Scalar;  // float rows without soft-cap use kernels/xent.h on this ISA
  double* row_scratch = nullptr;  // 2 N doubles for the per-row terms (null: allocated per call)
  const float* row_weight = nullptr;  // (N): row n's gradient also times row_weight[n] (DPO); null: 1
};
struct CeResult {
  double loss_sum = 0;  // sum of -log p(target) over rows with target >= 0
  double z_sum = 0;     // sum of log(Z)^2 over the same rows
  int64_t count = 0;
  // Mixture-of-experts router losses of the batch (Transformer), each times the
  // batch's rows N, so that (loss_sum + a * moe_balance_sum + b * moe_z_sum) / count
  // is the objective: balance E sum_e f_e P_e, router z mean_t logsumexp(r_t)^2,
  // summed over the MoE layers.
  double moe_balance_sum = 0, moe_z_sum = 0;
  double kd_sum = 0;  // distillation (train/distill.h): sum of tau^2 KL over the rows with a target
  // Multi-token prediction (train/mtp.cpp): the modules' -log p sums over their targets, all depths.
  double mtp_sum = 0;
  int64_t mtp_count = 0;
};
// Cross-entropy fused with the softmax, in place over logits(N, V): returns the
// sums and replaces the row by d(total)/d(logits) * scale, where total =
// sum(nll + z_loss * logZ^2). Rows with target < 0 get zero gradient. The per-row
// nll is left in row_scratch[0, N) when given (0 for rows without a target).
template <class T>
CeResult cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, const CeOptions& o);

}  // namespace tessera::train::blk
