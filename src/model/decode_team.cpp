// A Llama decode step as one persistent thread team (kernels/team.h): the same
// block as llama.cpp's llama_layer for one token, run SPMD by every thread of
// one OpenMP region. Each thread keeps its own copy of the residual stream, the
// normalised input and the SwiGLU product (computed redundantly, identically),
// so the only barriers are the ones that make a shared matrix-vector output
// complete: after q/k/v, attention, wo, gate/up, down and the classifier.
// Bit for bit the same as the region-per-matrix path (tests/test_model.cpp).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/attention.h"
#include "kernels/ops.h"
#include "model/model.h"

namespace tessera {

bool Model::decodes_as_team(const KernelContext& ctx) const {
  if (!persistent_team_ || std::min(ctx.n_threads, max_threads_) < 2 || ctx.isa == Isa::Scalar) return false;
  const auto ok = [&](const TensorView& W) { return team_can_matmul(ctx.isa, W); };
  for (const auto& L : w_.layers)
    if (!ok(L.wq) || !ok(L.wk) || !ok(L.wv) || !ok(L.wo) || !ok(L.w_gate) || !ok(L.w_up) || !ok(L.w_down))
      return false;
  return ok(w_.output);
}

// Per KV head (one item per thread in turn): its bias / QK-norm / RoPE and cache
// store, then its query group's attention. With more threads than KV heads (MQA)
// a head's group is split, and the heads are prepared first by one thread.
void Model::team_attention(TeamThread& tt, int64_t l, int64_t pos) {
  const auto& c = w_.cfg;
  const int64_t group = c.n_heads / c.n_kv_heads;
  const int64_t split = std::min<int64_t>(group, (tt.size + c.n_kv_heads - 1) / c.n_kv_heads);
  const int64_t sub = (group + split - 1) / split;  // query heads per item
  if (split > 1) {
    if (tt.rank == 0) prep_heads(l, pos, a_.q, a_.k, a_.v, 0, c.n_kv_heads);
    tt.barrier();
  }
  for (int64_t it = tt.rank; it < c.n_kv_heads * split; it += tt.size) {
    const int64_t kvh = it / split, g0 = it % split * sub;
    if (split == 1) prep_heads(l, pos, a_.q, a_.k, a_.v, kvh, kvh + 1);
    const DecodeAttnArgs a = decode_attn_args(l, pos, kvh, g0, std::min(sub, group - g0), a_.q, a_.att, tt.rank);
    attend_decode(tt.isa, a);
  }
  tt.barrier();
}

void Model::decode_team(KernelContext& ctx, int32_t token, int64_t pos, float* out) {
  const auto& c = w_.cfg;
  const int64_t C = c.dim, H = c.hidden_dim;
  const uint32_t gen0 = team_.gen_base;
  uint32_t calls = 0;
#pragma omp parallel num_threads(std::min(ctx.n_threads, max_threads_))
  {
    TeamThread tt;
    tt.team = &team_;
    tt.rank = omp_get_thread_num();
    tt.size = omp_get_num_threads();
    tt.isa = ctx.isa;
    tt.scratch = team_scratch_.data() + size_t(tt.rank) * team_scratch_stride_;
    tt.gen = gen0;
    float* x = team_act_.data() + size_t(tt.rank) * team_act_stride_;  // (C) residual stream
    float* xb = x + (C + 15) / 16 * 16;                                 // (C) normalised input
    float* hs = xb + (C + 15) / 16 * 16;                                // (H) silu(gate) * up
    dequantize_row(w_.tok_embd, token, x);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const auto& L = w_.layers[size_t(l)];
      ops::rmsnorm(xb, x, L.attn_norm.f32(), C, c.norm_eps);
      team_matmul(tt, xb, {{&L.wq, a_.q}, {&L.wk, a_.k}, {&L.wv, a_.v}});
      team_attention(tt, l, pos);                 // -> a_.att (q_dim)
      team_matmul(tt, a_.att, {{&L.wo, a_.xb}});  // (C)
      ops::add(x, a_.xb, C);
      ops::rmsnorm(xb, x, L.ffn_norm.f32(), C, c.norm_eps);
      team_matmul(tt, xb, {{&L.w_gate, a_.hb}, {&L.w_up, a_.hb2}});  // (H) each
      std::copy(a_.hb, a_.hb + H, hs);
      ops::swiglu(hs, a_.hb2, H);
      team_matmul(tt, hs, {{&L.w_down, a_.xb}});  // (C)
      ops::add(x, a_.xb, C);
    }
    ops::rmsnorm(xb, x, w_.out_norm.f32(), C, c.norm_eps);
    team_matmul(tt, xb, {{&w_.output, out}});
    if (tt.rank == 0) {
      if (c.final_softcap > 0.f) ops::softcap(out, c.vocab_size, c.final_softcap);
      calls = tt.gen - gen0;
    }
  }
  team_.gen_base = gen0 + calls;
}

}  // namespace tessera
