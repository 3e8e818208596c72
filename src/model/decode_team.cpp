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
#include <numeric>

#include "core/error.h"
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
    const size_t h0 = size_t(l * w_.cfg.n_heads);  // MLA: the absorbed products' matrices of layer l
    const bool attn = w_.cfg.mla() ? (L.wq_a.empty() ? ok(L.wq) : ok(L.wq_a) && ok(L.wq_b)) && ok(L.wkv_a) &&
                                         ok(mla_wk_[h0]) && ok(mla_wv_[h0])
                      : llama     ? ok(L.wq) && ok(L.wk) && ok(L.wv)
                                  : ok(L.wqkv);
    const bool ffn =
        w_.cfg.moe_layer(l)
            ? (L.router.empty() || ok(L.router)) && ok(expert_matrix(L.gate_exps, 0)) && ok(expert_matrix(L.up_exps, 0)) &&
                  ok(expert_matrix(L.down_exps, 0)) && (L.up_sh.empty() || (ok(L.gate_sh) && ok(L.up_sh) && ok(L.down_sh)))
            : ok(L.w_up) && ok(L.w_down) && (!llama || ok(L.w_gate));
    if (!attn || !ffn || !ok(L.wo)) return false;
    if (!bn_views_.empty())
      for (const BnViews& v : bn_views_[size_t(l)])
        if (!v.down.empty() && !(ok(v.down) && ok(v.up))) return false;
  }
  return ok(w_.output);
}

namespace {
constexpr int64_t kSplitKMin = 512;  // keys per split-K chunk, at least
}  // namespace

// Per KV head (one item per thread in turn): its bias / QK-norm / RoPE and cache
// store, then its query group's attention. With more threads than KV heads (MQA)
// a head's group is split, and the heads are prepared first by one thread.
// When the (KV head, query sub-group) items do not divide evenly over the team
// and the context is long, each item's keys are cut into ks chunks as well
// (split-K): every chunk is attended with its log-sum-exp, and the chunks are
// merged exactly (merge_attention, kernels/attention.h).
void Model::team_attention(TeamThread& tt, int64_t l, int32_t seq, int64_t pos, float* q, float* k, float* v,
                           float* att) {
  const auto& c = w_.cfg;
  const int64_t nkv = c.cache_kv_heads(), group = c.n_heads / nkv, vd = c.cache_v_dim();  // vd: output per head
  if (c.layer(l).attn == AttnKind::Sparse) {  // a sparse pattern: the KV heads over the team, over the visible keys
    if (tt.rank == 0) prep_heads(l, seq, pos, q, k, v, 0, nkv);
    tt.barrier();
    attend_sparse(tt.isa, l, seq, pos, q, att, tt.rank, tt.rank, tt.size);
    tt.barrier();
    return;
  }
  const int64_t split = std::min<int64_t>(group, (tt.size + nkv - 1) / nkv);
  const int64_t sub = (group + split - 1) / split;  // query heads per item
  const int64_t items = nkv * split, k0 = c.layer(l).first_key(pos), n_keys = pos + 1 - k0;
  int64_t ks = 1;  // key chunks per item
  if (items % tt.size != 0)
    ks = std::max<int64_t>(1, std::min<int64_t>(tt.size / std::gcd<int64_t>(items, tt.size), n_keys / kSplitKMin));
  const bool prep_per_item = split == 1 && ks == 1;  // else every head is prepared before any item reads it
  if (!prep_per_item) {
    if (tt.rank == 0) prep_heads(l, seq, pos, q, k, v, 0, nkv);
    tt.barrier();
  }
  float* part = team_part_.data();                 // split-K: (items, ks, sub, vd) partial outputs
  float* part_lse = part + items * ks * sub * vd;  // and (items, ks, sub) log-sum-exps
  for (int64_t it = tt.rank; it < items * ks; it += tt.size) {
    const int64_t hi = it / ks, chunk = it % ks, kvh = hi / split, g0 = hi % split * sub;
    if (prep_per_item) prep_heads(l, seq, pos, q, k, v, kvh, kvh + 1);
    DecodeAttnArgs a = decode_attn_args(l, seq, pos, kvh, g0, std::min(sub, group - g0), q, att, tt.rank);
    if (ks > 1) {
      a.start = k0 + n_keys * chunk / ks;  // keys [start, n) of this chunk
      a.n = k0 + n_keys * (chunk + 1) / ks;
      a.out = part + it * sub * vd;
      a.lse = part_lse + it * sub;
    }
    attend_decode(tt.isa, a);
  }
  tt.barrier();
  if (ks == 1) return;
  for (int64_t hi = tt.rank; hi < items; hi += tt.size) {  // merge the chunks of each query head
    const int64_t kvh = hi / split, g0 = hi % split * sub, G = std::min(sub, group - g0);
    for (int64_t g = 0; g < G; ++g) {
      float* o = part + (hi * ks * sub + g) * vd;
      float s = part_lse[hi * ks * sub + g];
      for (int64_t chunk = 1; chunk < ks; ++chunk)
        merge_attention(o, s, part + ((hi * ks + chunk) * sub + g) * vd, part_lse[(hi * ks + chunk) * sub + g], vd);
      std::copy(o, o + vd, att + (kvh * group + g0 + g) * vd);
    }
  }
  tt.barrier();
}

// Thread r takes KV heads r, r + size, ... of every row, in row order: its
// heads' keys of a row are in the cache before a later row of that sequence
// reads them (the same thread stored them), so the rows need no barrier
// between them, where team_attention takes one per row.
bool Model::team_attention_rows(TeamThread& tt, int64_t l, int64_t n, const int32_t* seq, const int64_t* pos,
                                float* q, float* k, float* v, int64_t q_stride, int64_t kv_stride, float* att,
                                int64_t out_stride) {
  const auto& c = w_.cfg;
  const int64_t nkv = c.cache_kv_heads(), group = c.n_heads / nkv;
  if (c.layer(l).attn == AttnKind::Sparse || nkv % tt.size != 0) return false;
  // Split-K (team_attention's long-context case) applies only where the heads do not divide evenly: never here.
  for (int64_t kvh = tt.rank; kvh < nkv; kvh += tt.size)
    for (int64_t t = 0; t < n; ++t) {
      float *qt = q + t * q_stride, *kt = k + t * kv_stride, *vt = v + t * kv_stride;
      prep_heads(l, seq[t], pos[t], qt, kt, vt, kvh, kvh + 1);
      attend_decode(tt.isa, decode_attn_args(l, seq[t], pos[t], kvh, 0, group, qt, att + t * out_stride, tt.rank));
    }
  tt.barrier();
  return true;
}

bool Model::team_rows_ok(const KernelContext& ctx, int64_t n) const {
  if (n == 1) return true;
  const auto& c = w_.cfg;
  if (n > std::min(kTeamRows, max_batch_) || c.is_moe() || c.mla()) return false;
  const auto ok = [&](const TensorView& W) { return W.empty() || team_can_matmul(ctx.isa, W, n); };
  for (const auto& L : w_.layers)
    if (!(ok(L.wq) && ok(L.wk) && ok(L.wv) && ok(L.wqkv) && ok(L.wo) && ok(L.w_gate) && ok(L.w_up) && ok(L.w_down)))
      return false;
  for (const auto& layer : bn_views_)
    for (const BnViews& v : layer)
      if (!(ok(v.down) && ok(v.up))) return false;
  return ok(w_.output);
}

void Model::decode_team(KernelContext& ctx, const int32_t* tokens, const int64_t* pos, const int32_t* seq, int64_t n,
                        const uint8_t* want, float* out) {
  const auto& c = w_.cfg;
  const int64_t C = c.dim, V = c.vocab_size;
  const uint32_t gen0 = team_.gen_base;
  uint32_t calls = 0;
  int64_t n_out = 0;  // the wanted rows, packed in front (a single row is always computed)
  out_rows_.resize(size_t(max_batch_));
  for (int64_t t = 0; t < n; ++t)
    if (n == 1 || !want || want[t]) out_rows_[size_t(n_out++)] = t;
  if (n_out > 0 && !out) fail("forward: rows want logits but no output buffer was given");
#pragma omp parallel num_threads(std::min(ctx.n_threads, max_threads_))
  {
    TeamThread tt;
    tt.team = &team_;
    tt.rank = omp_get_thread_num();
    tt.size = omp_get_num_threads();
    tt.isa = ctx.isa;
    tt.scratch = team_scratch_.data() + size_t(tt.rank) * team_scratch_stride_;
    tt.gen = gen0;
    float* x = team_act_.data() + size_t(tt.rank) * team_act_stride_;  // (n, C) residual stream
    float* xb = x + (n * C + 15) / 16 * 16;                             // (n, C) normalised input
    float* hs = xb + (n * C + 15) / 16 * 16;                            // (n, H) FFN activation
    const bool llama = c.arch == Arch::Llama;
    for (int64_t t = 0; t < n; ++t) {
      float* xt = x + t * C;
      dequantize_row(w_.tok_embd, tokens[t], xt);
      if (c.embed_scale > 0.f) ops::scale(xt, c.embed_scale, C);
      if (!llama) {
        dequantize_row(w_.pos_embd, pos[t], xb);
        ops::add(xt, xb, C);
      }
    }
    TeamExec ex{*this, tt, n, seq, pos, x, xb, hs};
    for (int64_t l = 0; l < c.n_layers; ++l) {
      if (llama)
        llama_layer(ex, l);
      else
        gpt2_layer(ex, l);
    }
    if (tt.rank == 0 && mtp_)  // for the MTP module (model/mtp.cpp)
      for (int64_t t = 0; t < n; ++t) std::copy(x + t * C, x + (t + 1) * C, kv_->hidden(seq[t], pos[t]));
    // The final norm of the wanted rows, packed into xb's first rows.
    for (int64_t i = 0; i < n_out; ++i) {
      const int64_t t = out_rows_[size_t(i)];
      if (llama)
        ops::rmsnorm(tt.isa, xb + i * C, x + t * C, w_.out_norm.f32(), C, c.norm_eps);
      else
        ops::layernorm(xb + i * C, x + t * C, w_.out_norm.f32(), w_.out_norm_b.f32(), C, c.norm_eps);
    }
    if (n_out > 0) team_matmul(tt, xb, {{&w_.output, out}}, n_out);
    if (tt.rank == 0) {
      if (c.final_softcap > 0.f)
        for (int64_t i = 0; i < n_out; ++i) ops::softcap(out + i * V, V, c.final_softcap);
      calls = tt.gen - gen0;
    }
  }
  team_.gen_base = gen0 + calls;
}

}  // namespace tessera
