// The two ways a block runs (model.h's RegionExec / TeamExec), so that each
// block (model/llama.cpp, model/gpt2.cpp) is written once:
//   RegionExec: the n rows of a chunk; norms, residuals and activations over
//     the threads per row (Model::per_token), a parallel region per matrix product.
//   TeamExec: one decode step (or a few rows: Model::kTeamRows) on one thread of the persistent team
//     (model/decode_team.cpp): the residual stream, the normalised input and the
//     FFN activation are the thread's own copies (computed redundantly, the same
//     on every thread), matrix products are shared (team_matmul, a barrier after each).
// Both give the same logits bit for bit (tests/test_team.cpp).
// A block sees: x() the residual stream, xn() the normalised input, n_rows() the rows, and
//   rmsnorm(g) / layernorm(g, b)   xn <- norm(x)
//   rmsnorm_x(g) / layernorm_x(g, b)  x <- norm(x) (post-norm)
//   matmul(X, {{&W, Y, &b}, ...})  Y <- X W^T + b for each (linear(); rows of X: the executor's)
//   attention(l, q, k, v, qs, kvs) QK-norm / RoPE, cache write, causal attention -> Model::a_.att
//   residual(y)                    x <- x + y
//   gated(g, u) / ungated(h)       the FFN activation (act(g) * u, act(h)); returns where it is
//   moe(l, in)                     x <- x + the mixture-of-experts feed-forward of in (model/moe.cpp)
//   rows(f)                        f(t) for each row t, on buffers every thread shares (complete on return)
//   items(n, f)                    f(i, rank) for i in [0, n) (each for all rows: per-head products), over the threads
#pragma once
#include <omp.h>

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "model/tensor_parallel.h"

namespace tessera {

// g(H) = act(g) * u (gated, Llama family) / h(H) = act(h) (ungated, GPT-2 family), by the config's activation.
// Out of place (out may be g / h): a team thread's private activation from the shared products.
inline void gated_row(const ModelConfig& c, Isa isa, float* out, const float* g, const float* u, int64_t H) {
  if (c.activation() == FfnAct::GeGLU) ops::geglu(isa, out, g, u, H);
  else ops::swiglu(isa, out, g, u, H);
}
inline void gated_row(const ModelConfig& c, Isa isa, float* g, const float* u, int64_t H) { gated_row(c, isa, g, g, u, H); }
inline void ungated_row(const ModelConfig& c, Isa isa, float* out, const float* h, int64_t H) {
  if (c.activation() == FfnAct::ReLU) ops::relu(out, h, H);
  else ops::gelu(isa, out, h, H);
}
inline void ungated_row(const ModelConfig& c, Isa isa, float* h, int64_t H) { ungated_row(c, isa, h, h, H); }

struct Model::RegionExec {
  Model& m;
  KernelContext& ctx;
  int64_t n;  // rows

  int64_t n_rows() const { return n; }
  Isa isa() const { return ctx.isa; }
  float* x() const { return m.a_.x; }   // (n, C)
  float* xn() const { return m.a_.xb; }  // (n, C)
  void rmsnorm(const TensorView& g) {
    const auto& c = m.w_.cfg;
    m.per_token(ctx, n, [&](int64_t t) { ops::rmsnorm(ctx.isa, xn() + t * c.dim, x() + t * c.dim, g.f32(), c.dim, c.norm_eps); });
  }
  void layernorm(const TensorView& g, const TensorView& b) {
    const auto& c = m.w_.cfg;
    m.per_token(ctx, n, [&](int64_t t) {
      ops::layernorm(xn() + t * c.dim, x() + t * c.dim, g.f32(), b.f32(), c.dim, c.norm_eps);
    });
  }
  // x <- norm(x) (post-norm), through xn.
  void rmsnorm_x(const TensorView& g) {
    const int64_t C = m.w_.cfg.dim;
    rmsnorm(g);
    m.per_token(ctx, n, [&](int64_t t) { std::copy(xn() + t * C, xn() + (t + 1) * C, x() + t * C); });
  }
  void layernorm_x(const TensorView& g, const TensorView& b) {
    const int64_t C = m.w_.cfg.dim;
    layernorm(g, b);
    m.per_token(ctx, n, [&](int64_t t) { std::copy(xn() + t * C, xn() + (t + 1) * C, x() + t * C); });
  }
  // Tensor parallelism: y (n, C), a row-parallel product's partial sums, summed over the ranks.
  void tp_sum(float* y) {
    if (m.tp_) m.tp_->sum(y, n * m.w_.cfg.dim);
  }
  void matmul(const float* X, std::initializer_list<MatmulOut> outs) {
    if (outs.size() == 1) return linear(ctx, Linear{outs.begin()->W, outs.begin()->b}, X, n, outs.begin()->Y);
    matmul_multi(ctx, X, n, outs);
  }
  void attention(int64_t l, float* q, float* k, float* v, int64_t q_stride, int64_t kv_stride) {
    m.per_token(ctx, n, [&](int64_t t) {
      m.prep_heads(l, m.cseq_[t], m.cpos_[t], q + t * q_stride, k + t * kv_stride, v + t * kv_stride, 0,
                   m.w_.cfg.cache_kv_heads());
    });
    m.attention(ctx, l, n, q, q_stride);
  }
  void residual(const float* y) {
    const int64_t C = m.w_.cfg.dim;
    m.per_token(ctx, n, [&](int64_t t) { ops::add(x() + t * C, y + t * C, C); });
  }
  float* gated(float* g, const float* u) {
    const int64_t H = m.w_.cfg.hidden_dim;
    m.per_token(ctx, n, [&](int64_t t) { gated_row(m.w_.cfg, ctx.isa, g + t * H, u + t * H, H); });
    return g;
  }
  float* ungated(float* h) {
    const int64_t H = m.w_.cfg.hidden_dim;
    m.per_token(ctx, n, [&](int64_t t) { ungated_row(m.w_.cfg, ctx.isa, h + t * H, H); });
    return h;
  }
  void moe(int64_t l, const float* in) { m.moe_rows(ctx, l, in, n); }
  template <class F>
  void rows(F&& f) { m.per_token(ctx, n, f); }
  template <class F>
  void items(int64_t cnt, F&& f) {
    const int nt = std::min(ctx.n_threads, m.max_threads_);
#pragma omp parallel for num_threads(nt) schedule(dynamic) if (nt > 1)
    for (int64_t i = 0; i < cnt; ++i) f(i, omp_get_thread_num());
  }
};

struct Model::TeamExec {
  Model& m;
  TeamThread& tt;
  int64_t n;           // rows (<= Model::kTeamRows)
  const int32_t* seq;  // (n) each row's sequence and position
  const int64_t* pos;
  float* xp;   // (n, C) this thread's residual stream
  float* xbp;  // (n, C) this thread's normalised input (and residual scratch)
  float* hs;   // (n, H) this thread's FFN activation

  void tp_sum(float*) {
    if (m.tp_) fail("internal: tensor parallelism runs on the regions' path");
  }
  int64_t n_rows() const { return n; }
  Isa isa() const { return tt.isa; }
  float* x() const { return xp; }
  float* xn() const { return xbp; }
  int64_t C() const { return m.w_.cfg.dim; }
  void rmsnorm(const TensorView& g) {
    const auto& c = m.w_.cfg;
    for (int64_t t = 0; t < n; ++t) ops::rmsnorm(tt.isa, xbp + t * c.dim, xp + t * c.dim, g.f32(), c.dim, c.norm_eps);
  }
  void layernorm(const TensorView& g, const TensorView& b) {
    const auto& c = m.w_.cfg;
    for (int64_t t = 0; t < n; ++t) ops::layernorm(xbp + t * c.dim, xp + t * c.dim, g.f32(), b.f32(), c.dim, c.norm_eps);
  }
  void rmsnorm_x(const TensorView& g) {
    rmsnorm(g);
    std::copy(xbp, xbp + n * C(), xp);
  }
  void layernorm_x(const TensorView& g, const TensorView& b) {
    layernorm(g, b);
    std::copy(xbp, xbp + n * C(), xp);
  }
  void matmul(const float* X, std::initializer_list<MatmulOut> outs) { team_matmul(tt, X, outs, n); }
  // Whole KV heads of every row per thread where they divide over the team (one barrier),
  // else row by row: either way a row's keys are in the cache before a later row of its sequence reads them.
  void attention(int64_t l, float* q, float* k, float* v, int64_t q_stride, int64_t kv_stride) {
    const int64_t od = m.w_.cfg.cache_out_dim();
    if (m.team_attention_rows(tt, l, n, seq, pos, q, k, v, q_stride, kv_stride, m.a_.att, od)) return;
    for (int64_t t = 0; t < n; ++t)
      m.team_attention(tt, l, seq[t], pos[t], q + t * q_stride, k + t * kv_stride, v + t * kv_stride, m.a_.att + t * od);
  }
  void residual(const float* y) { ops::add(xp, y, n * C()); }
  float* gated(const float* g, const float* u) {
    const int64_t H = m.w_.cfg.hidden_dim;
    for (int64_t t = 0; t < n; ++t) gated_row(m.w_.cfg, tt.isa, hs + t * H, g + t * H, u + t * H, H);
    return hs;
  }
  float* ungated(const float* h) {
    const int64_t H = m.w_.cfg.hidden_dim;
    for (int64_t t = 0; t < n; ++t) ungated_row(m.w_.cfg, tt.isa, hs + t * H, h + t * H, H);
    return hs;
  }
  void moe(int64_t l, const float* in) { m.moe_team(tt, l, in, xp, hs); }  // one row (team_rows_ok)
  // Per-row work on shared buffers: thread 0 does it, the others wait.
  template <class F>
  void rows(F&& f) {
    if (tt.rank == 0)
      for (int64_t t = 0; t < n; ++t) f(t);
    tt.barrier();
  }
  template <class F>
  void items(int64_t cnt, F&& f) {
    for (int64_t i = tt.rank; i < cnt; i += tt.size) f(i, tt.rank);
    tt.barrier();
  }
};

template <class Ex>
void Model::bottleneck(Ex& ex, int64_t l, int s) {
  if (bn_views_.empty()) return;
  const BnViews& b = bn_views_[size_t(l)][size_t(s)];
  if (b.down.empty()) return;
  const int64_t C = w_.cfg.dim, m = bn_->dim;
  const bool gelu = bn_->gelu;
  ex.matmul(a_.xb, {{&b.down, a_.bn_h, &b.down_b}});  // (m)
  const Isa isa = ex.isa();
  ex.rows([&](int64_t t) {
    if (gelu) ops::gelu(isa, a_.bn_h + t * m, m);
    else ops::relu(a_.bn_h + t * m, m);
  });
  ex.matmul(a_.bn_h, {{&b.up, a_.bn_o, &b.up_b}});  // (C)
  ex.rows([&](int64_t t) { ops::add(a_.xb + t * C, a_.bn_o + t * C, C); });
}

}  // namespace tessera
