// A decode step as one persistent thread team (kernels/team.h): the blocks of
// llama.cpp and gpt2.cpp on a TeamExec (model/exec.h), run SPMD by every
// thread of one OpenMP region. Each thread keeps its own copy of the residual
// stream, the normalised input and the FFN activation (computed redundantly,
// identically), so the only barriers are the ones that make a shared
// matrix-vector output complete: after q/k/v, attention, wo, gate/up (GPT-2:
// up), down and the classifier. Bit for bit the same as the region-per-matrix
// path (tests/test_team.cpp).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/attention.h"
#include "kernels/ops.h"
#include "model/exec.h"
#include "model/model.h"

namespace tessera {

bool Model::decodes_as_team(const KernelContext& ctx) const {
  // More threads than CPUs: a spinning team would wait for threads that are not
  // running (several times slower than libgomp's regions, which spin less when
  // oversubscribed).
  const int threads = std::min(ctx.n_threads, max_threads_);
  if (!persistent_team_ || threads < 2 || threads > omp_get_num_procs() || ctx.isa == Isa::Scalar) return false;
  // Layers too small to split (stories260K: 64 x 64) run one thread per matrix
  // on the regions' path, without barriers: there the team was ~8% slower.
  if (w_.layers.empty() || !team_worthwhile(w_.layers[0].wo)) return false;
  const auto ok = [&](const TensorView& W) { return team_can_matmul(ctx.isa, W); };
  const bool llama = w_.cfg.arch == Arch::Llama;
  for (int64_t l = 0; l < w_.cfg.n_layers; ++l) {
    const auto& L = w_.layers[size_t(l)];
    const bool attn = w_.cfg.mla() ? (L.wq_a.empty() ? ok(L.wq) : ok(L.wq_a) && ok(L.wq_b)) && ok(L.wkv_a) && ok(L.wkv_b)
                      : llama     ? ok(L.wq) && ok(L.wk) && ok(L.wv)
                                  : ok(L.wqkv);
    const bool ffn =
        w_.cfg.moe_layer(l)
            ? ok(L.router) && ok(expert_matrix(L.gate_exps, 0)) && ok(expert_matrix(L.up_exps, 0)) &&
                  ok(expert_matrix(L.down_exps, 0)) && (L.up_sh.empty() || (ok(L.gate_sh) && ok(L.up_sh) && ok(L.down_sh)))
            : ok(L.w_up) && ok(L.w_down) && (!llama || ok(L.w_gate));
    if (!attn || !ffn || !ok(L.wo)) return false;
  }
  return ok(w_.output);
}

// Per KV head (one item per thread in turn): its bias / QK-norm / RoPE and cache
// store, then its query group's attention. With more threads than KV heads (MQA)
// a head's group is split, and the heads are prepared first by one thread.
void Model::team_attention(TeamThread& tt, int64_t l, int32_t seq, int64_t pos, float* q, float* k, float* v) {
  const auto& c = w_.cfg;
  const int64_t group = c.n_heads / c.n_kv_heads;
  const int64_t split = std::min<int64_t>(group, (tt.size + c.n_kv_heads - 1) / c.n_kv_heads);
  const int64_t sub = (group + split - 1) / split;  // query heads per item
  if (split > 1) {
    if (tt.rank == 0) prep_heads(l, seq, pos, q, k, v, 0, c.n_kv_heads);
    tt.barrier();
  }
  for (int64_t it = tt.rank; it < c.n_kv_heads * split; it += tt.size) {
    const int64_t kvh = it / split, g0 = it % split * sub;
    if (split == 1) prep_heads(l, seq, pos, q, k, v, kvh, kvh + 1);
    const DecodeAttnArgs a = decode_attn_args(l, seq, pos, kvh, g0, std::min(sub, group - g0), q, a_.att, tt.rank);
    attend_decode(tt.isa, a);
  }
  tt.barrier();
}

void Model::decode_team(KernelContext& ctx, int32_t token, int64_t pos, int32_t seq, float* out) {
  const auto& c = w_.cfg;
  const int64_t C = c.dim;
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
    float* hs = xb + (C + 15) / 16 * 16;                                // (H) FFN activation
    const bool llama = c.arch == Arch::Llama;
    dequantize_row(w_.tok_embd, token, x);
    if (c.embed_scale > 0.f) ops::scale(x, c.embed_scale, C);
    if (!llama) {
      dequantize_row(w_.pos_embd, pos, xb);
      ops::add(x, xb, C);
    }
    TeamExec ex{*this, tt, seq, pos, x, xb, hs};
    for (int64_t l = 0; l < c.n_layers; ++l) {
      if (llama)
        llama_layer(ex, l);
      else
        gpt2_layer(ex, l);
    }
    if (llama)
      ex.rmsnorm(w_.out_norm);
    else
      ex.layernorm(w_.out_norm, w_.out_norm_b);
    team_matmul(tt, xb, {{&w_.output, out}});
    if (tt.rank == 0) {
      if (c.final_softcap > 0.f) ops::softcap(out, c.vocab_size, c.final_softcap);
      calls = tt.gen - gen0;
    }
  }
  team_.gen_base = gen0 + calls;
}

}  // namespace tessera
