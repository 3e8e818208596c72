// The adapters of a frozen base model inside the training Transformer (train/lora.h):
// LoRA on the linear layers (lin_fwd_a / lin_bwd_a), prefix tuning's key/value rows merged
// into the attention (prefix_fwd / prefix_bwd), bottleneck adapters after the sublayers
// (bottleneck_fwd / bottleneck_bwd), and a frozen base kept in its stored (quantized) type
// (set_frozen_weights, qlin_fwd / qlin_bwd). The layer code (train/transformer.cpp) calls
// these hooks; each is a no-op without its adapter.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "core/error.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "model/weights.h"
#include "train/transformer.h"

namespace tessera::train {

template <class T>
void Transformer<T>::attach_lora(const LoraLayout& LL) {
  if (LL.cfg.n_layers != c_.n_layers || LL.cfg.dim != c_.dim) fail("internal: LoRA layout of another model");
  lora_ = &LL;
  const int64_t r = LL.lora.rank;
  int64_t max_in = 0, max_out = 0;
  for (const auto& layer : LL.layers)
    for (const auto& st : layer)
      if (st.a != kAbsent) max_in = std::max(max_in, st.in), max_out = std::max(max_out, st.out);
  if (LL.lora.bottleneck()) max_out = std::max(max_out, c_.dim);  // the up product accumulates into (N, C)
  require_memory(double(sizeof(T)) * double(N_) * double(r) * double(c_.n_layers * kLoraSites),
                 "LoRA rank " + std::to_string(r) + ": the adapters' activations need", "lower --lora-rank or --batch");
  lora_acts_.assign(size_t(N_ * r * c_.n_layers * kLoraSites), T(0));
  const bool gemm = std::is_same_v<T, float> && (f32_ || bf16_);
  lora_y_.assign(gemm ? 0 : size_t(N_ * max_out), T(0));  // the reference path's Y scratch
  lora_x_.assign(LL.lora.dropout > 0.f ? size_t(N_ * max_in) : 0, T(0));
  lora_du_.assign(size_t(N_ * r), T(0));
  if (LL.lora.prefix()) {  // prefix tuning: the tokens sit at positions P, P + 1, ...
    const int64_t P = LL.lora.prefix_len;
    if (T_ + P > c_.max_seq_len)
      fail("--prefix-len ", P, " + --seq ", T_, " exceeds the model's context (max_seq_len ", c_.max_seq_len, ")");
    if (c_.arch != Arch::GPT2) {
      const int64_t half = c_.head_dim / 2;
      std::vector<float> cs(size_t((T_ + P) * half)), sn(cs.size());
      ops::rope_tables(cs.data(), sn.data(), T_ + P, c_.head_dim, c_.rope_theta, c_.rope_freq_div());
      cos_.assign(cs.begin() + P * half, cs.end()), sin_.assign(sn.begin() + P * half, sn.end());
    }
    attn_scratch_.resize(size_t(omp_get_max_threads() * blk::attention_scratch(std::max(T_, P))));
    delta_.assign(size_t(B_ * c_.n_heads * T_), T(0));
  }
  if (LL.lora.bottleneck()) {  // per layer and site: the input y, the pre-activation and the activation
    const int64_t m = LL.lora.adapter_dim, C = c_.dim;
    require_memory(double(sizeof(T)) * double(N_) * double(C + 2 * m) * double(2 * c_.n_layers),
                   "--adapter-dim " + std::to_string(m) + ": the adapters' activations need", "lower --adapter-dim or --batch");
    bn_acts_.assign(size_t(2 * c_.n_layers * N_ * (C + 2 * m)), T(0));
    bn_da_.assign(size_t(2 * N_ * m), T(0));
    bn_dy_.assign(size_t(N_ * C), T(0));
  }
}

// y (N, C) += up act(down y + down_b) + up_b, saving y, the pre-activation and the activation.
template <class T>
void Transformer<T>::bottleneck_fwd(int64_t l, int s, T* y) {
  if (!bn_on()) return;
  const auto& b = lora_->bottleneck[size_t(l)][size_t(s)];
  if (b.down == kAbsent) return;
  const int64_t N = N_, C = c_.dim, m = lora_->lora.adapter_dim;
  T* Y = bn_acts_.data() + (l * 2 + s) * N * (C + 2 * m);
  T *pre = Y + N * C, *act = pre + N * m;
  std::copy(y, y + N * C, Y);
  small_fwd(pre, Y, la_ + b.down, N, C, m, false);  // (N, m)
  const T *bd = la_ + b.down_b, *bu = la_ + b.up_b;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < m; ++j) pre[n * m + j] += bd[j];
  if (lora_->lora.adapter_gelu) blk::gelu_fwd(act, pre, N * m, isa_);
  else blk::relu_fwd(act, pre, N * m);
  small_fwd(y, act, la_ + b.up, N, m, C, true);  // (N, C) +=
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) y[n * C + c] += bu[c];
}

// dy: d (adapter output); returns d y (the sublayer's output) in bn_dy_, the adapter's gradients +=.
template <class T>
const T* Transformer<T>::bottleneck_bwd(int64_t l, int s, const T* dy) {
  if (!bn_on()) return dy;
  const auto& b = lora_->bottleneck[size_t(l)][size_t(s)];
  if (b.down == kAbsent) return dy;
  const int64_t N = N_, C = c_.dim, m = lora_->lora.adapter_dim;
  const T* Y = bn_acts_.data() + (l * 2 + s) * N * (C + 2 * m);
  const T *pre = Y + N * C, *act = pre + N * m;
  T *da = bn_da_.data(), *dpre = da + N * m, *dyo = bn_dy_.data();
  small_bwd(da, lga_ + b.up, dy, act, la_ + b.up, N, m, C, false);  // da = dy U; dU += dy^T act
  if (lora_->lora.adapter_gelu) blk::gelu_bwd(dpre, da, pre, N * m, isa_);
  else blk::relu_bwd(dpre, da, pre, N * m);
  T *gbu = lga_ + b.up_b, *gbd = lga_ + b.down_b;
  for (int64_t n = 0; n < N; ++n) {  // the biases' gradients (rows in order: deterministic)
    for (int64_t c = 0; c < C; ++c) gbu[c] += dy[n * C + c];
    for (int64_t j = 0; j < m; ++j) gbd[j] += dpre[n * m + j];
  }
  std::copy(dy, dy + N * C, dyo);
  small_bwd(dyo, lga_ + b.down, dpre, Y, la_ + b.down, N, C, m, true);  // dy += dpre D; dD += dpre^T Y
  return dyo;
}

template <class T>
std::pair<const T*, const T*> Transformer<T>::layer_kv(int64_t l, int64_t* stride) const {
  if (o_.recompute) fail("internal: layer_kv in recompute mode");
  const LayerActs& a = layers_[size_t(l)];
  *stride = c_.arch == Arch::GPT2 ? 3 * c_.dim : c_.kv_dim();
  return {a.k, a.v};
}

template <class T>
void Transformer<T>::prefix_fwd(int64_t l, LayerActs& a) {
  if (!prefix_on()) return;
  const auto& [k, v] = lora_->prefix[size_t(l)];
  blk::prefix_attention_fwd(a.att, a.lse, a.q, la_ + k, la_ + v, lora_->lora.prefix_len, attn_shape(l),
                            attn_scratch_.data());
}

template <class T>
const T* Transformer<T>::attn_delta(int64_t l, LayerActs& a) {
  if (!prefix_on()) return nullptr;
  blk::attention_delta(delta_.data(), datt_, a.att, attn_shape(l));
  return delta_.data();
}

template <class T>
void Transformer<T>::prefix_bwd(int64_t l, LayerActs& a) {
  if (!prefix_on()) return;
  const auto& [k, v] = lora_->prefix[size_t(l)];
  blk::prefix_attention_bwd(dq_, lga_ + k, lga_ + v, datt_, a.lse, delta_.data(), a.q, la_ + k, la_ + v,
                            lora_->lora.prefix_len, attn_shape(l), attn_scratch_.data());
}

// The adapter's products (f32 weights, never the bf16 copy): on our GEMM where a run has one
// (OpenBLAS threads beside OpenMP's would spin against each other), else the reference.
// accumulate: Y += X W^T.
template <class T>
void Transformer<T>::small_fwd(T* Y, const T* X, const T* W, int64_t N, int64_t I, int64_t O, bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    if (f32_ || bf16_)
      return blk::linear_fwd_gemm(gemm_ctx(), Y, X, W, nullptr, nullptr, N, I, O, true, nullptr, accumulate);
  }
  if (!accumulate) return blk::linear_fwd(Y, X, W, (const T*)nullptr, N, I, O);
  T* z = lora_y_.data();
  blk::linear_fwd(z, X, W, (const T*)nullptr, N, I, O);
  for (int64_t i = 0; i < N * O; ++i) Y[i] += z[i];
}

template <class T>
void Transformer<T>::small_bwd(T* dX, T* dW, const T* dY, const T* X, const T* W, int64_t N, int64_t I, int64_t O,
                               bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    if (f32_ || bf16_) {
      blk::LinearBwdOptions o;
      o.accumulate = accumulate, o.dw_accumulate = true, o.f32 = true;
      return blk::linear_bwd_gemm(gemm_ctx(), dX, dW, nullptr, dY, X, W, nullptr, N, I, O, o);
    }
  }
  blk::linear_bwd(dX, dW, (T*)nullptr, dY, X, W, N, I, O, accumulate, true);
}

template <class T>
const T* Transformer<T>::lora_input(int64_t l, LoraSite s, const T* X, int64_t I) {
  if (lora_key_ == 0) return X;
  std::copy(X, X + N_ * I, lora_x_.data());
  blk::dropout(lora_x_.data(), N_ * I, lora_->lora.dropout, lora_key_ ^ (uint64_t(l + 1) * 0x2545f4914f6cdd1dull + uint64_t(s)));
  return lora_x_.data();
}

// Y = X W^T + b, then Y += Us B^T with Us = (alpha / r) X A^T (N, r) saved.
template <class T>
void Transformer<T>::lin_fwd_a(int64_t l, LoraSite s, T* Y, const T* X, const T* W, const T* b, int64_t N,
                               int64_t I, int64_t O) {
  lin_fwd(Y, X, W, b, N, I, O);  // a frozen stored matrix there: on the inference kernels
  if (!lora_ || !lora_on_) return;
  const auto& st = lora_->site(l, s);
  if (st.a == kAbsent) return;
  const int64_t r = lora_->lora.rank;
  T* U = lora_acts_.data() + (l * kLoraSites + int(s)) * N * r;
  small_fwd(U, lora_input(l, s, X, I), la_ + st.a, N, I, r, false);  // (N, r)
  const T sc = T(lora_->lora.scale());
  for (int64_t i = 0; i < N * r; ++i) U[i] *= sc;
  small_fwd(Y, U, la_ + st.b, N, r, O, true);  // Y (N, O) +=
}

// The base product's backward (dW skipped when null: frozen), then the adapter's:
// dB += dY^T Us, dU = s dY B, dA += dU^T x, dX += dU A (through the dropout mask).
template <class T>
void Transformer<T>::lin_bwd_a(int64_t l, LoraSite s, T* dX, T* dW, T* db, const T* dY, const T* X, const T* W,
                               int64_t N, int64_t I, int64_t O, bool accumulate, bool dw_accumulate) {
  lin_bwd(dX, dW, db, dY, X, W, N, I, O, accumulate, dw_accumulate);
  if (!lora_ || !lora_on_) return;
  const auto& st = lora_->site(l, s);
  if (st.a == kAbsent) return;
  const int64_t r = lora_->lora.rank;
  const T* Us = lora_acts_.data() + (l * kLoraSites + int(s)) * N * r;
  const T sc = T(lora_->lora.scale());
  T* dU = lora_du_.data();
  small_bwd(dU, lga_ + st.b, dY, Us, la_ + st.b, N, r, O, false);
  for (int64_t i = 0; i < N * r; ++i) dU[i] *= sc;
  const T* xa = lora_input(l, s, X, I);
  small_bwd(nullptr, lga_ + st.a, dU, xa, la_ + st.a, N, I, r, false);
  if (lora_key_ == 0) return small_bwd(dX, nullptr, dU, xa, la_ + st.a, N, I, r, true);
  T* t = lora_x_.data();  // dU A, masked and scaled as the input was
  small_bwd(t, nullptr, dU, xa, la_ + st.a, N, I, r, false);
  blk::dropout(t, N * I, lora_->lora.dropout, lora_key_ ^ (uint64_t(l + 1) * 0x2545f4914f6cdd1dull + uint64_t(s)));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * I; ++i) dX[i] += t[i];
}


template <class T>
void Transformer<T>::set_frozen_weights(const Weights& w) {
  if (!std::is_same_v<T, float>) fail("internal: a frozen quantized base runs in float");
  if (c_.mtp_depth > 0) fail("--qlora: multi-token prediction modules are not supported");
  if (o_.bf16) fail("--qlora: the frozen matrices run on the inference kernels; use --precision fp32");
  if (w.cfg.n_layers != c_.n_layers || w.cfg.dim != c_.dim || int64_t(w.layers.size()) != c_.n_layers)
    fail("internal: frozen weights of another model");
  frozen_ = &w;
  frozen_off_.clear(), frozen_ranges_.clear();
  for (const auto& t : L_.tensors) {
    if (!frozen_matrix(L_, t)) continue;
    const TensorView* v = tensor_of(w, L_, t);
    if (!v || v->empty() || size_t(v->numel()) != t.numel) fail("--qlora: the base has no tensor ", t.name, " of its shape");
    frozen_ranges_.emplace_back(t.offset, t.offset + t.numel);
    if (v->ndim == 3) {  // experts (E, rows, cols): one matrix each
      for (int64_t e = 0; e < v->shape[0]; ++e)
        frozen_off_[t.offset + size_t(e * v->shape[1] * v->shape[2])] = expert_matrix(*v, e);
    } else {
      frozen_off_[t.offset] = *v;
    }
  }
  qctx_ = std::make_unique<KernelContext>(omp_get_max_threads());
  const int64_t widest = std::max({c_.dim, c_.hidden_dim, c_.q_dim(), c_.moe_hidden, c_.moe_shared_hidden,
                                   c_.mla_q_lora, c_.mla_kv_lora + c_.mla_rope,
                                   c_.n_heads * (c_.head_dim - c_.mla_rope + c_.mla_v_dim)});
  qchunk_.assign(size_t(kQRows * widest), 0.f);
}

template <class T>
const TensorView* Transformer<T>::frozen_at(const T* W) const {
  if (!frozen_ || !p16_of_ || W < p16_of_ || W >= p16_of_ + L_.total) return nullptr;
  const size_t off = size_t(W - p16_of_);
  if (auto it = frozen_off_.find(off); it != frozen_off_.end()) return &it->second;
  for (const auto& [b, e] : frozen_ranges_)
    if (off >= b && off < e) fail("internal: offset ", off, " inside a frozen tensor is not one of its matrices");
  return nullptr;
}

template <class T>
void Transformer<T>::qlin_fwd(T* Y, const T* X, const TensorView& W, const T* b, int64_t N, int64_t I, int64_t O) {
  if constexpr (std::is_same_v<T, float>) {
    if (W.cols() != I || W.rows() != O) fail("internal: frozen matrix of shape ", W.rows(), " x ", W.cols());
    const TensorView bias = b ? make_view(DType::F32, {O}, b) : TensorView{};
    linear(*qctx_, Linear{&W, b ? &bias : nullptr}, X, N, Y);
  } else {
    fail("internal: qlin_fwd in double");
  }
}

// dX (N, I) (=, or += when accumulate) = dY (N, O) W (O, I), W dequantized kQRows rows at a time.
template <class T>
void Transformer<T>::qlin_bwd(T* dX, const T* dY, const TensorView& W, int64_t N, int64_t I, int64_t O,
                              bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    float* Wc = qchunk_.data();
    for (int64_t o0 = 0; o0 < O; o0 += kQRows) {
      const int64_t rows = std::min(kQRows, O - o0);
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) dequantize_row(W, o0 + r, Wc + r * I);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(N), int(I), int(rows), 1.f, dY + o0, int(O), Wc,
                  int(I), o0 == 0 && !accumulate ? 0.f : 1.f, dX, int(I));
    }
  } else {
    fail("internal: qlin_bwd in double");
  }
}

#define TESSERA_ADAPTERS_INSTANTIATE(T)                                                                          \
  template void Transformer<T>::set_frozen_weights(const Weights&);                                               \
  template const TensorView* Transformer<T>::frozen_at(const T*) const;                                           \
  template void Transformer<T>::qlin_fwd(T*, const T*, const TensorView&, const T*, int64_t, int64_t, int64_t);   \
  template void Transformer<T>::qlin_bwd(T*, const T*, const TensorView&, int64_t, int64_t, int64_t, bool);       \
  template void Transformer<T>::attach_lora(const LoraLayout&);                                                   \
  template std::pair<const T*, const T*> Transformer<T>::layer_kv(int64_t, int64_t*) const;                      \
  template void Transformer<T>::prefix_fwd(int64_t, LayerActs&);                                                  \
  template const T* Transformer<T>::attn_delta(int64_t, LayerActs&);                                              \
  template void Transformer<T>::prefix_bwd(int64_t, LayerActs&);                                                  \
  template void Transformer<T>::bottleneck_fwd(int64_t, int, T*);                                                 \
  template const T* Transformer<T>::bottleneck_bwd(int64_t, int, const T*);                                       \
  template void Transformer<T>::small_fwd(T*, const T*, const T*, int64_t, int64_t, int64_t, bool);                \
  template void Transformer<T>::small_bwd(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, bool);  \
  template const T* Transformer<T>::lora_input(int64_t, LoraSite, const T*, int64_t);                             \
  template void Transformer<T>::lin_fwd_a(int64_t, LoraSite, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                          int64_t);                                                               \
  template void Transformer<T>::lin_bwd_a(int64_t, LoraSite, T*, T*, T*, const T*, const T*, const T*, int64_t,   \
                                          int64_t, int64_t, bool, bool);
TESSERA_ADAPTERS_INSTANTIATE(float)
TESSERA_ADAPTERS_INSTANTIATE(double)
#undef TESSERA_ADAPTERS_INSTANTIATE

}  // namespace tessera::train
