// Llama block: RMSNorm -> (q, k, v) projections (+ optional biases) -> RoPE ->
// causal GQA attention -> output projection -> residual; RMSNorm -> SwiGLU FFN -> residual.
#include "kernels/ops.h"
#include "model/model.h"

namespace tessera {

void Model::llama_layer(KernelContext& ctx, int64_t l, int64_t n) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t C = c.dim, H = c.hidden_dim, qd = c.q_dim(), kvd = c.kv_dim();

  // Attention.
  per_token(ctx, n, [&](int64_t t) { ops::rmsnorm(a_.xb + t * C, a_.x + t * C, L.attn_norm.f32(), C, c.norm_eps); });
  matmul_multi(ctx, a_.xb, n, {{&L.wq, a_.q}, {&L.wk, a_.k}, {&L.wv, a_.v}});  // (n, qd), (n, kvd), (n, kvd)
  per_token(ctx, n, [&](int64_t t) {  // bias, QK-norm, RoPE, then into the cache
    prep_heads(l, cseq_[t], cpos_[t], a_.q + t * qd, a_.k + t * kvd, a_.v + t * kvd, 0, c.n_kv_heads);
  });
  attention(ctx, l, n, a_.q, qd);   // -> a_.att (n, qd)
  matmul(ctx, L.wo, a_.att, n, a_.xb);   // (n, C)
  per_token(ctx, n, [&](int64_t t) { ops::add(a_.x + t * C, a_.xb + t * C, C); });

  // SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
  per_token(ctx, n, [&](int64_t t) { ops::rmsnorm(a_.xb + t * C, a_.x + t * C, L.ffn_norm.f32(), C, c.norm_eps); });
  matmul_multi(ctx, a_.xb, n, {{&L.w_gate, a_.hb}, {&L.w_up, a_.hb2}});  // (n, H) each
  per_token(ctx, n, [&](int64_t t) { ops::swiglu(ctx.isa, a_.hb + t * H, a_.hb2 + t * H, H); });
  matmul(ctx, L.w_down, a_.hb, n, a_.xb);  // (n, C)
  per_token(ctx, n, [&](int64_t t) { ops::add(a_.x + t * C, a_.xb + t * C, C); });
}

}  // namespace tessera
