// Multi-head latent attention (DeepSeek-V2/V3), not absorbed: the KV cache
// holds each head's decompressed K and V, so the shared attention code runs it
// with head_dim = the key length (nope + rope) and V zero-padded to it.
//   q = q_b(rms(q_a h, q_a_norm)) (or attn_q h)             (n_heads, nope + rope)
//   [c | k_pe] = kv_a h;  [k_nope | v]_h = kv_b(rms(c, kv_a_norm))
//   k_h = [k_nope_h | k_pe] (k_pe shared by the heads), RoPE on the last `rope` dims
//   x += attn_output(concat_h att_h[:v_dim])
// Written once over both executors (model/exec.h); rows(f) runs per-row work.
#include <algorithm>

#include "kernels/ops.h"
#include "model/exec.h"

namespace tessera {

template <class Ex>
void Model::mla_attention(Ex& ex, int64_t l, const float* in) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t hd = c.head_dim, rope = c.mla_rope, nope = hd - rope, vd = c.mla_v_dim, nh = c.n_heads;
  const int64_t r = c.mla_q_lora, ckv = c.mla_kv_lora, kvb_w = nope + vd;
  if (r > 0)
    ex.matmul(in, {{&L.wq_a, a_.mla_q}, {&L.wkv_a, a_.mla_kva}});  // (r), (ckv + rope)
  else
    ex.matmul(in, {{&L.wq, a_.q}, {&L.wkv_a, a_.mla_kva}});  // (nh hd), (ckv + rope)
  ex.rows([&](int64_t t) {
    if (r > 0) ops::rmsnorm(a_.mla_q + t * r, a_.mla_q + t * r, L.q_a_norm.f32(), r, c.norm_eps);
    ops::rmsnorm(a_.mla_c + t * ckv, a_.mla_kva + t * (ckv + rope), L.kv_a_norm.f32(), ckv, c.norm_eps);
  });
  if (r > 0) ex.matmul(a_.mla_q, {{&L.wq_b, a_.q}});  // (nh hd)
  ex.matmul(a_.mla_c, {{&L.wkv_b, a_.mla_kvb}});       // (nh (nope + v))
  ex.rows([&](int64_t t) {  // per head: k = [k_nope | k_pe], v = [v | 0]
    const float* kv = a_.mla_kvb + t * nh * kvb_w;
    const float* pe = a_.mla_kva + t * (ckv + rope) + ckv;
    float* k = a_.k + t * nh * hd;
    float* v = a_.v + t * nh * hd;
    for (int64_t h = 0; h < nh; ++h) {
      std::copy(kv + h * kvb_w, kv + h * kvb_w + nope, k + h * hd);
      std::copy(pe, pe + rope, k + h * hd + nope);
      std::copy(kv + h * kvb_w + nope, kv + (h + 1) * kvb_w, v + h * hd);
      std::fill(v + h * hd + vd, v + (h + 1) * hd, 0.f);
    }
  });
  ex.attention(l, a_.q, a_.k, a_.v, nh * hd, nh * hd);  // -> a_.att (nh hd)
  ex.rows([&](int64_t t) {  // each head's first v_dim outputs (the rest are the zero padding's)
    for (int64_t h = 0; h < nh; ++h)
      std::copy(a_.att + t * nh * hd + h * hd, a_.att + t * nh * hd + h * hd + vd, a_.mla_att + t * nh * vd + h * vd);
  });
  ex.matmul(a_.mla_att, {{&L.wo, a_.xb}});  // (C)
  ex.residual(a_.xb);
}

template void Model::mla_attention<Model::RegionExec>(RegionExec&, int64_t, const float*);
template void Model::mla_attention<Model::TeamExec>(TeamExec&, int64_t, const float*);

}  // namespace tessera
