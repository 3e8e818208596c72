// The mixture-of-experts feed-forward of the training Transformer, forward and
// backward (the inference twin is model/moe.cpp; the router's semantics are
// model/config.h's MoeGate; hash routing, without a router: model/moe_hash.h):
//   r = router x (E); p = softmax(r) or sigmoid(r); the k largest p (+ the
//   selection bias, DeepSeek-V3's, when the layer has one: it gets no gradient,
//   the Trainer moves it by the loads, moe_bias_update) are selected (held
//   fixed in the backward, as every MoE trainer does); weights
//   w = p (/ sum) x scale; y = sum_i w_i down_i(act(gate_i x) * up_i x)
//   [+ g(x) shared(x), g = sigmoid(sh_gate . x) or 1].
// Rows are counting-sorted by expert so that each expert is one product over
// its rows, forward and backward. With a capacity factor, the slots past an
// expert's capacity (in row order) are dropped: inv = -1, no compute, no gradient.
// The balance loss counts the slots as routed, before dropping. Router losses (their gradients scaled like
// the loss, by grad_scale x N):
//   balance  E sum_e f_e P_e, f_e = share of the N k slots routed to e
//            (a constant), P_e = mean_t p_te;
//   z        mean_t logsumexp(r_t)^2.
#include <algorithm>
#include <cmath>

#include <omp.h>

#include "model/moe_hash.h"
#include "model/moe_route.h"
#include "train/transformer.h"

namespace tessera::train {

template <class T>
int64_t Transformer<T>::moe_act_floats() const {
  const int64_t N = N_, C = c_.dim, E = c_.moe_experts, Nk = N * c_.moe_used, He = c_.moe_hidden,
                Hs = c_.moe_shared_hidden;
  return 2 * N * E + Nk + 2 * Nk * C + 3 * Nk * He + (Hs > 0 ? 3 * N * Hs + N * C + N : 0);
}

template <class T>
int64_t Transformer<T>::moe_grad_floats() const {
  const int64_t N = N_, C = c_.dim, E = c_.moe_experts, Nk = N * c_.moe_used, He = c_.moe_hidden,
                Hs = c_.moe_shared_hidden;
  return Nk * C + 3 * Nk * He + N * E + Nk + (Hs > 0 ? 3 * N * Hs + N * C : 0);
}

template <class T>
std::vector<int64_t> Transformer<T>::take_expert_counts() {
  std::vector<int64_t> r = expert_counts_;
  std::fill(expert_counts_.begin(), expert_counts_.end(), 0);
  return r;
}

namespace {

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

}  // namespace

template <class T>
void Transformer<T>::moe_fwd(const T* p, int64_t l, LayerActs& a, const T* ffn_in, T* ffn_out) {
  const auto& o = L_.layers[size_t(l)];
  const int64_t N = N_, C = c_.dim, E = c_.moe_experts, k = c_.moe_used, He = c_.moe_hidden, Hs = c_.moe_shared_hidden;
  const bool geglu = c_.activation() == FfnAct::GeGLU;
  if (c_.moe_hashed()) {  // model/moe_hash.h: by token / previous token / position; weights scale / k
    const int64_t Tn = T_;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t) {
      const int64_t pos = t % Tn;
      const bool first = pos == 0 || (seg_ && seg_[t] == pos);  // no previous token (a packed segment's start)
      moe_hash_select(c_, tokens_[t], first ? -1 : tokens_[t - 1], pos, a.sel + t * k);
      for (int64_t i = 0; i < k; ++i) a.mw[t * k + i] = T(c_.moe_scale) / T(k);
    }
  } else {
    lin_fwd(a.rl, ffn_in, p + o.router, (const T*)nullptr, N, C, E);  // (N, E)
    const T* bias = o.router_bias == kAbsent ? nullptr : p + o.router_bias;  // selection only: no gradient
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t) {
      moe_route_row<T>(c_, a.rl + t * E, bias, a.rp + t * E, a.sel + t * k, a.mw + t * k);  // model/moe_route.h
    }
  }
  // Counting sort of the N k slots by expert: slot s goes to gathered row inv[s]
  // (-1: dropped, past its expert's capacity).
  const int64_t cap = o_.moe_capacity > 0.f
                          ? std::max<int64_t>(1, int64_t(std::ceil(double(o_.moe_capacity) * double(N * k) / double(E))))
                          : N * k;
  int32_t* off = a.off;
  std::fill(off, off + E + 1, 0);
  int64_t dropped = 0;
  for (int64_t s = 0; s < N * k; ++s) {
    int32_t& n = off[a.sel[s] + 1];
    if (n < cap) ++n, a.inv[s] = 0;
    else a.inv[s] = -1, ++dropped;
  }
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
  int32_t* next = moe_next_.data();  // (E) each expert's next gathered row
  std::copy(off, off + E, next);
  for (int64_t s = 0; s < N * k; ++s)
    if (a.inv[s] >= 0) a.inv[s] = next[a.sel[s]]++;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < N * k; ++s)
    if (a.inv[s] >= 0) std::copy(ffn_in + s / k * C, ffn_in + (s / k + 1) * C, a.xg + a.inv[s] * C);
  for (int64_t e = 0; e < E; ++e) {  // (m, C) -> (m, He) -> (m, C)
    const int64_t r0 = off[e], m = off[e + 1] - r0;
    if (m == 0) continue;
    lin_fwd(a.eg + r0 * He, a.xg + r0 * C, p + o.gate_exps + e * He * C, (const T*)nullptr, m, C, He);
    lin_fwd(a.eu + r0 * He, a.xg + r0 * C, p + o.up_exps + e * He * C, (const T*)nullptr, m, C, He);
    if (geglu)
      blk::geglu_fwd(a.eh + r0 * He, a.eg + r0 * He, a.eu + r0 * He, m * He, isa_);
    else
      blk::swiglu_fwd(a.eh + r0 * He, a.eg + r0 * He, a.eu + r0 * He, m * He, isa_);
    lin_fwd(a.ed + r0 * C, a.eh + r0 * He, p + o.down_exps + e * C * He, (const T*)nullptr, m, He, C);
  }
  if (Hs > 0) {
    lin_fwd(a.sg, ffn_in, p + o.gate_sh, (const T*)nullptr, N, C, Hs);
    lin_fwd(a.su, ffn_in, p + o.up_sh, (const T*)nullptr, N, C, Hs);
    if (geglu)
      blk::geglu_fwd(a.sh, a.sg, a.su, N * Hs, isa_);
    else
      blk::swiglu_fwd(a.sh, a.sg, a.su, N * Hs, isa_);
    lin_fwd(a.so, a.sh, p + o.down_sh, (const T*)nullptr, N, Hs, C);
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    T* y = ffn_out + t * C;
    std::fill(y, y + C, T(0));
    for (int64_t i = 0; i < k; ++i) {
      if (a.inv[t * k + i] < 0) continue;  // dropped
      const T w = a.mw[t * k + i];
      const T* d = a.ed + a.inv[t * k + i] * C;
      for (int64_t j = 0; j < C; ++j) y[j] += w * d[j];
    }
    if (Hs > 0) {
      const T gt = o.sh_gate == kAbsent ? T(1) : sigmoid(dot(p + o.sh_gate, ffn_in + t * C, C));
      a.sgate[t] = gt;
      for (int64_t j = 0; j < C; ++j) y[j] += gt * a.so[t * C + j];
    }
  }
  if (!counting_) return;  // a recomputation in the backward: counted already
  if (c_.moe_hashed()) {  // no router: counts only
    for (int64_t e = 0; e < E; ++e) expert_counts_[size_t(l * E + e)] += off[e + 1] - off[e];
    dropped_ += dropped;
    return;
  }
  // Scratch planned in the constructor: P (E), slots routed (E, before dropping), a softmax row (E).
  double* P = moe_stat_.data();
  double* routed = P + E;
  T* sm = moe_row_.data();
  std::fill(P, P + 2 * E, 0.0);
  double z = 0;
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t e = 0; e < E; ++e) P[e] += double(a.rp[t * E + e]);
    const double lse = double(moe_softmax(a.rl + t * E, sm, E));
    z += lse * lse;
  }
  for (int64_t s = 0; s < N * k; ++s) routed[a.sel[s]] += 1;
  double bal = 0;
  for (int64_t e = 0; e < E; ++e) {
    expert_counts_[size_t(l * E + e)] += off[e + 1] - off[e];
    bal += routed[e] / double(N * k) * P[e] / double(N);
  }
  dropped_ += dropped;
  moe_bal_ += double(E) * bal * double(N);  // times N: see CeResult
  moe_z_ += z;                              // mean_t lse^2, times N
}

template <class T>
void Transformer<T>::moe_bwd(const T* p, T* g, int64_t l, LayerActs& a, const T* dy, const T* ffn_in) {
  const auto& o = L_.layers[size_t(l)];
  const int64_t N = N_, C = c_.dim, E = c_.moe_experts, k = c_.moe_used, He = c_.moe_hidden, Hs = c_.moe_shared_hidden;
  const bool geglu = c_.activation() == FfnAct::GeGLU;
  const T scale = T(c_.moe_scale);
  auto G = [&](size_t off) { return g ? g + off : (T*)nullptr; };  // null g: a frozen base (adapters train)
  // The expert outputs' gradients (each slot's w dy) and the weights' (dy . d).
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < N * k; ++s) {
    const T* dyt = dy + s / k * C;
    const int64_t r = a.inv[s];
    if (r < 0) {  // dropped: no output, no gradient through it
      dmw_[s] = T(0);
      continue;
    }
    dmw_[s] = c_.moe_hashed() ? T(0) : dot(dyt, a.ed + r * C, C);  // fixed weights under hash routing
    for (int64_t j = 0; j < C; ++j) dmd_[r * C + j] = a.mw[s] * dyt[j];
  }
  // Each expert over its rows; its input gradient overwrites its rows of dmd_.
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = a.off[e], m = a.off[e + 1] - r0;
    if (m == 0) continue;
    lin_bwd(deh_ + r0 * He, G(o.down_exps + e * C * He), (T*)nullptr, dmd_ + r0 * C, a.eh + r0 * He,
            p + o.down_exps + e * C * He, m, He, C, false, true);
    if (geglu)
      blk::geglu_bwd(deg_ + r0 * He, deu_ + r0 * He, deh_ + r0 * He, a.eg + r0 * He, a.eu + r0 * He, m * He, isa_);
    else
      blk::swiglu_bwd(deg_ + r0 * He, deu_ + r0 * He, deh_ + r0 * He, a.eg + r0 * He, a.eu + r0 * He, m * He, isa_);
    lin_bwd(dmd_ + r0 * C, G(o.gate_exps + e * He * C), (T*)nullptr, deg_ + r0 * He, a.xg + r0 * C,
            p + o.gate_exps + e * He * C, m, C, He, false, true);
    lin_bwd(dmd_ + r0 * C, G(o.up_exps + e * He * C), (T*)nullptr, deu_ + r0 * He, a.xg + r0 * C,
            p + o.up_exps + e * He * C, m, C, He, true, true);
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {  // d ffn_in: the sum over the row's slots
    T* dxt = dxn_ + t * C;
    std::fill(dxt, dxt + C, T(0));
    for (int64_t i = 0; i < k; ++i) {
      if (a.inv[t * k + i] < 0) continue;
      const T* d = dmd_ + a.inv[t * k + i] * C;
      for (int64_t j = 0; j < C; ++j) dxt[j] += d[j];
    }
  }
  if (Hs > 0) {
    const bool gated = o.sh_gate != kAbsent;
    for (int64_t t = 0; t < N; ++t) {  // serial: the gate's gradient sums over rows
      const T gt = a.sgate[t];
      for (int64_t j = 0; j < C; ++j) dso_[t * C + j] = gt * dy[t * C + j];
      if (!gated) continue;
      const T dz = dot(dy + t * C, a.so + t * C, C) * gt * (T(1) - gt);
      for (int64_t j = 0; j < C; ++j) {
        if (g) g[o.sh_gate + j] += dz * ffn_in[t * C + j];
        dxn_[t * C + j] += dz * p[o.sh_gate + j];
      }
    }
    lin_bwd(dsh_, G(o.down_sh), (T*)nullptr, dso_, a.sh, p + o.down_sh, N, Hs, C, false, true);
    if (geglu)
      blk::geglu_bwd(dsg_, dsu_, dsh_, a.sg, a.su, N * Hs, isa_);
    else
      blk::swiglu_bwd(dsg_, dsu_, dsh_, a.sg, a.su, N * Hs, isa_);
    lin_bwd(dxn_, G(o.gate_sh), (T*)nullptr, dsg_, ffn_in, p + o.gate_sh, N, C, Hs, true, true);
    lin_bwd(dxn_, G(o.up_sh), (T*)nullptr, dsu_, ffn_in, p + o.up_sh, N, C, Hs, true, true);
  }
  if (c_.moe_hashed()) return;  // fixed routing: no router to train
  // The router: d p from the weights (selection fixed) and the balance loss, through
  // softmax / sigmoid; the z-loss on the logits directly.
  const T aux = T(grad_scale_) * T(N);
  T* f = moe_row_.data();  // (E) share of the slots routed to e (before dropping)
  std::fill(f, f + E, T(0));
  for (int64_t s = 0; s < N * k; ++s) f[a.sel[s]] += T(1) / T(N * k);
  const T bal = T(o_.moe_balance) * aux * T(E) / T(N), rz = T(o_.moe_router_z) * aux * T(2) / T(N);
  const int row_threads = int((moe_row_.size() / size_t(E) - 1) / 2);  // the rows planned for
#pragma omp parallel num_threads(row_threads)
  {
    T* dp = moe_row_.data() + size_t(1 + 2 * omp_get_thread_num()) * size_t(E);  // (E) x 2 per thread
    T* sm = dp + E;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N; ++t) {
      const T* pr = a.rp + t * E;
      const int32_t* sel = a.sel + t * k;
      const T* dw = dmw_ + t * k;
      for (int64_t e = 0; e < E; ++e) dp[e] = bal * f[e];
      if (c_.moe_norm_topk) {  // w_i = scale p_i / S, S = sum_j p_j
        T S = 0, q = 0;
        for (int64_t i = 0; i < k; ++i) S += pr[sel[i]], q += dw[i] * pr[sel[i]];
        for (int64_t i = 0; i < k; ++i) dp[sel[i]] += scale * (dw[i] / S - q / (S * S));
      } else {
        for (int64_t i = 0; i < k; ++i) dp[sel[i]] += scale * dw[i];
      }
      T* dr = dr_ + t * E;
      if (c_.moe_gate == MoeGate::Softmax) {
        T s = 0;
        for (int64_t e = 0; e < E; ++e) s += pr[e] * dp[e];
        for (int64_t e = 0; e < E; ++e) dr[e] = pr[e] * (dp[e] - s);
      } else {
        for (int64_t e = 0; e < E; ++e) dr[e] = dp[e] * pr[e] * (T(1) - pr[e]);
      }
      if (rz != T(0)) {
        const T lse = moe_softmax(a.rl + t * E, sm, E);
        for (int64_t e = 0; e < E; ++e) dr[e] += rz * lse * sm[e];
      }
    }
  }
  lin_bwd(dxn_, G(o.router), (T*)nullptr, dr_, ffn_in, p + o.router, N, C, E, true, true);
}

#define TESSERA_MOE_INSTANTIATE(T)                                                                       \
  template void Transformer<T>::moe_fwd(const T*, int64_t, LayerActs&, const T*, T*);                     \
  template void Transformer<T>::moe_bwd(const T*, T*, int64_t, LayerActs&, const T*, const T*);            \
  template int64_t Transformer<T>::moe_act_floats() const;                                                 \
  template int64_t Transformer<T>::moe_grad_floats() const;                                                \
  template std::vector<int64_t> Transformer<T>::take_expert_counts();
TESSERA_MOE_INSTANTIATE(float)
TESSERA_MOE_INSTANTIATE(double)
#undef TESSERA_MOE_INSTANTIATE

}  // namespace tessera::train
