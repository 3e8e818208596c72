// GPT-2 block: LayerNorm -> fused qkv projection (+bias) -> causal MHA (no RoPE;
// learned positions were added at the embedding) -> output projection (+bias) ->
// residual; LayerNorm -> GELU (or ReLU) MLP (+biases) -> residual. Written once for both
// executors (model/exec.h).
#include "model/exec.h"

namespace tessera {

template <class Ex>
void Model::gpt2_layer(Ex& ex, int64_t l) {
  const int64_t C = w_.cfg.dim;
  const auto& L = w_.layers[size_t(l)];
  const bool post = w_.cfg.norm_placement == NormPlacement::Post;  // norm(x + f(x)), the original Transformer's
  if (!post) ex.layernorm(L.attn_norm, L.attn_norm_b);
  const float* in = post ? ex.x() : ex.xn();
  ex.matmul(in, {{&L.wqkv, a_.q, &L.bqkv}});                      // (3C): q | k | v per row
  ex.attention(l, a_.q, a_.q + C, a_.q + 2 * C, 3 * C, 3 * C);   // -> a_.att (C)
  ex.matmul(a_.att, {{&L.wo, a_.xb, &L.bo}});
  bottleneck(ex, l, 0);
  ex.residual(a_.xb);
  if (post) ex.layernorm_x(L.attn_norm, L.attn_norm_b);
  if (!post) ex.layernorm(L.ffn_norm, L.ffn_norm_b);
  in = post ? ex.x() : ex.xn();
  ex.matmul(in, {{&L.w_up, a_.hb, &L.b_up}});  // (H)
  const float* h = ex.ungated(a_.hb);
  ex.matmul(h, {{&L.w_down, a_.xb, &L.b_down}});  // (C)
  bottleneck(ex, l, 1);
  ex.residual(a_.xb);
  if (post) ex.layernorm_x(L.ffn_norm, L.ffn_norm_b);
}

template void Model::gpt2_layer<Model::RegionExec>(RegionExec&, int64_t);
template void Model::gpt2_layer<Model::TeamExec>(TeamExec&, int64_t);

}  // namespace tessera
