// Mixture-of-experts feed-forward (a layer with LayerConfig::ffn == MoE), for
// both executors of model/exec.h:
//   router logits r = router h (E); p = softmax(r) or sigmoid(r); the k experts
//   of largest p (+ the selection bias) are chosen; weights w = p (/ sum, x scale)
//   (hash routing: the k experts of model/moe_hash.h, weights scale / k);
//   y = sum_i w_i down_i(act(gate_i h) * up_i h) [+ g * shared(h)]; x += y.
// Prefill (moe_rows) routes every row, sorts the (row, expert) pairs by expert
// and runs each expert once as a matrix product over its rows; decode
// (moe_team, and moe_rows with one row) reads only the k selected experts.
// Both sum a row's terms in the same order, so a decode step gives the same
// bits on either executor (tests/test_team.cpp).
#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "model/exec.h"
#include "model/moe_hash.h"
#include "model/moe_route.h"

namespace tessera {

namespace {

// sigmoid(g . h): the shared expert's gate (Qwen2-MoE); 1 without one.
float shared_gate(const LayerWeights& L, const float* h, int64_t C) {
  if (L.sh_gate.empty()) return 1.f;
  const float* g = L.sh_gate.f32();
  float z = 0.f;
  for (int64_t i = 0; i < C; ++i) z += g[i] * h[i];
  return 1.f / (1.f + std::exp(-z));
}

// x(C) += w_i d_i for each i, then += g s: in this order on both executors.
void combine_row(int64_t C, int64_t k, const float* w, const float* const* d, float g, const float* s, float* x) {
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < C; ++j) x[j] += w[i] * d[i][j];
  if (s)
    for (int64_t j = 0; j < C; ++j) x[j] += g * s[j];
}

}  // namespace

void Model::moe_hash_row(int64_t t, int32_t* sel, float* w) const {
  const auto& c = w_.cfg;
  const int64_t pos = cpos_[t];
  moe_hash_select(c, ctok_[t], pos > 0 ? kv_->token(cseq_[t], pos - 1) : -1, pos, sel);
  for (int64_t i = 0; i < c.moe_used; ++i) w[i] = c.moe_scale / float(c.moe_used);
}

void Model::moe_rows(KernelContext& ctx, int64_t l, const float* xn, int64_t n) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t C = c.dim, E = c.moe_experts, k = c.moe_used, He = c.moe_hidden, Hs = c.moe_shared_hidden;
  float* x = a_.x;
  if (c.moe_hashed()) {
    for (int64_t t = 0; t < n; ++t) moe_hash_row(t, moe_sel_.data() + t * k, a_.moe_w + t * k);
  } else {
    linear(ctx, Linear{&L.router}, xn, n, a_.router);  // (n, E)
    const float* bias = L.router_bias.empty() ? nullptr : L.router_bias.f32();
    per_token(ctx, n, [&](int64_t t) {
      moe_route_row(c, a_.router + t * E, bias, a_.router + t * E, moe_sel_.data() + t * k, a_.moe_w + t * k);
    });
  }
  // Counting sort of the n k (row, expert) slots by expert: slot s = t k + i
  // goes to position inv[s] of the gathered rows; expert e owns [off[e], off[e + 1]).
  std::fill(moe_off_.begin(), moe_off_.end(), 0);
  for (int64_t s = 0; s < n * k; ++s) ++moe_off_[size_t(moe_sel_[size_t(s)]) + 1];
  for (int64_t e = 0; e < E; ++e) moe_off_[size_t(e + 1)] += moe_off_[size_t(e)];
  for (int64_t s = 0; s < n * k; ++s) moe_inv_[size_t(s)] = moe_off_[size_t(moe_sel_[size_t(s)])]++;
  for (int64_t e = E; e > 0; --e) moe_off_[size_t(e)] = moe_off_[size_t(e - 1)];
  moe_off_[0] = 0;
  per_token(ctx, n, [&](int64_t t) {  // gather: (n k, C)
    for (int64_t i = 0; i < k; ++i)
      std::copy(xn + t * C, xn + (t + 1) * C, a_.moe_x + moe_inv_[size_t(t * k + i)] * C);
  });
  // Each expert once, over its rows: (m, C) -> (m, He) -> (m, C).
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = moe_off_[size_t(e)], m = moe_off_[size_t(e + 1)] - r0;
    if (m == 0) continue;
    const TensorView g = expert_matrix(L.gate_exps, e), u = expert_matrix(L.up_exps, e),
                     d = expert_matrix(L.down_exps, e);
    float* G = a_.moe_g + r0 * He;
    matmul_multi(ctx, a_.moe_x + r0 * C, m, {{&g, G}, {&u, a_.moe_u + r0 * He}});
    per_token(ctx, m, [&](int64_t t) { gated_row(c, ctx.isa, G + t * He, a_.moe_u + (r0 + t) * He, He); });
    linear(ctx, Linear{&d}, G, m, a_.moe_d + r0 * C);
  }
  if (Hs > 0) {  // the shared expert over every row: (n, C) -> (n, Hs) -> (n, C)
    matmul_multi(ctx, xn, n, {{&L.gate_sh, a_.hb}, {&L.up_sh, a_.hb2}});
    per_token(ctx, n, [&](int64_t t) { gated_row(c, ctx.isa, a_.hb + t * Hs, a_.hb2 + t * Hs, Hs); });
    linear(ctx, Linear{&L.down_sh}, a_.hb, n, a_.moe_s);
  }
  per_token(ctx, n, [&](int64_t t) {
    const float* d[kMaxMoeUsed];
    for (int64_t i = 0; i < k; ++i) d[i] = a_.moe_d + moe_inv_[size_t(t * k + i)] * C;
    combine_row(C, k, a_.moe_w + t * k, d, shared_gate(L, xn + t * C, C), Hs > 0 ? a_.moe_s + t * C : nullptr,
                x + t * C);
  });
}

void Model::moe_team(TeamThread& tt, int64_t l, const float* xn, float* x, float* hs) {
  const auto& c = w_.cfg;
  const auto& L = w_.layers[size_t(l)];
  const int64_t C = c.dim, E = c.moe_experts, k = c.moe_used, He = c.moe_hidden, Hs = c.moe_shared_hidden;
  // Every thread routes the same way into its own scratch.
  float* p = team_route_.data() + size_t(tt.rank) * team_route_stride_;
  float* w = p + E;
  auto* sel = reinterpret_cast<int32_t*>(w + k);
  if (c.moe_hashed()) {
    moe_hash_row(0, sel, w);
  } else {
    team_matmul(tt, xn, {{&L.router, a_.router}});  // (E), shared
    moe_route_row(c, a_.router, L.router_bias.empty() ? nullptr : L.router_bias.f32(), p, sel, w);
  }
  // gate / up of the selected experts and the shared one, up to 4 matrices a call.
  TensorView views[2 * kMaxMoeUsed + 2];
  MatmulOut outs[2 * kMaxMoeUsed + 2];
  size_t n = 0;
  for (int64_t i = 0; i < k; ++i) {
    views[n] = expert_matrix(L.gate_exps, sel[i]);
    outs[n] = {&views[n], a_.moe_g + i * He};
    ++n;
    views[n] = expert_matrix(L.up_exps, sel[i]);
    outs[n] = {&views[n], a_.moe_u + i * He};
    ++n;
  }
  if (Hs > 0) {
    outs[n++] = {&L.gate_sh, a_.hb};
    outs[n++] = {&L.up_sh, a_.hb2};
  }
  for (size_t j = 0; j < n; j += Team::kMaxJobs) team_matmul(tt, xn, outs + j, std::min<size_t>(Team::kMaxJobs, n - j));
  // down of each: the activation on every thread's own copy, the product shared.
  for (int64_t i = 0; i < k; ++i) {
    std::copy(a_.moe_g + i * He, a_.moe_g + (i + 1) * He, hs);
    gated_row(c, tt.isa, hs, a_.moe_u + i * He, He);
    const TensorView d = expert_matrix(L.down_exps, sel[i]);
    team_matmul(tt, hs, {{&d, a_.moe_d + i * C}});
  }
  if (Hs > 0) {
    std::copy(a_.hb, a_.hb + Hs, hs);
    gated_row(c, tt.isa, hs, a_.hb2, Hs);
    team_matmul(tt, hs, {{&L.down_sh, a_.moe_s}});
  }
  const float* d[kMaxMoeUsed];
  for (int64_t i = 0; i < k; ++i) d[i] = a_.moe_d + i * C;
  combine_row(C, k, w, d, shared_gate(L, xn, C), Hs > 0 ? a_.moe_s : nullptr, x);
}

}  // namespace tessera
