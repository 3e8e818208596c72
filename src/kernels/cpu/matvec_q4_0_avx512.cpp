// AVX-512 VNNI matrix-vector kernel for Q4_0 weights, four blocks at a time.
//
// Four Q4_0 blocks are 72 bytes; every qs array starts on an even byte, so one
// two-source word permute (vpermt2w) gathers the four 16-byte qs arrays into a
// zmm, and a word permute of the same load gives the four f16 scales. Low and
// high nibbles then go through one vpdpbusd each, against activations stored
// in the matching order (per quad of blocks: the first 16 values of each
// block, then the last 16). Lanes 4b..4b+3 hold block b of the quad, so the
// offset init (-2 sum(x) per lane: q . x = (q - 8) . x + 8 sum(x)) and the
// scales are per block in groups of 4 lanes. Leftover blocks (nb % 4) take the
// one-block path. About half the instructions per block of the two-block form.
#include "kernels/cpu/simd.h"

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"

namespace tessera::cpu::avx512 {
namespace {

// Software prefetch of the next tile: while this tile streams rows [n, n + R),
// prefetch the same position in rows [n + R, n + 2R) (R row lengths ahead).
// Rows are contiguous, so this runs one tile ahead of the demand stream: the
// hardware prefetcher alone does not keep up with several row streams (the
// gain per weight type and the fixed distances tried: docs/perf-log.md).

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Word indices (into the 72 bytes at the quad as [first 64 | next 64]) of the four qs arrays.
inline __m512i qs_index() {
  alignas(64) static constexpr uint16_t idx[32] = {1,  2,  3,  4,  5,  6,  7,  8,  10, 11, 12, 13, 14, 15, 16, 17,
                                                   19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35};
  return _mm512_load_si512(idx);
}
// Word indices of the four scales, each repeated 4 times (low 256 bits).
inline __m512i d_index() {
  alignas(64) static constexpr uint16_t idx[32] = {0, 0, 0, 0, 9, 9, 9, 9, 18, 18, 18, 18, 27, 27, 27, 27};
  return _mm512_load_si512(idx);
}

// Activations rearranged per quad of blocks, and their per-lane init / scales.
struct QuadX {
  const int8_t* qs;     // (M, nq, 128): per quad, [x_b[0:16] for b < 4] then [x_b[16:32] for b < 4]
  const __m512i* init;  // (M, nq): [-2 s_b x 4 for b < 4]
  const __m512* dx;     // (M, nq): [d_b x 4 for b < 4]
  int64_t nq;
};

// Fills work unless ready (work already holds this expansion).
QuadX expand_quads(const QuantX& xq, int64_t M, float* work, bool ready) {
  const int64_t nb = xq.nblocks(), nq = nb / 4, K = xq.K;
  auto* init = reinterpret_cast<__m512i*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  auto* dx = reinterpret_cast<__m512*>(init + M * nq);
  auto* qs = reinterpret_cast<int8_t*>(dx + M * nq);
  const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  for (int64_t m = 0; m < M && !ready; ++m) {
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t b = m * nb + 4 * q;
      const __m512i s = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq.s + b)));
      init[m * nq + q] = _mm512_mullo_epi32(_mm512_permutexvar_epi32(lane_block, s), _mm512_set1_epi32(-2));
      const __m512 d = _mm512_castps128_ps512(_mm_loadu_ps(xq.d + b));
      dx[m * nq + q] = _mm512_permutexvar_ps(lane_block, d);
      const int8_t* src = xq.qs + m * K + q * 128;
      int8_t* dst = qs + (m * nq + q) * 128;
      for (int j = 0; j < 4; ++j) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16 * j),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32 * j)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 64 + 16 * j),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32 * j + 16)));
      }
    }
  }
  return QuadX{qs, init, dx, nq};
}

// One leftover block, the plain way: 32 nibbles against 32 activations.
inline float block_dot(const BlockQ4_0& blk, const int8_t* x, int32_t xs, float xd) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.qs));
  const __m256i wv = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i p = _mm256_dpbusd_epi32(_mm256_set1_epi32(-xs), wv, xv);
  return hsum(_mm256_cvtepi32_ps(p)) * _cvtsh_ss(blk.d) * xd;
}

template <int R, int C>
void tile(const BlockQ4_0* w, const QuantX& xq, const QuadX& qx, int64_t m0, float* y, int64_t N) {
  const int64_t nb = xq.nblocks(), nq = qx.nq, K = xq.K;
  const __m512i lo4 = _mm512_set1_epi8(0x0f), qidx = qs_index(), didx = d_index();
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t q = 0; q < nq; ++q) {
    __m512i xlo[C], xhi[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const int8_t* x = qx.qs + ((m0 + c) * nq + q) * 128;
      xlo[c] = _mm512_loadu_si512(x);
      xhi[c] = _mm512_loadu_si512(x + 64);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = reinterpret_cast<const uint8_t*>(w + r * nb + 4 * q);
      _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * nb + 4 * q), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * nb + 4 * q) + 64, _MM_HINT_T0);
      const __m512i a = _mm512_loadu_si512(p);
      const __m512i b = _mm512_maskz_loadu_epi16(__mmask32(0xf), p + 64);  // bytes 64..71 only
      const __m512i qs = _mm512_permutex2var_epi16(a, qidx, b);
      const __m512i lo = _mm512_and_si512(qs, lo4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), lo4);
      const __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(didx, a)));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const int64_t i = (m0 + c) * nq + q;
        __m512i d = _mm512_dpbusd_epi32(qx.init[i], lo, xlo[c]);
        d = _mm512_dpbusd_epi32(d, hi, xhi[c]);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw, qx.dx[i]), acc[r][c]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      float s = _mm512_reduce_add_ps(acc[r][c]);
      for (int64_t b = 4 * nq; b < nb; ++b) {
        const int64_t xb = (m0 + c) * nb + b;
        s += block_dot(w[r * nb + b], xq.qs + (m0 + c) * K + b * 32, xq.s[xb], xq.d[xb]);
      }
      y[c * N + r] = s;
    }
  }
}

}  // namespace

void matvec_q4_0(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.xq.nblocks(), N = a.W->rows();
  const QuadX qx = expand_quads(a.xq, a.M, a.work, a.x_ready);
  const auto* w = static_cast<const BlockQ4_0*>(a.W->data);
  for_each_tile<4, 4>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    float* y = a.Y + m * N + n;
    switch (c) {
      case 4: tile<R, 4>(w + n * nb, a.xq, qx, m, y, N); break;
      case 3: tile<R, 3>(w + n * nb, a.xq, qx, m, y, N); break;
      case 2: tile<R, 2>(w + n * nb, a.xq, qx, m, y, N); break;
      default: tile<R, 1>(w + n * nb, a.xq, qx, m, y, N); break;
    }
  });
}

}  // namespace tessera::cpu::avx512
