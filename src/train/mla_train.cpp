// Training multi-head latent attention (DeepSeek-V2/V3; ModelConfig::mla()), in its
// expanded form: every head's key and value are formed from the latent, then the
// ordinary FlashAttention blocks run over them (the engine's absorbed form, model/mla.cpp,
// computes the same function). With nope = head_dim - rope, kvw = nope + v:
//   q = q_b(rms(q_a x, q_a_norm)) (or attn_q x)        (N, n_heads, head_dim)
//   [c | k_pe] = kv_a x;  cn = rms(c, kv_a_norm)        (N, d_c), (N, rope)
//   [k_nope | v]_h = kv_b cn                            (N, n_heads, kvw)
//   k_h = [k_nope_h | RoPE(k_pe)], RoPE on the last rope dims of each q_h,
//   o_h = attention(q_h, k_h, v_h) with scale 1 / sqrt(head_dim);  y = attn_output o.
// The attention kernels take keys and values of one width: v_h is padded with zeros to
// head_dim (ModelConfig::validate keeps v <= head_dim), so o_h's padding is zero and the
// output projection reads the v columns only (att2).
#include <omp.h>

#include <algorithm>

#include "train/transformer.h"

namespace tessera::train {

template <class T>
int64_t Transformer<T>::mla_act_floats() const {
  const int64_t qr = c_.mla_q_lora, dc = c_.mla_kv_lora, dr = c_.mla_rope, vd = c_.mla_v_dim, nh = c_.n_heads;
  return (qr > 0 ? 2 * qr + 1 : 0) + 2 * dc + 1 + dr + nh * (c_.head_dim - dr + vd) + nh * vd;
}

template <class T>
int64_t Transformer<T>::mla_grad_floats() const {
  const int64_t dc = c_.mla_kv_lora, dr = c_.mla_rope;
  return c_.n_heads * (c_.head_dim - dr + c_.mla_v_dim) + dc + (dc + dr) + c_.mla_q_lora;
}

template <class T>
void Transformer<T>::mla_fwd(const T* p, int64_t l, LayerActs& a, const T* x, T* y) {
  const auto& o = L_.layers[size_t(l)];
  const int64_t N = N_, C = c_.dim, nh = c_.n_heads, hd = c_.head_dim, dr = c_.mla_rope, dn = hd - dr;
  const int64_t vd = c_.mla_v_dim, qr = c_.mla_q_lora, dc = c_.mla_kv_lora, kvw = dn + vd, qd = nh * hd;
  const T eps = T(c_.norm_eps);
  auto P = [&](size_t off) { return off == kAbsent ? nullptr : p + off; };
  if (qr > 0) {
    lin_fwd(a.cq, x, P(o.wq_a), nullptr, N, C, qr);                          // (N, qr)
    blk::rmsnorm_fwd(a.cqn, a.rqa, a.cq, P(o.q_a_norm), N, qr, eps, isa_);
    lin_fwd(a.q, a.cqn, P(o.wq_b), nullptr, N, qr, qd);                      // (N, qd)
  } else {
    lin_fwd_a(l, LoraSite::Q, a.q, x, P(o.wq), (const T*)nullptr, N, C, qd);  // (N, qd)
  }
  T* ckv = mla_dckv_;  // (N, dc + dr): free until this layer's backward
  lin_fwd(ckv, x, P(o.wkv_a), nullptr, N, C, dc + dr);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* r = ckv + n * (dc + dr);
    std::copy(r, r + dc, a.c0 + n * dc);
    std::copy(r + dc, r + dc + dr, a.kpe + n * dr);
  }
  blk::rmsnorm_fwd(a.cn, a.rc, a.c0, P(o.kv_a_norm), N, dc, eps, isa_);
  lin_fwd(a.kv, a.cn, P(o.wkv_b), nullptr, N, dc, nh * kvw);  // (N, nh kvw)
  blk::rope(a.q + dn, N, T_, nh, dr, qd, cos_.data(), sin_.data(), c_.rope_style, false, hd);
  blk::rope(a.kpe, N, T_, 1, dr, dr, cos_.data(), sin_.data(), c_.rope_style, false);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < nh; ++h) {
      const T* kv = a.kv + n * nh * kvw + h * kvw;
      T* k = a.k + n * qd + h * hd;
      T* v = a.v + n * qd + h * hd;
      std::copy(kv, kv + dn, k);
      std::copy(a.kpe + n * dr, a.kpe + (n + 1) * dr, k + dn);
      std::copy(kv + dn, kv + kvw, v);
      std::fill(v + vd, v + hd, T(0));
    }
  blk::attention_fwd(a.att, a.lse, a.q, a.k, a.v, attn_shape(l), attn_scratch_.data());  // (N, qd)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < nh; ++h) {
      const T* s = a.att + n * qd + h * hd;
      std::copy(s, s + vd, a.att2 + (n * nh + h) * vd);
    }
  lin_fwd_a(l, LoraSite::O, y, a.att2, P(o.wo), (const T*)nullptr, N, nh * vd, C);
}

template <class T>
void Transformer<T>::mla_bwd(const T* p, T* g, int64_t l, LayerActs& a, const T* dy, const T* x) {
  const auto& o = L_.layers[size_t(l)];
  const int64_t N = N_, C = c_.dim, nh = c_.n_heads, hd = c_.head_dim, dr = c_.mla_rope, dn = hd - dr;
  const int64_t vd = c_.mla_v_dim, qr = c_.mla_q_lora, dc = c_.mla_kv_lora, kvw = dn + vd, qd = nh * hd;
  auto P = [&](size_t off) { return off == kAbsent ? nullptr : p + off; };
  auto G = [&](size_t off) { return off == kAbsent || !g ? nullptr : g + off; };  // null g: frozen
  const bool wa = !fresh_;
  T* datt2 = mla_dkv_;  // (N, nh vd), consumed before mla_dkv_ holds d kv
  lin_bwd_a(l, LoraSite::O, datt2, G(o.wo), (T*)nullptr, dy, a.att2, P(o.wo), N, nh * vd, C, false, wa);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < nh; ++h) {
      const T* s = datt2 + (n * nh + h) * vd;
      T* d = datt_ + n * qd + h * hd;
      std::copy(s, s + vd, d);
      std::fill(d + vd, d + hd, T(0));
    }
  blk::attention_bwd(dq_, dk_, dv_, datt_, a.lse, a.q, a.k, a.v, attn_shape(l), attn_scratch_.data());
  blk::rope(dq_ + dn, N, T_, nh, dr, qd, cos_.data(), sin_.data(), c_.rope_style, true, hd);
  // d kv from the heads' key and value parts; d k_pe summed over the heads that share it.
  T* dckv = mla_dckv_;  // (N, dc + dr)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* dpe = dckv + n * (dc + dr) + dc;
    std::fill(dpe, dpe + dr, T(0));
    for (int64_t h = 0; h < nh; ++h) {
      const T* dk = dk_ + n * qd + h * hd;
      const T* dv = dv_ + n * qd + h * hd;
      T* d = mla_dkv_ + n * nh * kvw + h * kvw;
      std::copy(dk, dk + dn, d);
      std::copy(dv, dv + vd, d + dn);
      for (int64_t i = 0; i < dr; ++i) dpe[i] += dk[dn + i];
    }
  }
  blk::rope(dckv + dc, N, T_, 1, dr, dc + dr, cos_.data(), sin_.data(), c_.rope_style, true);
  lin_bwd(mla_dc_, G(o.wkv_b), (T*)nullptr, mla_dkv_, a.cn, P(o.wkv_b), N, dc, nh * kvw, false, wa);
  blk::rmsnorm_bwd(mla_dc_, G(o.kv_a_norm), mla_dc_, a.c0, P(o.kv_a_norm), a.rc, N, dc, false, isa_);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) std::copy(mla_dc_ + n * dc, mla_dc_ + (n + 1) * dc, dckv + n * (dc + dr));
  lin_bwd(dxn_, G(o.wkv_a), (T*)nullptr, dckv, x, P(o.wkv_a), N, C, dc + dr, false, wa);
  if (qr > 0) {
    lin_bwd(mla_dcq_, G(o.wq_b), (T*)nullptr, dq_, a.cqn, P(o.wq_b), N, qr, qd, false, wa);
    blk::rmsnorm_bwd(mla_dcq_, G(o.q_a_norm), mla_dcq_, a.cq, P(o.q_a_norm), a.rqa, N, qr, false, isa_);
    lin_bwd(dxn_, G(o.wq_a), (T*)nullptr, mla_dcq_, x, P(o.wq_a), N, C, qr, true, wa);
  } else {
    lin_bwd_a(l, LoraSite::Q, dxn_, G(o.wq), (T*)nullptr, dq_, x, P(o.wq), N, C, qd, true, wa);
  }
}

#define TESSERA_MLA_INSTANTIATE(T)                                                                       \
  template void Transformer<T>::mla_fwd(const T*, int64_t, LayerActs&, const T*, T*);                     \
  template void Transformer<T>::mla_bwd(const T*, T*, int64_t, LayerActs&, const T*, const T*);            \
  template int64_t Transformer<T>::mla_act_floats() const;                                                 \
  template int64_t Transformer<T>::mla_grad_floats() const;
TESSERA_MLA_INSTANTIATE(float)
TESSERA_MLA_INSTANTIATE(double)
#undef TESSERA_MLA_INSTANTIATE

}  // namespace tessera::train
