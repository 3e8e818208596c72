// AVX-512 VNNI matrix-vector kernels for Q8_0 / Q8_G weights (Q4_0 has its own file).
//
// X is quantized once per call to int8 blocks (cpu::QuantX). Per 32-element
// block, vpdpbusd multiplies unsigned weight bytes by signed activation bytes:
//   (w + 128) . x = w . x + 128 * sum(x)   (w + 128 is w ^ 0x80)
// The offset is removed exactly in integers by starting the accumulator at
// -16 * sum(x) in each of the block's 8 lanes. The int32 lanes are then scaled
// by d_w * d_x and accumulated in f32, as llama.cpp does.
#include "kernels/cpu/simd.h"

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"

namespace tessera::cpu::avx512 {
namespace {

// Software prefetch runs one tile ahead (rows n + R .. n + 2R): it keeps DRAM
// lines in flight while the out-of-order window is busy with the dot products.

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Weight formats with 32-element blocks, read two blocks at a time into one
// zmm: bytes() gives the 64 unsigned weight bytes in element order (lanes 0-7
// of vpdpbusd belong to the first block, 8-15 to the second), scales() the two
// f16 scales as [d0 x 8, d1 x 8] f32. bytes1/scale1 read a single block.
// (Q4_0 used this form too; matvec_q4_0_avx512.cpp's four-block form is faster.)
struct FmtQ8_0 {
  using Block = BlockQ8_0;
  static constexpr int kOffsetMul = 16;  // (w ^ 0x80) . x = w . x + 128 sum(x), over 8 lanes
  static __m512i bytes(const uint8_t* p) {
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(load256(p + 2)), load256(p + 36), 1);
    return _mm512_xor_si512(q, _mm512_set1_epi8(char(0x80)));
  }
  static __m512 scales(const uint8_t* p) {
    // d0 is word 0 and d1 word 17 of the 64 bytes at p (a pair is 68 bytes: no over-read).
    const __m512i raw = _mm512_loadu_si512(p);
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0x00110011, 0x00110011, 0x00110011, 0x00110011, 0, 0, 0, 0, 0, 0,
                                          0, 0);
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, raw)));
  }
  static __m256i bytes1(const Block& b) { return _mm256_xor_si256(load256(b.qs), _mm256_set1_epi8(char(0x80))); }
  static float scale1(const Block& b) { return _cvtsh_ss(b.d); }
};
// Per activation row and block pair, the vectors every weight row reuses:
// init = [-mul s0 x 8, -mul s1 x 8] (the offset correction) and dx = [d0 x 8, d1 x 8].
struct PairX {
  const __m512i* init;  // (M, np)
  const __m512* dx;     // (M, np)
  int64_t np;
};

// Fills work unless ready (work already holds this expansion).
PairX expand_pairs(const QuantX& xq, int64_t M, int mul, float* work, bool ready) {
  const int64_t nb = xq.nblocks(), np = nb / 2;
  auto* init = reinterpret_cast<__m512i*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  auto* dx = reinterpret_cast<__m512*>(init + M * np);
  for (int64_t m = 0; m < M && !ready; ++m) {
    for (int64_t p = 0; p < np; ++p) {
      const int64_t b = m * nb + 2 * p;
      init[m * np + p] = _mm512_inserti64x4(_mm512_set1_epi32(-mul * xq.s[b]), _mm256_set1_epi32(-mul * xq.s[b + 1]), 1);
      dx[m * np + p] = _mm512_insertf32x8(_mm512_set1_ps(xq.d[b]), _mm256_set1_ps(xq.d[b + 1]), 1);
    }
  }
  return PairX{init, dx, np};
}

// Y[m0 + c, n + r] for r < R, c < C; w = row n of W (nb blocks per row).
template <class F, int R, int C>
void tile_blocks(const typename F::Block* w, const QuantX& xq, const PairX& px, int64_t m0, float* y, int64_t N) {
  const int64_t nb = xq.nblocks(), K = xq.K, np = px.np;
  const int8_t* xqs = xq.qs + m0 * K;
  const __m512i* xinit = px.init + m0 * np;
  const __m512* xdx = px.dx + m0 * np;
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    __m512i xv[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_si512(xqs + c * K + p * 64);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = reinterpret_cast<const uint8_t*>(w + r * nb + 2 * p);
      _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * nb + 2 * p), _MM_HINT_T0);
      const __m512i wv = F::bytes(blk);
      const __m512 dw = F::scales(blk);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m512i d = _mm512_dpbusd_epi32(xinit[c * np + p], wv, xv[c]);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw, xdx[c * np + p]), acc[r][c]);
      }
    }
  }
  float tail[R][C] = {};
  if (nb % 2) {  // the last, unpaired block
    const int64_t b = nb - 1;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const typename F::Block& blk = w[r * nb + b];
      const __m256i wv = F::bytes1(blk);
      const float dw = F::scale1(blk);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(xqs + c * K + b * 32));
        const __m256i init = _mm256_set1_epi32(-F::kOffsetMul * xq.s[(m0 + c) * nb + b]);
        const __m256 d = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(init, wv, xv));
        tail[r][c] = hsum(d) * dw * xq.d[(m0 + c) * nb + b];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = _mm512_reduce_add_ps(acc[r][c]) + tail[r][c];
}

template <class F>
void matvec_blocks(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.xq.nblocks(), N = a.W->rows();
  const PairX px = expand_pairs(a.xq, a.M, F::kOffsetMul, a.work, a.x_ready);
  const auto* w = static_cast<const typename F::Block*>(a.W->data);
  for_each_tile<4, 4>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    float* y = a.Y + m * N + n;
    switch (c) {
      case 4: tile_blocks<F, R, 4>(w + n * nb, a.xq, px, m, y, N); break;
      case 3: tile_blocks<F, R, 3>(w + n * nb, a.xq, px, m, y, N); break;
      case 2: tile_blocks<F, R, 2>(w + n * nb, a.xq, px, m, y, N); break;
      default: tile_blocks<F, R, 1>(w + n * nb, a.xq, px, m, y, N); break;
    }
  });
}

// Q8_G with groups of xq.block elements (a multiple of 32): the int32 sums run
// over a whole group, then are scaled once by scale_w * d_x.
template <int R, int C>
void tile_q8g(const int8_t* w, const float* sw, const QuantX& xq, int64_t m0, float* y, int64_t N) {
  const int64_t ng = xq.nblocks(), K = xq.K, G = xq.block;
  const int8_t* xqs = xq.qs + m0 * K;
  const float* xd = xq.d + m0 * ng;
  const int32_t* xs = xq.s + m0 * ng;
  const __m256i off = _mm256_set1_epi8(char(0x80));
  __m256 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m256i p[R][C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256i init = _mm256_set1_epi32(-16 * xs[c * ng + g]);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) p[r][c] = init;
    }
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      __m256i xv[C];
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) xv[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(xqs + c * K + k));
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i wv = _mm256_xor_si256(load256(w + r * K + k), off);
        #pragma GCC unroll 8
        for (int c = 0; c < C; ++c) p[r][c] = _mm256_dpbusd_epi32(p[r][c], wv, xv[c]);
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

// The same for groups that are a multiple of 64: 64 bytes per vpdpbusd.
template <int R, int C>
void tile_q8g64(const int8_t* w, const float* sw, const QuantX& xq, int64_t m0, float* y, int64_t N) {
  const int64_t ng = xq.nblocks(), K = xq.K, G = xq.block;
  const int8_t* xqs = xq.qs + m0 * K;
  const float* xd = xq.d + m0 * ng;
  const int32_t* xs = xq.s + m0 * ng;
  const __m512i off = _mm512_set1_epi8(char(0x80));
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m512i p[R][C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m512i init = _mm512_set1_epi32(-8 * xs[c * ng + g]);  // 16 lanes x -8 = -128 sum(x)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) p[r][c] = init;
    }
    for (int64_t k = g * G; k < (g + 1) * G; k += 64) {
      __m512i xv[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_si512(xqs + c * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w + (r + R) * K + k), _MM_HINT_T0);
        const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(w + r * K + k), off);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) p[r][c] = _mm512_dpbusd_epi32(p[r][c], wv, xv[c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float s = sw[r * ng + g];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[r][c]), _mm512_set1_ps(s * xd[c * ng + g]), acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) y[c * N + r] = _mm512_reduce_add_ps(acc[r][c]);
}

// Q8_G whose groups do not fit the integer path (e.g. group 4): dequantize
// each row into the thread's workspace and take f32 dot products.
void matvec_q8g_float(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t N = a.W->rows(), K = a.W->cols();
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row(*a.W, n, a.work);
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.X + m * K;
      __m512 acc = _mm512_setzero_ps();
      int64_t k = 0;
      for (; k + 16 <= K; k += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.work + k), _mm512_loadu_ps(x + k), acc);
      if (k < K) {
        const __mmask16 mk = __mmask16((1u << (K - k)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a.work + k), _mm512_maskz_loadu_ps(mk, x + k), acc);
      }
      a.Y[m * N + n] = _mm512_reduce_add_ps(acc);
    }
  }
}

}  // namespace

void matvec_q8_0(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_blocks<FmtQ8_0>(a, n0, n1); }

void matvec_q8_g(const MatvecArgs& a, int64_t n0, int64_t n1) {
  if (!q8g_integer_path(*a.W)) return matvec_q8g_float(a, n0, n1);
  const int64_t N = a.W->rows(), K = a.W->cols(), ng = a.xq.nblocks();
  const bool wide = a.xq.block % 64 == 0;
  for_each_tile<4, 2>(n0, n1, a.M, rows_per_cache_block(a.W->row_bytes()), [&]<int R>(int64_t n, int64_t m, int c) {
    const int8_t* w = static_cast<const int8_t*>(a.W->data) + n * K;
    const float* sw = a.W->scales + n * ng;
    float* y = a.Y + m * N + n;
    if (wide) {
      if (c == 2) return tile_q8g64<R, 2>(w, sw, a.xq, m, y, N);
      return tile_q8g64<R, 1>(w, sw, a.xq, m, y, N);
    }
    if (c == 2) return tile_q8g<R, 2>(w, sw, a.xq, m, y, N);
    tile_q8g<R, 1>(w, sw, a.xq, m, y, N);
  });
}

void quantize_x(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  for (int64_t b = 0; b < K / block; ++b) {
    const float* xb = x + b * block;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t k = 0; k < block; k += 16) amax = _mm512_max_ps(amax, _mm512_andnot_ps(sign, _mm512_loadu_ps(xb + k)));
    const float mx = _mm512_reduce_max_ps(amax);
    const float db = f16_scale ? _cvtsh_ss(_cvtss_sh(mx / 127.f, 0)) : mx / 127.f;
    const float id = mx == 0.f ? 0.f : f16_scale ? 127.f / mx : 1.f / db;
    const __m512 vid = _mm512_set1_ps(id);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0; k < block; k += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + k), vid));
      sum = _mm512_add_epi32(sum, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * block + k), _mm512_cvtsepi32_epi8(q));
    }
    d[b] = db;
    s[b] = _mm512_reduce_add_epi32(sum);
  }
}

// cpu::quantize_x_q8k (the scalar specification) with the same bits: the first
// value of largest magnitude sets the scale -127 / v, products rounded half to
// even (vcvtps2dq), clamped at 127.
void quantize_x_q8k(const float* x, int64_t K, int8_t* qs, float* d, int32_t* s) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  const __m512i top = _mm512_set1_epi32(127);
  for (int64_t b = 0; b < K / kQKK; ++b) {
    const float* xb = x + b * kQKK;
    __m512 amax = _mm512_setzero_ps();  // NaNs are skipped, as the scalar's comparison does
    for (int k = 0; k < kQKK; k += 16) amax = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(xb + k)), amax);
    const float mx = _mm512_reduce_max_ps(amax);
    float vmax = 0.f;
    for (int k = 0; mx != 0.f && k < kQKK; k += 16) {
      const __mmask16 hit =
          _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(xb + k)), _mm512_set1_ps(mx), _CMP_EQ_OQ);
      if (hit) {
        vmax = xb[k + __builtin_ctz(hit)];
        break;
      }
    }
    const float iscale = mx != 0.f ? -127.f / vmax : 0.f;
    const __m512 vis = _mm512_set1_ps(iscale);
    for (int g = 0; g < kQKK / 16; ++g) {
      const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(vis, _mm512_loadu_ps(xb + 16 * g))), top);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kQKK + 16 * g), _mm512_cvtsepi32_epi8(q));
      s[b * (kQKK / 16) + g] = _mm512_reduce_add_epi32(q);
    }
    d[b] = mx != 0.f ? 1.f / iscale : 0.f;
  }
}

}  // namespace tessera::cpu::avx512
