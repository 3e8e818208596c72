#include "train/blocks.h"

#include "core/rng.h"
#include "kernels/act.h"
#include "kernels/gemm_bf16.h"
#include "kernels/norm.h"
#include "kernels/xent.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace tessera::train::blk {

namespace {
inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

// Column reductions over rows (bias and norm-gain gradients): each thread owns a
// block of columns and walks the rows in order, reading them contiguously; the
// sums do not depend on the thread count's scheduling.
template <class F>
void for_column_blocks(int64_t C, F&& f) {
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    f(C * id / nt, C * (id + 1) / nt);
  }
}
// The same with inner boundaries rounded up to whole 16-float vectors (for the AVX-512 column kernels).
template <class F>
void for_vector_column_blocks(int64_t C, F&& f) {
  for_column_blocks(C, [&](int64_t c0, int64_t c1) {
    const int64_t a = c0 == 0 ? 0 : std::min(C, (c0 + 15) / 16 * 16);
    const int64_t b = c1 == C ? C : std::min(C, (c1 + 15) / 16 * 16);
    if (a < b) f(a, b);
  });
}

// Y(N, O) += b(O) on every row; db(O) += the column sums of dY(N, O), rows in order.
template <class T>
void add_bias(T* Y, const T* b, int64_t N, int64_t O) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
#pragma omp simd  // Y and b never overlap
    for (int64_t o = 0; o < O; ++o) Y[n * O + o] += b[o];
}
template <class T>
void bias_grad(T* db, const T* dY, int64_t N, int64_t O) {
  for_column_blocks(O, [&](int64_t o0, int64_t o1) {
    for (int64_t n = 0; n < N; ++n)
#pragma omp simd  // db and dY never overlap
      for (int64_t o = o0; o < o1; ++o) db[o] += dY[n * O + o];
  });
}
}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C,
              int(ldc));
}
template <>
void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                  const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C,
              int(ldc));
}

template <class T>
void linear_fwd(T* Y, const T* X, const T* W, const T* b, int64_t N, int64_t I, int64_t O) {
  gemm<T>(false, true, N, O, I, T(1), X, I, W, I, T(0), Y, O);  // (N, I) x (O, I)^T
  if (b) add_bias(Y, b, N, O);
}

template <class T>
void linear_bwd(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t N, int64_t I, int64_t O,
                bool accumulate, bool dw_accumulate) {
  if (dX) gemm<T>(false, false, N, I, O, T(1), dY, O, W, I, accumulate ? T(1) : T(0), dX, I);  // (N,O)x(O,I)
  if (dW) gemm<T>(true, false, O, I, N, T(1), dY, O, X, I, dw_accumulate ? T(1) : T(0), dW, I);  // (O,N)x(N,I)
  if (db) bias_grad(db, dY, N, O);
}

namespace {
GemmOperand weight(const float* W, const uint16_t* W16, int64_t s_row, int64_t s_k) {
  return W16 ? GemmOperand{W16, true, s_row, s_k} : GemmOperand{W, false, s_row, s_k};
}
void gemm_fast(KernelContext& ctx, bool f32, const GemmOperand& A, const GemmOperand& B, int64_t M, int64_t N,
               int64_t K, float* C, int64_t ldc, bool accumulate) {
  if (f32) return gemm_f32(ctx, A, B, M, N, K, C, ldc, accumulate);
  gemm_bf16(ctx, A, B, M, N, K, C, ldc, accumulate);
}
}  // namespace

void linear_fwd_gemm(KernelContext& ctx, float* Y, const float* X, const float* W, const uint16_t* W16,
                     const float* b, int64_t N, int64_t I, int64_t O, bool f32, const uint32_t* w_packed,
                     bool accumulate) {
  GemmOperand B = weight(W, W16, I, 1);
  B.packed = w_packed, B.packed_n = O;
  gemm_fast(ctx, f32, GemmOperand{X, false, I, 1}, B, N, O, I, Y, O, accumulate);
  if (b) add_bias(Y, b, N, O);
}

void linear_bwd_gemm(KernelContext& ctx, float* dX, float* dW, float* db, const float* dY, const float* X,
                     const float* W, const uint16_t* W16, int64_t N, int64_t I, int64_t O,
                     const LinearBwdOptions& o) {
  // dX(N, I) = dY(N, O) W(O, I): B(i, o) = W[o * I + i]
  GemmOperand B = weight(W, W16, 1, I);
  B.packed = o.wt_packed, B.packed_n = I;
  if (dX) gemm_fast(ctx, o.f32, GemmOperand{dY, false, O, 1}, B, N, I, O, dX, I, o.accumulate);
  // dW(O, I) += (or =) dY^T X: A(o, n) = dY[n * O + o], B(i, n) = X[n * I + i]
  if (dW)
    gemm_fast(ctx, o.f32, GemmOperand{dY, false, 1, O}, GemmOperand{X, false, 1, I}, O, I, N, dW, I, o.dw_accumulate);
  if (db) bias_grad(db, dY, N, O);
}

template <class T>
void embed_fwd(T* x, const T* E, const T* P, const int32_t* tok, int64_t N, int64_t T_, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* e = E + int64_t(tok[n]) * C;
    const T* p = P ? P + (n % T_) * C : nullptr;
    for (int64_t c = 0; c < C; ++c) x[n * C + c] = e[c] + (p ? p[c] : T(0));
  }
}

template <class T>
void embed_bwd(T* dE, T* dP, const T* dx, const int32_t* tok, int64_t N, int64_t T_, int64_t C) {
  // Columns are split between threads; every thread walks all rows in order.
  for_column_blocks(C, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      T* e = dE + int64_t(tok[n]) * C;
      T* p = dP ? dP + (n % T_) * C : nullptr;
      for (int64_t c = c0; c < c1; ++c) {
        e[c] += dx[n * C + c];
        if (p) p[c] += dx[n * C + c];
      }
    }
  });
}

template <class T>
void rmsnorm_fwd(T* y, T* rstd, const T* x, const T* w, int64_t N, int64_t C, T eps, Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512) {
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) rstd[n] = cpu::avx512::rmsnorm_row(y + n * C, x + n * C, w, C, eps);
      return;
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    T ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
    const T r = T(1) / std::sqrt(ss / T(C) + eps);
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) y[n * C + c] = xr[c] * r * w[c];
  }
}

template <class T>
void rmsnorm_bwd(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t N, int64_t C,
                 bool accumulate, Isa isa) {
  // y = x r w, r = (mean(x^2) + eps)^-1/2: dx = r (dy w) - x r^3 / C * sum(dy w x).
  // dw first: dx may alias dy (each row of dy is read before that row of dx is written).
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512) {
      if (dw)
        for_vector_column_blocks(C, [&](int64_t a, int64_t b) { cpu::avx512::rmsnorm_dw(dw, dy, x, rstd, N, C, a, b); });
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        cpu::avx512::rmsnorm_bwd_row(dx + n * C, dy + n * C, x + n * C, w, rstd[n], C, accumulate);
      return;
    }
  }
  if (dw)
    for_column_blocks(C, [&](int64_t c0, int64_t c1) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = c0; c < c1; ++c) dw[c] += dy[n * C + c] * x[n * C + c] * rstd[n];
    });
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T *xr = x + n * C, *g = dy + n * C;
    const T r = rstd[n];
    T s = 0;
    for (int64_t c = 0; c < C; ++c) s += g[c] * w[c] * xr[c];
    const T k = s * r * r * r / T(C);
    T* o = dx + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const T v = r * g[c] * w[c] - k * xr[c];
      o[c] = accumulate ? o[c] + v : v;
    }
  }
}

template <class T>
void layernorm_fwd(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t C, T eps,
                   Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512) {
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        rstd[n] = cpu::avx512::layernorm_row(y + n * C, x + n * C, w, b, C, eps, mean + n);
      return;
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    T m = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= T(C);
    T v = 0;
    for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
    const T r = T(1) / std::sqrt(v / T(C) + eps);
    mean[n] = m, rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) y[n * C + c] = (xr[c] - m) * r * w[c] + b[c];
  }
}

template <class T>
void layernorm_bwd(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean, const T* rstd,
                   int64_t N, int64_t C, bool accumulate, Isa isa) {
  // xh = (x - m) r; dxh = dy w; dx = r (dxh - mean(dxh) - xh mean(dxh xh))
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512) {
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        cpu::avx512::layernorm_bwd_row(dx + n * C, dy + n * C, x + n * C, w, mean[n], rstd[n], C, accumulate);
      if (dw)
        for_vector_column_blocks(
            C, [&](int64_t a, int64_t b) { cpu::avx512::layernorm_dwdb(dw, db, dy, x, mean, rstd, N, C, a, b); });
      return;
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T *xr = x + n * C, *g = dy + n * C;
    const T m = mean[n], r = rstd[n];
    T s1 = 0, s2 = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T d = g[c] * w[c];
      s1 += d;
      s2 += d * (xr[c] - m) * r;
    }
    s1 /= T(C), s2 /= T(C);
    T* o = dx + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const T v = r * (g[c] * w[c] - s1 - (xr[c] - m) * r * s2);
      o[c] = accumulate ? o[c] + v : v;
    }
  }
  if (!dw) return;
  for_column_blocks(C, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        dw[c] += dy[n * C + c] * (x[n * C + c] - mean[n]) * rstd[n];
        db[c] += dy[n * C + c];
      }
  });
}

template <class T>
void rope(T* x, int64_t N, int64_t T_, int64_t n_heads, int64_t hd, int64_t stride, const float* cos_t,
          const float* sin_t, ops::RopeStyle style, bool inverse, int64_t head_stride) {
  const int64_t half = hd / 2, hs = head_stride > 0 ? head_stride : hd;
  const T sgn = inverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* cr = cos_t + (n % T_) * half;
    const float* sr = sin_t + (n % T_) * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      T* v = x + n * stride + h * hs;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = style == ops::RopeStyle::Interleaved ? 2 * i : i;
        const int64_t b = style == ops::RopeStyle::Interleaved ? 2 * i + 1 : i + half;
        const T c = T(cr[i]), s = sgn * T(sr[i]);
        const T x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
      }
    }
  }
}

// Attention runs per (batch, head) on single-threaded BLAS calls inside the
// OpenMP loop (OpenBLAS does not nest), in causal row blocks of s.block_rows
// queries: block [i0, i1) needs keys [klo, i1) only (klo: the first key any of
// its rows sees), so S = Q K^T and O = P V skip the masked part. Only each
// row's log-sum-exp is saved (FlashAttention): the probabilities of a block
// live in per-thread scratch, and the backward recomputes them from q, k and
// the log-sum-exp, so attention memory grows with T, not T^2.
namespace {
// The first key query i of sequence b sees (a sliding window's start, its packed segment's).
int64_t first_key(const AttnShape& s, int64_t b, int64_t i) {
  int64_t lo = s.pattern ? s.pattern->first_key(i) : s.window > 0 && i >= s.window ? i - s.window + 1 : 0;
  if (s.seg) lo = std::max<int64_t>(lo, s.seg[b * s.T + i]);
  return lo;
}
// Row i's raw scores, soft-capped in place: x -> cap tanh(x / cap).
template <class T>
void cap_row(T* p, int64_t n, T cap) {
  for (int64_t j = 0; j < n; ++j) p[j] = cap * std::tanh(p[j] / cap);
}
// A sparse pattern: query head h's row i's scores p[j] for keys klo + j, j in [lo, n), that it hides -> -inf.
template <class T>
void mask_row(const AttnShape& s, int64_t h, int64_t i, int64_t klo, T* p, int64_t lo, int64_t n) {
  if (!s.pattern) return;
  if (s.mask) {
    const uint8_t* m = s.mask + h * s.mask_head_stride + i * s.T + klo;
    for (int64_t j = lo; j < n; ++j)
      if (!m[j]) p[j] = -INFINITY;
    return;
  }
  for (int64_t j = lo; j < n; ++j)
    if (!s.pattern->sees(i, klo + j, h)) p[j] = -INFINITY;
}
}  // namespace

template <class T>
void attention_fwd(T* out, T* lse, const T* q, const T* k, const T* v, const AttnShape& s, T* scratch) {
  const int64_t Tn = s.T, hd = s.hd, grp = s.n_heads / s.n_kv_heads, od = s.n_heads * hd, R = s.block_rows;
  const T scale = T(1) / std::sqrt(T(hd)), cap = T(s.softcap);
  const bool vec = s.isa == Isa::AVX512 && !s.pattern;  // float rows on the AVX-512 kernel (kernels/act.h)
#pragma omp parallel
  {
    T* S = scratch + int64_t(omp_get_thread_num()) * attention_scratch(Tn, R);  // (R, <= T)
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.n_heads; ++h) {
        const int64_t kh = h / grp;
        const T* Q = q + b * Tn * s.q_stride + h * hd;    // (T, hd) rows of q_stride
        const T* K = k + b * Tn * s.kv_stride + kh * hd;  // (T, hd) rows of kv_stride
        const T* Vv = v + b * Tn * s.kv_stride + kh * hd;
        T* L = lse + (b * s.n_heads + h) * Tn;            // (T)
        for (int64_t i0 = 0; i0 < Tn; i0 += R) {
          const int64_t i1 = std::min(Tn, i0 + R), klo = first_key(s, b, i0), m = i1 - klo;
          gemm<T>(false, true, i1 - i0, m, hd, scale, Q + i0 * s.q_stride, s.q_stride, K + klo * s.kv_stride,
                  s.kv_stride, T(0), S, m);  // S[i0:i1, klo:i1]
          for (int64_t i = i0; i < i1; ++i) {
            T* p = S + (i - i0) * m;
            const int64_t lo = first_key(s, b, i) - klo, n = i + 1 - klo;  // row i sees columns [lo, n)
            for (int64_t j = 0; j < lo; ++j) p[j] = 0;
            if (cap > 0) cap_row(p + lo, n - lo, cap);
            mask_row(s, h, i, klo, p, lo, n);
            if constexpr (std::is_same_v<T, float>) {
              if (vec) {
                L[i] = cpu::avx512::softmax_row(p + lo, n - lo, m - lo);
                continue;
              }
            }
            T mx = -INFINITY;
            for (int64_t j = lo; j < n; ++j) mx = std::max(mx, p[j]);
            T sum = 0;
            for (int64_t j = lo; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
            const T inv = T(1) / sum;
            for (int64_t j = lo; j < n; ++j) p[j] *= inv;
            for (int64_t j = n; j < m; ++j) p[j] = 0;
            L[i] = mx + std::log(sum);
          }
          gemm<T>(false, false, i1 - i0, hd, m, T(1), S, m, Vv + klo * s.kv_stride, s.kv_stride, T(0),
                  out + (b * Tn + i0) * od + h * hd, od);  // O[i0:i1] = P V[klo:i1]
        }
      }
  }
}

template <class T>
void attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* lse, const T* q, const T* k, const T* v,
                   const AttnShape& s, T* scratch, const T* delta) {
  const int64_t Tn = s.T, hd = s.hd, grp = s.n_heads / s.n_kv_heads, od = s.n_heads * hd, R = s.block_rows;
  const T scale = T(1) / std::sqrt(T(hd)), cap = T(s.softcap);
  const bool vec = s.isa == Isa::AVX512 && !s.pattern;
  // One task per (batch, kv head): it owns dk/dv of that head, and dq of its query heads.
#pragma omp parallel
  {
    T* Pb = scratch + int64_t(omp_get_thread_num()) * attention_scratch(Tn, R);  // (R, <= T) probabilities
    T* dS = Pb + R * Tn;                                                          // (R, <= T) dP, then dS
    T* raw = dS + R * Tn;                                                         // (R, <= T) capped: tanh(S/cap)
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t kh = 0; kh < s.n_kv_heads; ++kh) {
        const T* K = k + b * Tn * s.kv_stride + kh * hd;
        const T* Vv = v + b * Tn * s.kv_stride + kh * hd;
        T* dK = dk + b * Tn * s.kv_stride + kh * hd;
        T* dV = dv + b * Tn * s.kv_stride + kh * hd;
        for (int64_t j = 0; j < Tn; ++j)
          for (int64_t e = 0; e < hd; ++e) dK[j * s.kv_stride + e] = 0, dV[j * s.kv_stride + e] = 0;
        for (int64_t h = kh * grp; h < (kh + 1) * grp; ++h) {
          const T* L = lse + (b * s.n_heads + h) * Tn;
          const T* D = delta ? delta + (b * s.n_heads + h) * Tn : nullptr;  // rowsum(dO o) given: keys beyond these too
          const T* dO = dout + b * Tn * od + h * hd;
          const T* Q = q + b * Tn * s.q_stride + h * hd;
          T* dQ = dq + b * Tn * s.q_stride + h * hd;
          for (int64_t i0 = 0; i0 < Tn; i0 += R) {
            const int64_t i1 = std::min(Tn, i0 + R), n = i1 - i0, klo = first_key(s, b, i0), m = i1 - klo;
            const T* dOb = dO + i0 * od;
            const T* Qb = Q + i0 * s.q_stride;
            const T* Kb = K + klo * s.kv_stride;
            // P = exp(cap(scale Q K^T) - lse), recomputed; the raw tanh kept for the soft-cap's derivative.
            gemm<T>(false, true, n, m, hd, scale, Qb, s.q_stride, Kb, s.kv_stride, T(0), Pb, m);
            for (int64_t i = i0; i < i1; ++i) {
              T* p = Pb + (i - i0) * m;
              const int64_t lo = first_key(s, b, i) - klo, e = i + 1 - klo;
              for (int64_t j = 0; j < lo; ++j) p[j] = 0;
              if (cap > 0) {
                T* t = raw + (i - i0) * m;
                for (int64_t j = lo; j < e; ++j) t[j] = std::tanh(p[j] / cap), p[j] = cap * t[j];
              }
              mask_row(s, h, i, klo, p, lo, e);
              if constexpr (std::is_same_v<T, float>) {
                if (vec) {
                  cpu::avx512::exp_shift_row(p + lo, e - lo, m - lo, L[i]);
                  continue;
                }
              }
              for (int64_t j = lo; j < e; ++j) p[j] = std::exp(p[j] - L[i]);
              for (int64_t j = e; j < m; ++j) p[j] = 0;
            }
            gemm<T>(true, false, m, hd, n, T(1), Pb, m, dOb, od, T(1), dV + klo * s.kv_stride, s.kv_stride);  // dV += P^T dO
            gemm<T>(false, true, n, m, hd, T(1), dOb, od, Vv + klo * s.kv_stride, s.kv_stride, T(0), dS, m);  // dP = dO V^T
            for (int64_t i = i0; i < i1; ++i) {  // dS = softmax backward (and the soft-cap's), times scale
              const T* p = Pb + (i - i0) * m;
              T* d = dS + (i - i0) * m;
              const int64_t lo = first_key(s, b, i) - klo, e = i + 1 - klo;
              for (int64_t j = 0; j < lo; ++j) d[j] = 0;
              if constexpr (std::is_same_v<T, float>) {
                if (vec && !(cap > 0) && !D) {
                  cpu::avx512::softmax_bwd_row(p + lo, d + lo, e - lo, m - lo, scale);
                  continue;
                }
              }
              T dot_sum = 0;
              if (D) {
                dot_sum = D[i];
              } else {
                for (int64_t j = lo; j < e; ++j) dot_sum += p[j] * d[j];
              }
              for (int64_t j = lo; j < e; ++j) {
                T g = p[j] * (d[j] - dot_sum);  // d loss / d (capped) score
                if (cap > 0) {
                  const T t = raw[(i - i0) * m + j];
                  g *= T(1) - t * t;
                }
                d[j] = g * scale;
              }
              for (int64_t j = e; j < m; ++j) d[j] = 0;
            }
            gemm<T>(false, false, n, hd, m, T(1), dS, m, Kb, s.kv_stride, T(0), dQ + i0 * s.q_stride, s.q_stride);  // dQ = dS K
            gemm<T>(true, false, m, hd, n, T(1), dS, m, Qb, s.q_stride, T(1), dK + klo * s.kv_stride, s.kv_stride);  // dK += dS^T Q
          }
        }
      }
  }
}

namespace {
// The first prefix row query i sees: with a sliding window W, the prefix sits at positions
// [0, P) and query i at P + i, so it sees prefix rows j > P + i - W (as a cache of P + i
// positions would); without a window, all of them.
int64_t prefix_first_key(const AttnShape& s, int64_t P, int64_t i) {
  return s.window > 0 ? std::max<int64_t>(0, P + i - s.window + 1) : 0;
}
}  // namespace

template <class T>
void attention_delta(T* delta, const T* dout, const T* out, const AttnShape& s) {
  const int64_t Tn = s.T, hd = s.hd, od = s.n_heads * hd;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.n_heads; ++h)
      for (int64_t i = 0; i < Tn; ++i) {
        const T* a = dout + (b * Tn + i) * od + h * hd;
        const T* o = out + (b * Tn + i) * od + h * hd;
        T d = 0;
        for (int64_t e = 0; e < hd; ++e) d += a[e] * o[e];
        delta[(b * s.n_heads + h) * Tn + i] = d;
      }
}

// The prefix keys in blocks of block_rows queries per (sequence, head): S = scale Q Pk^T
// (rows, P), capped, its own log-sum-exp l2 and output o2 = softmax(S) Pv, merged into the
// causal part's (out, lse) by the log-sum-exp rule.
template <class T>
void prefix_attention_fwd(T* out, T* lse, const T* q, const T* pk, const T* pv, int64_t P, const AttnShape& s,
                          T* scratch) {
  const int64_t Tn = s.T, hd = s.hd, grp = s.n_heads / s.n_kv_heads, od = s.n_heads * hd, R = s.block_rows;
  const int64_t pstride = s.n_kv_heads * hd;
  const T scale = T(1) / std::sqrt(T(hd)), cap = T(s.softcap);
#pragma omp parallel
  {
    T* S = scratch + int64_t(omp_get_thread_num()) * attention_scratch(std::max(Tn, P), R);  // (R, P)
    T* A = S + R * P;                                                                     // (R, 2) merge weights
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.n_heads; ++h) {
        const int64_t kh = h / grp;
        const T* Q = q + b * Tn * s.q_stride + h * hd;
        T* L = lse + (b * s.n_heads + h) * Tn;
        for (int64_t i0 = 0; i0 < Tn; i0 += R) {
          const int64_t n = std::min(Tn, i0 + R) - i0;
          gemm<T>(false, true, n, P, hd, scale, Q + i0 * s.q_stride, s.q_stride, pk + kh * hd, pstride, T(0), S, P);
          for (int64_t i = 0; i < n; ++i) {
            T* p = S + i * P;
            const int64_t lo = prefix_first_key(s, P, i0 + i);  // prefix rows before it are outside a window
            for (int64_t j = 0; j < std::min(lo, P); ++j) p[j] = 0;
            if (lo >= P) {  // none visible: the causal part alone
              A[2 * i] = 0, A[2 * i + 1] = 1;
              continue;
            }
            if (cap > 0) cap_row(p + lo, P - lo, cap);
            T mx = -INFINITY;
            for (int64_t j = lo; j < P; ++j) mx = std::max(mx, p[j]);
            T sum = 0;
            for (int64_t j = lo; j < P; ++j) sum += (p[j] = std::exp(p[j] - mx));
            for (int64_t j = lo; j < P; ++j) p[j] /= sum;
            const T l2 = mx + std::log(sum), l1 = L[i0 + i];
            const T l = std::max(l1, l2) + std::log1p(std::exp(-std::abs(l1 - l2)));
            L[i0 + i] = l;
            A[2 * i] = std::exp(l2 - l), A[2 * i + 1] = std::exp(l1 - l);  // the two parts' weights
          }
          for (int64_t i = 0; i < n; ++i) {  // o = a1 o1 + a2 (P Pv)
            const T a2 = A[2 * i], a1 = A[2 * i + 1];
            if (a2 == T(0)) continue;
            T* o = out + (b * Tn + i0 + i) * od + h * hd;
            for (int64_t e = 0; e < hd; ++e) o[e] *= a1;
            const T* p = S + i * P;
            for (int64_t j = 0; j < P; ++j) {
              const T w = a2 * p[j];
              const T* vr = pv + j * pstride + kh * hd;
              for (int64_t e = 0; e < hd; ++e) o[e] += w * vr[e];
            }
          }
        }
      }
  }
}

// The prefix part's backward with the merged lse and delta: P = exp(cap(S) - lse),
// dPv += P^T dO, dS = P (dO Pv^T - delta) (times the cap's derivative and the scale),
// dq += dS Pk, dPk += dS^T Q. One task per KV head (it owns dPk / dPv of that head's columns).
template <class T>
void prefix_attention_bwd(T* dq, T* dpk, T* dpv, const T* dout, const T* lse, const T* delta, const T* q,
                          const T* pk, const T* pv, int64_t P, const AttnShape& s, T* scratch) {
  const int64_t Tn = s.T, hd = s.hd, grp = s.n_heads / s.n_kv_heads, od = s.n_heads * hd, R = s.block_rows;
  const int64_t pstride = s.n_kv_heads * hd;
  const T scale = T(1) / std::sqrt(T(hd)), cap = T(s.softcap);
#pragma omp parallel
  {
    T* Pb = scratch + int64_t(omp_get_thread_num()) * attention_scratch(std::max(Tn, P), R);  // (R, P)
    T* dS = Pb + R * P;
    T* raw = dS + R * P;
#pragma omp for schedule(static)
    for (int64_t kh = 0; kh < s.n_kv_heads; ++kh)
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t h = kh * grp; h < (kh + 1) * grp; ++h) {
          const T* L = lse + (b * s.n_heads + h) * Tn;
          const T* D = delta + (b * s.n_heads + h) * Tn;
          const T* Q = q + b * Tn * s.q_stride + h * hd;
          T* dQ = dq + b * Tn * s.q_stride + h * hd;
          const T* dO = dout + b * Tn * od + h * hd;
          for (int64_t i0 = 0; i0 < Tn; i0 += R) {
            const int64_t n = std::min(Tn, i0 + R) - i0;
            gemm<T>(false, true, n, P, hd, scale, Q + i0 * s.q_stride, s.q_stride, pk + kh * hd, pstride, T(0), Pb, P);
            for (int64_t i = 0; i < n; ++i) {
              T* p = Pb + i * P;
              const int64_t lo = std::min(prefix_first_key(s, P, i0 + i), P);
              for (int64_t j = 0; j < lo; ++j) p[j] = 0, raw[i * P + j] = 0;
              for (int64_t j = lo; j < P; ++j) {
                if (cap > 0) raw[i * P + j] = std::tanh(p[j] / cap), p[j] = cap * raw[i * P + j];
                p[j] = std::exp(p[j] - L[i0 + i]);
              }
            }
            gemm<T>(true, false, P, hd, n, T(1), Pb, P, dO + i0 * od, od, T(1), dpv + kh * hd, pstride);  // dPv += P^T dO
            gemm<T>(false, true, n, P, hd, T(1), dO + i0 * od, od, pv + kh * hd, pstride, T(0), dS, P);   // dP = dO Pv^T
            for (int64_t i = 0; i < n; ++i)
              for (int64_t j = 0; j < P; ++j) {
                T g = Pb[i * P + j] * (dS[i * P + j] - D[i0 + i]);
                if (cap > 0) g *= T(1) - raw[i * P + j] * raw[i * P + j];
                dS[i * P + j] = g * scale;
              }
            gemm<T>(false, false, n, hd, P, T(1), dS, P, pk + kh * hd, pstride, T(1), dQ + i0 * s.q_stride, s.q_stride);  // dq += dS Pk
            gemm<T>(true, false, P, hd, n, T(1), dS, P, Q + i0 * s.q_stride, s.q_stride, T(1), dpk + kh * hd, pstride);  // dPk += dS^T Q
          }
        }
  }
}

namespace {
// Runs f(i0, i1) over chunks of [0, n) in parallel (for the per-ISA kernels).
template <class F>
void chunked(int64_t n, F&& f) {
  constexpr int64_t kChunk = 8192;
#pragma omp parallel for schedule(static)
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) f(i0, std::min(n, i0 + kChunk));
}
}  // namespace

template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t n, Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512)
      return chunked(n, [&](int64_t a, int64_t b) { cpu::avx512::swiglu_fwd(h + a, g + a, u + a, b - a); });
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) h[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
}

template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n, Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512)
      return chunked(n, [&](int64_t a, int64_t b) { cpu::avx512::swiglu_bwd(dg + a, du + a, dh + a, g + a, u + a, b - a); });
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T sg = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * sg;
    du[i] = dh[i] * silu;
    dg[i] = dh[i] * u[i] * sg * (T(1) + g[i] * (T(1) - sg));
  }
}

template <class T>
void gelu_fwd(T* y, const T* x, int64_t n, Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512) return chunked(n, [&](int64_t a, int64_t b) { cpu::avx512::gelu_fwd(y + a, x + a, b - a); });
  }
  const T c = std::sqrt(T(2) / T(M_PI));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    y[i] = T(0.5) * v * (T(1) + std::tanh(c * (v + T(0.044715) * v * v * v)));
  }
}

template <class T>
void gelu_bwd(T* dx, const T* dy, const T* x, int64_t n, Isa isa) {
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::AVX512)
      return chunked(n, [&](int64_t a, int64_t b) { cpu::avx512::gelu_bwd(dx + a, dy + a, x + a, b - a); });
  }
  const T c = std::sqrt(T(2) / T(M_PI));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const T t = std::tanh(c * (v + T(0.044715) * v * v * v));
    const T dt = (T(1) - t * t) * c * (T(1) + T(3 * 0.044715) * v * v);
    dx[i] = dy[i] * T(0.5) * ((T(1) + t) + v * dt);
  }
}

template <class T>
void geglu_fwd(T* h, const T* g, const T* u, int64_t n, Isa isa) {
  gelu_fwd(h, g, n, isa);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) h[i] *= u[i];
}

template <class T>
void geglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n, Isa isa) {
  // du = dh gelu(g); dg = gelu'(g) (dh u). dg holds gelu(g), then dh u, on the way.
  gelu_fwd(dg, g, n, isa);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) du[i] = dh[i] * dg[i], dg[i] = dh[i] * u[i];
  gelu_bwd(dg, dg, g, n, isa);
}

template <class T>
void relu_fwd(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

template <class T>
void relu_bwd(T* dx, const T* dy, const T* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
}

template <class T>
void add(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <class T>
void dropout(T* x, int64_t n, float p, uint64_t key) {
  if (p <= 0.f) return;
  const T keep_scale = T(1) / (T(1) - T(p));
  const uint64_t threshold = uint64_t(double(p) * 18446744073709551616.0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t z = splitmix64(key + uint64_t(i) * 0x9e3779b97f4a7c15ull);
    x[i] = z >= threshold ? x[i] * keep_scale : T(0);
  }
}

template <class T>
CeResult cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, const CeOptions& o) {
  // Per-row terms, summed in row order afterwards (deterministic for any thread count).
  std::vector<double> own(o.row_scratch ? 0 : size_t(2 * N));
  double* nll = o.row_scratch ? o.row_scratch : own.data();
  double* zz = nll + N;
  const T cap = T(o.softcap), alpha = T(o.z_loss);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* z = logits + n * V;
    const int32_t t = targets[n];
    if (t < 0) {
      for (int64_t v = 0; v < V; ++v) z[v] = 0;
      nll[n] = zz[n] = 0;
      continue;
    }
    const float row_scale = o.row_weight ? o.scale * o.row_weight[n] : o.scale;
    const T scale = T(row_scale);
    if constexpr (std::is_same_v<T, float>) {
      if (o.isa != Isa::Scalar && !(cap > 0)) {  // vectorised row (kernels/xent.h)
        const double zt0 = z[t];
        const float lse = xent_row(o.isa, z, V, t, o.z_loss, row_scale);
        nll[n] = double(lse) - zt0, zz[n] = double(lse) * double(lse);
        continue;
      }
    }
    if (cap > 0)
      for (int64_t v = 0; v < V; ++v) z[v] = cap * std::tanh(z[v] / cap);
    T mx = z[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, z[v]);
    const T zt = z[t];
    if (cap > 0) {  // the capped logits are needed again for the cap's chain rule: two exps per logit
      T sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
      const T lse = mx + std::log(sum);
      nll[n] = double(lse - zt), zz[n] = double(lse) * double(lse);
      const T k = T(1) + T(2) * alpha * lse;
      for (int64_t v = 0; v < V; ++v) {
        const T zc = z[v];
        const T g = std::exp(zc - lse) * k - (v == t ? T(1) : T(0));
        z[v] = g * (T(1) - (zc / cap) * (zc / cap)) * scale;
      }
      continue;
    }
    // One exp per logit: z <- exp(z - mx), then the gradient from it.
    T sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += (z[v] = std::exp(z[v] - mx));
    const T lse = mx + std::log(sum);
    nll[n] = double(lse - zt), zz[n] = double(lse) * double(lse);
    // d/dz [lse - z_t + alpha lse^2] = softmax (1 + 2 alpha lse) - onehot
    const T k = (T(1) + T(2) * alpha * lse) / sum * scale;
    for (int64_t v = 0; v < V; ++v) z[v] *= k;
    z[t] -= scale;
  }
  CeResult r;
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] >= 0) r.loss_sum += nll[n], r.z_sum += zz[n], ++r.count;
  return r;
}

#define TESSERA_BLOCKS(T)                                                                                         \
  template void linear_fwd<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);                      \
  template void linear_bwd<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, bool, bool);   \
  template void embed_fwd<T>(T*, const T*, const T*, const int32_t*, int64_t, int64_t, int64_t);                 \
  template void embed_bwd<T>(T*, T*, const T*, const int32_t*, int64_t, int64_t, int64_t);                       \
  template void rmsnorm_fwd<T>(T*, T*, const T*, const T*, int64_t, int64_t, T, Isa);                            \
  template void rmsnorm_bwd<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t, bool, Isa);     \
  template void layernorm_fwd<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, T, Isa);            \
  template void layernorm_bwd<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, \
                                 bool, Isa);                                                                     \
  template void rope<T>(T*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*,             \
                        ops::RopeStyle, bool, int64_t);                                                          \
  template void attention_fwd<T>(T*, T*, const T*, const T*, const T*, const AttnShape&, T*);                    \
  template void attention_bwd<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const AttnShape&, \
                                   T*, const T*);                                                                \
  template void attention_delta<T>(T*, const T*, const T*, const AttnShape&);                                   \
  template void prefix_attention_fwd<T>(T*, T*, const T*, const T*, const T*, int64_t, const AttnShape&, T*);    \
  template void prefix_attention_bwd<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                        int64_t, const AttnShape&, T*);                                         \
  template void swiglu_fwd<T>(T*, const T*, const T*, int64_t, Isa);                                             \
  template void swiglu_bwd<T>(T*, T*, const T*, const T*, const T*, int64_t, Isa);                               \
  template void gelu_fwd<T>(T*, const T*, int64_t, Isa);                                                         \
  template void gelu_bwd<T>(T*, const T*, const T*, int64_t, Isa);                                               \
  template void geglu_fwd<T>(T*, const T*, const T*, int64_t, Isa);                                              \
  template void geglu_bwd<T>(T*, T*, const T*, const T*, const T*, int64_t, Isa);                                \
  template void relu_fwd<T>(T*, const T*, int64_t);                                                              \
  template void relu_bwd<T>(T*, const T*, const T*, int64_t);                                                    \
  template void add<T>(T*, const T*, int64_t);                                                                   \
  template void dropout<T>(T*, int64_t, float, uint64_t);                                                        \
  template CeResult cross_entropy<T>(T*, const int32_t*, int64_t, int64_t, const CeOptions&);

TESSERA_BLOCKS(float)
TESSERA_BLOCKS(double)

}  // namespace tessera::train::blk
