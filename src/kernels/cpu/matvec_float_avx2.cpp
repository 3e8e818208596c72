// AVX2 + FMA + F16C matrix-vector kernels for F32 / F16 / BF16 weights.
// Same tiling as the AVX-512 version (R weight rows x C activation rows), with
// 8-wide vectors, 16 registers (so C <= 2) and a scalar K tail.
#include "kernels/cpu/simd.h"

#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"

namespace tessera::cpu::avx2 {
namespace {

// Software prefetch of the next tile: while this tile streams rows [n, n + R),
// prefetch the same position in rows [n + R, n + 2R) (R row lengths ahead).
// Rows are contiguous, so this runs one tile ahead of the demand stream: the
// hardware prefetcher alone does not keep up with several row streams (the
// gain per weight type and the fixed distances tried: docs/perf-log.md).

struct LoadF32 {
  using T = float;
  static __m256 load(const T* p) { return _mm256_loadu_ps(p); }
  static float scalar(const T* p) { return *p; }
};
struct LoadF16 {
  using T = uint16_t;
  static __m256 load(const T* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static float scalar(const T* p) { return _cvtsh_ss(*p); }
};
struct LoadBF16 {
  using T = uint16_t;
  static __m256 load(const T* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static float scalar(const T* p) {
    const uint32_t u = uint32_t(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <class L, int R, int C>
void tile(const typename L::T* w, int64_t K, const float* x, float* y, int64_t N) {
  __m256 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(x + c * K + k);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (k % 16 == 0) _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * K + k), _MM_HINT_T0);
      const __m256 wv = L::load(w + r * K + k);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t j = k; j < K; ++j) s += L::scalar(w + r * K + j) * x[c * K + j];
      y[c * N + r] = s;
    }
  }
}

template <class L>
void matvec(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const auto* w = static_cast<const typename L::T*>(a.W->data);
  for_each_tile<4, 2>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    if (c == 2) return tile<L, R, 2>(w + n * K, K, a.X + m * K, a.Y + m * N + n, N);
    tile<L, R, 1>(w + n * K, K, a.X + m * K, a.Y + m * N + n, N);
  });
}

}  // namespace

void matvec_f32(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec<LoadF32>(a, n0, n1); }
void matvec_f16(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec<LoadF16>(a, n0, n1); }
void matvec_bf16(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec<LoadBF16>(a, n0, n1); }

}  // namespace tessera::cpu::avx2
