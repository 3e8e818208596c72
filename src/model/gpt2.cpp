// GPT-2 block: LayerNorm -> fused qkv projection (+bias) -> causal MHA (no RoPE;
// learned positions were added at the embedding) -> output projection (+bias) ->
// residual; LayerNorm -> GELU MLP (+biases) -> residual.
#include "kernels/ops.h"
#include "model/model.h"

namespace tessera {

void Model::gpt2_layer(KernelContext& ctx, int64_t l, int64_t n) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t C = c.dim, H = c.hidden_dim;

  per_token(ctx, n, [&](int64_t t) {
    ops::layernorm(a_.xb + t * C, a_.x + t * C, L.attn_norm.f32(), L.attn_norm_b.f32(), C, c.norm_eps);
  });
  matmul(ctx, L.wqkv, a_.xb, n, a_.q);  // (n, 3C): q | k | v
  per_token(ctx, n, [&](int64_t t) {  // bias, then k / v into the cache
    float* r = a_.q + t * 3 * C;
    prep_heads(l, cseq_[t], cpos_[t], r, r + C, r + 2 * C, 0, c.n_kv_heads);
  });
  attention(ctx, l, n, a_.q, 3 * C);  // -> a_.att (n, C)
  matmul(ctx, L.wo, a_.att, n, a_.xb);
  add_bias(ctx, a_.xb, L.bo, n, C);
  per_token(ctx, n, [&](int64_t t) { ops::add(a_.x + t * C, a_.xb + t * C, C); });

  per_token(ctx, n, [&](int64_t t) {
    ops::layernorm(a_.xb + t * C, a_.x + t * C, L.ffn_norm.f32(), L.ffn_norm_b.f32(), C, c.norm_eps);
  });
  matmul(ctx, L.w_up, a_.xb, n, a_.hb);  // (n, H)
  add_bias(ctx, a_.hb, L.b_up, n, H);
  per_token(ctx, n, [&](int64_t t) { ops::gelu(ctx.isa, a_.hb + t * H, H); });
  matmul(ctx, L.w_down, a_.hb, n, a_.xb);  // (n, C)
  add_bias(ctx, a_.xb, L.b_down, n, C);
  per_token(ctx, n, [&](int64_t t) { ops::add(a_.x + t * C, a_.xb + t * C, C); });
}

}  // namespace tessera
