// Llama block: RMSNorm -> (q, k, v) projections (+ optional biases) -> RoPE ->
// causal GQA attention -> output projection -> residual; RMSNorm -> gated FFN
// (SwiGLU, or GeGLU) -> residual. Variants: latent attention (model/mla.cpp),
// mixture-of-experts feed-forward (model/moe.cpp), Gemma 2's sandwich norms on
// both sublayers' outputs. Written once for both executors (model/exec.h).
#include "model/exec.h"

namespace tessera {

// Gemma 2's sandwich norm: the sublayer output in a_.xb, RMS-normalised before the residual add.
template <class Ex>
void Model::post_norm(Ex& ex, const TensorView& g) {
  const int64_t C = w_.cfg.dim;
  const Isa isa = ex.isa();
  ex.rows([&](int64_t t) { ops::rmsnorm(isa, a_.xb + t * C, a_.xb + t * C, g.f32(), C, w_.cfg.norm_eps); });
}

template <class Ex>
void Model::llama_layer(Ex& ex, int64_t l) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const bool post = c.norm_placement == NormPlacement::Post;  // norm(x + f(x)) instead of x + f(norm(x))
  // Attention.
  if (!post) ex.rmsnorm(L.attn_norm);
  const float* in = post ? ex.x() : ex.xn();
  if (c.mla()) {
    mla_attention(ex, l, in);  // latent attention (model/mla.cpp), x += its output
  } else {
    ex.matmul(in, {{&L.wq, a_.q, &L.bq}, {&L.wk, a_.k, &L.bk}, {&L.wv, a_.v, &L.bv}});  // (q_dim), (kv_dim), (kv_dim)
    ex.attention(l, a_.q, a_.k, a_.v, c.q_dim(), c.kv_dim());       // -> a_.att (q_dim)
    ex.matmul(a_.att, {{&L.wo, a_.xb, &L.bo}});                     // (C)
    ex.tp_sum(a_.xb);  // tensor parallelism: every rank's heads
    bottleneck(ex, l, 0);
    if (c.post_norms) post_norm(ex, L.post_attn_norm);
    ex.residual(a_.xb);
  }
  if (post) ex.rmsnorm_x(L.attn_norm);
  // Gated feed-forward: down(act(gate(x)) * up(x)), act = silu (SwiGLU) or GELU (GeGLU).
  if (!post) ex.rmsnorm(L.ffn_norm);
  in = post ? ex.x() : ex.xn();
  if (c.moe_layer(l)) {
    ex.moe(l, in);  // x += router-weighted experts (+ shared expert)
  } else {
    ex.matmul(in, {{&L.w_gate, a_.hb}, {&L.w_up, a_.hb2}});  // (H) each
    const float* h = ex.gated(a_.hb, a_.hb2);
    ex.matmul(h, {{&L.w_down, a_.xb, &L.b_down}});  // (C)
    ex.tp_sum(a_.xb);  // every rank's hidden units
    bottleneck(ex, l, 1);
    if (c.post_norms) post_norm(ex, L.post_ffn_norm);
    ex.residual(a_.xb);
  }
  if (post) ex.rmsnorm_x(L.ffn_norm);
}

template void Model::llama_layer<Model::RegionExec>(RegionExec&, int64_t);
template void Model::llama_layer<Model::TeamExec>(TeamExec&, int64_t);

}  // namespace tessera
