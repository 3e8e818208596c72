// AVX2 matrix-vector kernels for Q8_0 / Q4_0 / Q8_G weights (no VNNI).
//
// X is quantized once per call to int8 blocks (cpu::QuantX). Per 32-element
// block, vpmaddubsw multiplies unsigned by signed bytes into int16 pairs and
// vpmaddwd sums them into int32:
//   Q8_0 / Q8_G: |w| . sign(x, w)   (the sign trick; |w| <= 128, |x| <= 127, no saturation)
//   Q4_0:        q . x - 8 * sum(x) with q in [0, 15]
// The int32 lanes are scaled by d_w * d_x and accumulated in f32.
#include "kernels/cpu/simd.h"

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"

namespace tessera::cpu::avx2 {
namespace {

// Software prefetch of the next tile: while this tile streams rows [n, n + R),
// prefetch the same position in rows [n + R, n + 2R) (R row lengths ahead).
// Rows are contiguous, so this runs one tile ahead of the demand stream: the
// hardware prefetcher alone does not keep up with several row streams (the
// gain per weight type and the fixed distances tried: docs/perf-log.md).
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Sum over 4-byte groups of u8 * s8 products into 8 int32 lanes.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
// Q8_0: the sign trick needs |w| and the sign of w, shared across the C activation rows.
template <int R, int C>
void tile_q8_0(const BlockQ8_0* w, const QuantX& xq, int64_t m0, float* y, int64_t N) {
  const int64_t nb = xq.nblocks(), K = xq.K;
  const int8_t* xqs = xq.qs + m0 * K;
  const float* xd = xq.d + m0 * nb;
  __m256 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const BlockQ8_0& blk = w[r * nb + b];
      prefetch(&w[(r + R) * nb + b]);
      const __m256i wv = load256(blk.qs);
      const __m256i wabs = _mm256_sign_epi8(wv, wv);
      const float dw = _cvtsh_ss(blk.d);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(xqs + c * K + b * 32));
        const __m256i p = dot_u8s8(wabs, _mm256_sign_epi8(xv, wv));
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[c * nb + b]), acc[r][c]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = hsum(acc[r][c]);
}

// Q4_0: nibbles are already unsigned; the -8 offset is removed by adding -sum(x) per lane.
template <int R, int C>
void tile_q4_0(const BlockQ4_0* w, const QuantX& xq, int64_t m0, float* y, int64_t N) {
  const int64_t nb = xq.nblocks(), K = xq.K;
  const int8_t* xqs = xq.qs + m0 * K;
  const float* xd = xq.d + m0 * nb;
  const int32_t* xs = xq.s + m0 * nb;
  const __m256i lo4 = _mm256_set1_epi8(0x0f);
  __m256 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i xv[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(xqs + c * K + b * 32));
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const BlockQ4_0& blk = w[r * nb + b];
      if (b % 2 == 0) prefetch(&w[(r + R) * nb + b]);
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs));
      const __m256i wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), lo4);
      const float dw = _cvtsh_ss(blk.d);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i p = _mm256_add_epi32(dot_u8s8(wv, xv[c]), _mm256_set1_epi32(-xs[c * nb + b]));
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[c * nb + b]), acc[r][c]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = hsum(acc[r][c]);
}

// Q8_G: int32 sums over a whole group (xq.block elements), scaled once per group.
template <int R, int C>
void tile_q8g(const int8_t* w, const float* sw, const QuantX& xq, int64_t m0, float* y, int64_t N) {
  const int64_t ng = xq.nblocks(), K = xq.K, G = xq.block;
  const int8_t* xqs = xq.qs + m0 * K;
  const float* xd = xq.d + m0 * ng;
  __m256 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m256i p[R][C];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) p[r][c] = _mm256_setzero_si256();
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        if (k % 64 == 0) prefetch(w + (r + R) * K + k);
        const __m256i wv = load256(w + r * K + k);
        const __m256i wabs = _mm256_sign_epi8(wv, wv);
        #pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
          const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(xqs + c * K + k));
          p[r][c] = _mm256_add_epi32(p[r][c], dot_u8s8(wabs, _mm256_sign_epi8(xv, wv)));
        }
      }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float s = sw[r * ng + g];
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[r][c]), _mm256_set1_ps(s * xd[c * ng + g]), acc[r][c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = hsum(acc[r][c]);
}

void matvec_q8g_float(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t N = a.W->rows(), K = a.W->cols();
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row(*a.W, n, a.work);
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.X + m * K;
      __m256 acc = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.work + k), _mm256_loadu_ps(x + k), acc);
      float s = hsum(acc);
      for (; k < K; ++k) s += a.work[k] * x[k];
      a.Y[m * N + n] = s;
    }
  }
}

}  // namespace

void matvec_q8_0(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.xq.nblocks(), N = a.W->rows();
  const auto* w = static_cast<const BlockQ8_0*>(a.W->data);
  for_each_tile<4, 2>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    if (c == 2) return tile_q8_0<R, 2>(w + n * nb, a.xq, m, a.Y + m * N + n, N);
    tile_q8_0<R, 1>(w + n * nb, a.xq, m, a.Y + m * N + n, N);
  });
}

void matvec_q4_0(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.xq.nblocks(), N = a.W->rows();
  const auto* w = static_cast<const BlockQ4_0*>(a.W->data);
  for_each_tile<4, 2>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    if (c == 2) return tile_q4_0<R, 2>(w + n * nb, a.xq, m, a.Y + m * N + n, N);
    tile_q4_0<R, 1>(w + n * nb, a.xq, m, a.Y + m * N + n, N);
  });
}

void matvec_q8_g(const MatvecArgs& a, int64_t n0, int64_t n1) {
  if (!q8g_integer_path(*a.W)) return matvec_q8g_float(a, n0, n1);
  const int64_t N = a.W->rows(), K = a.W->cols(), ng = a.xq.nblocks();
  for_each_tile<2, 2>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    const int8_t* w = static_cast<const int8_t*>(a.W->data) + n * K;
    const float* sw = a.W->scales + n * ng;
    if (c == 2) return tile_q8g<R, 2>(w, sw, a.xq, m, a.Y + m * N + n, N);
    tile_q8g<R, 1>(w, sw, a.xq, m, a.Y + m * N + n, N);
  });
}

void quantize_x(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < K / block; ++b) {
    const float* xb = x + b * block;
    __m256 amax = _mm256_setzero_ps();
    for (int64_t k = 0; k < block; k += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + k)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float mx = _mm_cvtss_f32(m4);
    const float db = f16_scale ? _cvtsh_ss(_cvtss_sh(mx / 127.f, 0)) : mx / 127.f;
    const float id = mx == 0.f ? 0.f : f16_scale ? 127.f / mx : 1.f / db;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i sum = _mm256_setzero_si256();
    for (int64_t k = 0; k < block; k += 32) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + k + 8 * j), vid));
        sum = _mm256_add_epi32(sum, q[j]);
      }
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * block + k), _mm256_permutevar8x32_epi32(p, perm));
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    d[b] = db;
    s[b] = _mm_cvtsi128_si32(s4);
  }
}

}  // namespace tessera::cpu::avx2
