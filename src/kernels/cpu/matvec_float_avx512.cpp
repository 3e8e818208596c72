// AVX-512 matrix-vector kernels for F32 / F16 / BF16 weights (X stays f32).
// A tile of R weight rows times C activation rows: every weight vector loaded
// is used C times and every activation vector R times. Bandwidth bound for
// M == 1; the K tail is handled with masked loads.
#include "kernels/cpu/simd.h"

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"

namespace tessera::cpu::avx512 {
namespace {

// Software prefetch: one tile ahead (rows n + R .. n + 2R), as in matvec_float_avx2.cpp.

// Weight loaders: 16 elements at p (optionally the first `n` only) as f32.
struct LoadF32 {
  using T = float;
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static __m512 load_tail(const T* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct LoadF16 {
  using T = uint16_t;
  static __m512 load(const T* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load_tail(const T* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
};
struct LoadBF16 {
  using T = uint16_t;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 load(const T* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load_tail(const T* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

// Y[c, n0 + r] for r < R, c < C; w points at row n0 of W, x at row 0 of this C-group.
template <class L, int R, int C>
void tile(const typename L::T* w, int64_t K, const float* x, float* y, int64_t N) {
  __m512 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  // Steps of one cache line of weights (16 f32 or 32 f16 / bf16 elements): one
  // prefetch per line and row.
  constexpr int64_t kLine = 64 / sizeof(typename L::T), kSub = kLine / 16;
  int64_t k = 0;
  for (; k + kLine <= K; k += kLine) {
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * K + k), _MM_HINT_T0);
    #pragma GCC unroll 2
    for (int64_t s = 0; s < kSub; ++s) {
      __m512 xv[C];
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(x + c * K + k + 16 * s);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 wv = L::load(w + r * K + k + 16 * s);
        #pragma GCC unroll 8
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
      }
    }
  }
  for (; k + 16 <= K; k += 16) {
    __m512 xv[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(x + c * K + k);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::load(w + r * K + k);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  if (k < K) {
    const __mmask16 m = __mmask16((1u << (K - k)) - 1);
    __m512 xv[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm512_maskz_loadu_ps(m, x + c * K + k);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = L::load_tail(w + r * K + k, m);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = _mm512_reduce_add_ps(acc[r][c]);
}

template <class L>
void matvec(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const auto* w = static_cast<const typename L::T*>(a.W->data);
  for_each_tile<4, 4>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    const float* x = a.X + m * K;
    float* y = a.Y + m * N + n;
    switch (c) {
      case 4: tile<L, R, 4>(w + n * K, K, x, y, N); break;
      case 3: tile<L, R, 3>(w + n * K, K, x, y, N); break;
      case 2: tile<L, R, 2>(w + n * K, K, x, y, N); break;
      default: tile<L, R, 1>(w + n * K, K, x, y, N); break;
    }
  });
}

}  // namespace

void matvec_f32(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec<LoadF32>(a, n0, n1); }
void matvec_f16(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec<LoadF16>(a, n0, n1); }
void matvec_bf16(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec<LoadBF16>(a, n0, n1); }

}  // namespace tessera::cpu::avx512
