// GPT-2 block: LayerNorm -> fused qkv projection (+bias) -> causal MHA (no RoPE;
// learned positions were added at the embedding) -> output projection (+bias) ->
// residual; LayerNorm -> GELU MLP (+biases) -> residual.
#include <algorithm>

#include "kernels/ops.h"
#include "model/model.h"

namespace tessera {

void Model::gpt2_layer(KernelContext& ctx, int64_t l, int64_t n, int64_t pos) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t C = c.dim, H = c.hidden_dim;

  for (int64_t t = 0; t < n; ++t)
    ops::layernorm(a_.xb + t * C, a_.x + t * C, L.attn_norm.f32(), L.attn_norm_b.f32(), C, c.norm_eps);
  matmul(ctx, L.wqkv, a_.xb, n, a_.q);  // (n, 3C): q | k | v
  for (int64_t t = 0; t < n; ++t) {    // bias, then k / v into the cache
    float* r = a_.q + t * 3 * C;
    prep_heads(l, pos + t, r, r + C, r + 2 * C, 0, c.n_kv_heads);
  }
  attention(ctx, l, n, pos, a_.q, 3 * C);  // -> a_.att (n, C)
  matmul(ctx, L.wo, a_.att, n, a_.xb);
  add_bias(a_.xb, L.bo, n, C);
  for (int64_t t = 0; t < n; ++t) ops::add(a_.x + t * C, a_.xb + t * C, C);

  for (int64_t t = 0; t < n; ++t)
    ops::layernorm(a_.xb + t * C, a_.x + t * C, L.ffn_norm.f32(), L.ffn_norm_b.f32(), C, c.norm_eps);
  matmul(ctx, L.w_up, a_.xb, n, a_.hb);  // (n, H)
  add_bias(a_.hb, L.b_up, n, H);
  const int nt = std::min(ctx.n_threads, max_threads_);
#pragma omp parallel for num_threads(nt) schedule(static) if (n > 1)
  for (int64_t t = 0; t < n; ++t) ops::gelu(ctx.isa, a_.hb + t * H, H);
  matmul(ctx, L.w_down, a_.hb, n, a_.xb);  // (n, C)
  add_bias(a_.xb, L.b_down, n, C);
  for (int64_t t = 0; t < n; ++t) ops::add(a_.x + t * C, a_.xb + t * C, C);
}

}  // namespace tessera
