// F32 / F16 / BF16 matrix-vector kernels (X stays f32), written once over a
// vector traits type and instantiated by matvec_float_avx2.cpp and
// matvec_float_avx512.cpp, each compiled with its own flags. Include only from
// those files, inside their ISA namespace's anonymous namespace, after
// tiling.h and the traits (V256 / V512: D::W, reg, zero, fmadd, reduce_add,
// load / load_h / load_bf16 and their first-n forms load_n / load_h_n / load_bf16_n).
//
// A tile of R weight rows times C activation rows: every weight vector loaded
// is used C times and every activation vector R times (C <= kFloatCMax: the
// accumulators and the C activation vectors fit the ISA's registers).
// Bandwidth bound for M == 1. Software prefetch runs one tile ahead: while a
// tile streams rows [n, n + R), one prefetch per cache line and row fetches
// rows [n + R, n + 2R); the hardware prefetcher alone does not keep up with
// several row streams (the gains measured: docs/perf-log.md).
#pragma once

// Weight loaders: D::W elements at p (or the first n) as f32.
template <class D>
struct LoadF32 {
  using T = float;
  static typename D::reg load(const T* p) { return D::load(p); }
  static typename D::reg load_n(const T* p, int n) { return D::load_n(p, n); }
};
template <class D>
struct LoadF16 {
  using T = uint16_t;
  static typename D::reg load(const T* p) { return D::load_h(p); }
  static typename D::reg load_n(const T* p, int n) { return D::load_h_n(p, n); }
};
template <class D>
struct LoadBF16 {
  using T = uint16_t;
  static typename D::reg load(const T* p) { return D::load_bf16(p); }
  static typename D::reg load_n(const T* p, int n) { return D::load_bf16_n(p, n); }
};

template <class D>
constexpr int kFloatCMax = D::W == 16 ? 4 : 2;  // 32 zmm / 16 ymm registers

// Y[c, n0 + r] for r < R, c < C; w points at row n0 of W, x at row 0 of this C-group.
template <class D, class L, int R, int C>
void float_tile(const typename L::T* w, int64_t K, const float* x, float* y, int64_t N) {
  using reg = typename D::reg;
  constexpr int W = D::W;
  reg acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = D::zero();
  // x at k (W, or the first n < W elements) against the R weight rows.
  auto step = [&](int64_t k, int n) __attribute__((always_inline)) {
    reg xv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = n == W ? D::load(x + c * K + k) : D::load_n(x + c * K + k, n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const reg wv = n == W ? L::load(w + r * K + k) : L::load_n(w + r * K + k, n);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = D::fmadd(wv, xv[c], acc[r][c]);
    }
  };
  // Steps of one cache line of weights: one prefetch per line and row.
  constexpr int64_t kLine = 64 / sizeof(typename L::T), kSub = kLine / W;
  int64_t k = 0;
  for (; k + kLine <= K; k += kLine) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * K + k), _MM_HINT_T0);
#pragma GCC unroll 4
    for (int64_t s = 0; s < kSub; ++s) step(k + W * s, W);
  }
  for (; k + W <= K; k += W) step(k, W);
  if (k < K) step(k, int(K - k));
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = D::reduce_add(acc[r][c]);
}

template <class D, class L>
void matvec_float(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const auto* w = static_cast<const typename L::T*>(a.W->data);
  for_each_tile<4, kFloatCMax<D>>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()),
                                  [&]<int R>(int64_t n, int64_t m, int c) {
                                    const float* x = a.X + m * K;
                                    float* y = a.Y + m * N + n;
                                    if constexpr (kFloatCMax<D> >= 4) {
                                      if (c == 4) return float_tile<D, L, R, 4>(w + n * K, K, x, y, N);
                                      if (c == 3) return float_tile<D, L, R, 3>(w + n * K, K, x, y, N);
                                    }
                                    if (c == 2) return float_tile<D, L, R, 2>(w + n * K, K, x, y, N);
                                    float_tile<D, L, R, 1>(w + n * K, K, x, y, N);
                                  });
}
