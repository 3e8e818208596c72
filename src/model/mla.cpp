// Multi-head latent attention (DeepSeek-V2/V3) in its absorbed form: the KV
// cache holds only the normalised latent c and the shared RoPE key k_pe of
// each token, (d_c + d_h^R) elements per token and layer. With
//   q = q_b(rms(q_a h, q_a_norm)) (or attn_q h)             (n_heads, nope + rope)
//   [c | k_pe] = kv_a h;  c = rms(c, kv_a_norm);  [k_nope | v]_h = [Wk_h; Wv_h] c  (rows of kv_b)
//   k_h = [k_nope_h | k_pe], RoPE on the last `rope` dims of q_h and on k_pe,
// the score q_h . k_h = (Wk_h^T q_nope_h) . c + q_pe_h . k_pe, and the output
// sum_j p_j v_hj = Wv_h (sum_j p_j c_j). So each head's query is absorbed,
// qa_h = [Wk_h^T q_nope_h | q_pe_h] (d_c + rope), and attends, like MQA with
// one shared head, over the cached rows [c_j | k_pe_j] as keys and their c_j as
// values (ModelConfig::cache_v_in_k); its output o_h (d_c) goes through Wv_h.
// The scale stays 1 / sqrt(nope + rope), the key length the model was trained
// with. Decode and prefill both read only the latent cache; neither expands
// per-head keys or values. Written once over both executors (model/exec.h):
// rows(f) runs per-row work, items(n, f) one product per head.
#include <algorithm>

#include "kernels/kernels.h"
#include "kernels/ops.h"
#include "model/exec.h"

namespace tessera {

template <class Ex>
void Model::mla_attention(Ex& ex, int64_t l, const float* in) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t hd = c.head_dim, rope = c.mla_rope, nope = hd - rope, vd = c.mla_v_dim, nh = c.n_heads;
  const int64_t r = c.mla_q_lora, ckv = c.mla_kv_lora, kvb_w = nope + vd, kd = c.cache_k_dim();  // kd = ckv + rope
  const int64_t n = ex.n_rows();
  if (r > 0)
    ex.matmul(in, {{&L.wq_a, a_.mla_q}, {&L.wkv_a, a_.mla_kva}});  // (r), (ckv + rope)
  else
    ex.matmul(in, {{&L.wq, a_.q}, {&L.wkv_a, a_.mla_kva}});  // (nh hd), (ckv + rope)
  ex.rows([&](int64_t t) {  // the cached row [rms(c) | k_pe] (RoPE on k_pe in prep_heads)
    if (r > 0) ops::rmsnorm(a_.mla_q + t * r, a_.mla_q + t * r, L.q_a_norm.f32(), r, c.norm_eps);
    const float* kva = a_.mla_kva + t * (ckv + rope);
    ops::rmsnorm(a_.k + t * kd, kva, L.kv_a_norm.f32(), ckv, c.norm_eps);
    std::copy(kva + ckv, kva + ckv + rope, a_.k + t * kd + ckv);
  });
  if (r > 0) ex.matmul(a_.mla_q, {{&L.wq_b, a_.q}});  // (nh hd)
  const float* kvb = mla_kvb_[size_t(l)];              // (nh (nope + vd), ckv) f32
  ex.items(nh, [&](int64_t h) {  // qa_h = [q_nope_h Wk_h | q_pe_h]: (n, nope) x (nope, ckv)
    sgemm(false, false, n, ckv, nope, 1.f, a_.q + h * hd, nh * hd, kvb + h * kvb_w * ckv, ckv, 0.f,
          a_.mla_qa + h * kd, nh * kd);
    for (int64_t t = 0; t < n; ++t)
      std::copy(a_.q + t * nh * hd + h * hd + nope, a_.q + t * nh * hd + (h + 1) * hd, a_.mla_qa + t * nh * kd + h * kd + ckv);
  });
  ex.attention(l, a_.mla_qa, a_.k, a_.k, nh * kd, kd);  // -> a_.att (nh ckv); no value rows
  ex.items(nh, [&](int64_t h) {  // out_h = o_h Wv_h^T: (n, ckv) x (ckv, vd)
    sgemm(false, true, n, vd, ckv, 1.f, a_.att + h * ckv, nh * ckv, kvb + (h * kvb_w + nope) * ckv, ckv, 0.f,
          a_.mla_att + h * vd, nh * vd);
  });
  ex.matmul(a_.mla_att, {{&L.wo, a_.xb}});  // (C)
  ex.residual(a_.xb);
}

template void Model::mla_attention<Model::RegionExec>(RegionExec&, int64_t, const float*);
template void Model::mla_attention<Model::TeamExec>(TeamExec&, int64_t, const float*);

}  // namespace tessera
