// AVX-512 VNNI matrix-vector kernels for the legacy R4 layouts (IQ4_NL_R4,
// Q4_1_R4, Q5_0_R4, Q5_1_R4; kernels/repack.h): the Q4_0_R4 kernel
// (matvec_r4_avx512.cpp) with each type's own unpacking of the nibbles:
//   IQ4_NL  the nibbles index llama.cpp's grid plus 128 (one vpshufb), the
//           unsigned operand of vpdpbusd; lane b starts at -128 sum(x_b);
//   Q5_0    bit 4 of each quant from the block's qh: a vpshufb copies the qh
//           byte of a 4-byte chunk to the chunk's 4 bytes, vptestmb picks bit
//           4 j + i of byte i, and a masked add sets 16; lane b starts at -16 sum(x_b);
//   Q4_1 / Q5_1  no offset; the min term m_b s_b (s_b: llama.cpp's Q8_1 block
//           value, QuantX.s's float bits) is one more FMA per lane.
// Against the file-layout kernels (legacy_impl.h: one 32-weight block per
// 256-bit step, f16 scales converted one by one) these run at Q4_0_R4's pace.
#include "kernels/cpu/simd.h"

#include <algorithm>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"
#include "kernels/repack.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/r4_x_impl.h"

// The activations of one row and one group of 16 blocks, in the weights' order.
struct XGroupL {
  __m512i lo[4];  // byte 4 b + i of lo[j] = x_b[4 j + i]
  __m512i hi[4];  // byte 4 b + i of hi[j] = x_b[16 + 4 j + i]
  __m512i init;   // lane b: -offset * sum(x_b) (IQ4_NL 128, Q5_0 16, else 0)
  __m512 d;       // lane b: scale of x_b
  __m512 s;       // lane b: Q8_1's block value of x_b (Q4_1 / Q5_1), else 0
};

// (M, G) groups from the quantized activations, into work (64-byte aligned);
// when ready, work already holds them.
const XGroupL* expand_groups(const QuantX& xq, int64_t M, int offset, bool min, float* work, bool ready) {
  const int64_t G = r4_groups(xq.K), nb = xq.nblocks();
  auto* out = reinterpret_cast<XGroupL*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  if (ready) return out;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      XGroupL& o = out[m * G + g];
      const int64_t b0 = m * nb + g * kR4Blocks;
      // A last partial group: its missing blocks are zero lanes, nothing past the row read.
      const __mmask16 lanes = __mmask16((1u << std::min<int64_t>(kR4Blocks, nb - g * kR4Blocks)) - 1);
      r4_gather_x(xq.qs + m * xq.K + g * 512, o.lo, o.hi, lanes);
      const __m512i s = _mm512_maskz_loadu_epi32(lanes, xq.s + b0);
      o.init = min ? _mm512_setzero_si512() : _mm512_mullo_epi32(s, _mm512_set1_epi32(-offset));
      o.d = _mm512_maskz_loadu_ps(lanes, xq.d + b0);
      o.s = min ? _mm512_castsi512_ps(s) : _mm512_setzero_ps();
    }
  return out;
}

// In every 32-bit lane, byte k of the lane in all four bytes (vpshufb indices).
inline __m512i lane_byte(int k) {
  const __m512i base = _mm512_broadcast_i32x4(_mm_set_epi64x(0x0C0C0C0C08080808, 0x0404040400000000));
  return _mm512_add_epi8(base, _mm512_set1_epi8(char(k)));
}

// Y[c, n + r] for r < rows, c < C: tile at w (4 rows), activation groups x (row stride G).
template <DType T, int C>
void tile(const uint8_t* w, int64_t K, const XGroupL* x, float* y, int64_t N, int64_t rows, size_t prefetch) {
  constexpr bool kNL = T == DType::IQ4_NL_R4, kQ5 = T == DType::Q5_0_R4 || T == DType::Q5_1_R4;
  constexpr bool kMin = T == DType::Q4_1_R4 || T == DType::Q5_1_R4;
  const int64_t G = r4_groups(K);
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  __m512i grid = _mm512_setzero_si512();
  if constexpr (kNL) {
    alignas(16) uint8_t g8[16];
    for (int i = 0; i < 16; ++i) g8[i] = uint8_t(kIQ4NLValues[i] + 128);
    grid = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(g8)));
  }
  // Bit 4 j + i of qh (j < 4 within the lo / hi halves) sits in byte j / 2 (lo; hi: 2 + j / 2),
  // bit 4 (j % 2) + i: the byte pattern per half.
  const __m512i pat0 = _mm512_set1_epi32(0x08040201), pat1 = _mm512_set1_epi32(int(0x80402010u));
  const __m512i sixteen = _mm512_set1_epi8(16);
  __m512 acc[kR4Rows][C];
#pragma GCC unroll 4
  for (int r = 0; r < kR4Rows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
#pragma GCC unroll 4
    for (int r = 0; r < kR4Rows; ++r) {
      const uint8_t* p = w + r4l_qs_offset(r, g);
      __m512i lo[4], hi[4];  // the weight bytes against xg.lo / xg.hi
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(p + prefetch + 64 * j), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(p + 64 * j);
        lo[j] = _mm512_and_si512(v, lo4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
        if constexpr (kNL) {
          lo[j] = _mm512_shuffle_epi8(grid, lo[j]);
          hi[j] = _mm512_shuffle_epi8(grid, hi[j]);
        }
      }
      if constexpr (kQ5) {
        const uint8_t* hp = w + r4l_high_offset(T, K, r, g);
        _mm_prefetch(reinterpret_cast<const char*>(hp + prefetch), _MM_HINT_T0);
        const __m512i H = _mm512_loadu_si512(hp);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m512i pat = j % 2 ? pat1 : pat0;
          const __m512i bl = _mm512_shuffle_epi8(H, lane_byte(j / 2)), bh = _mm512_shuffle_epi8(H, lane_byte(2 + j / 2));
          lo[j] = _mm512_mask_add_epi8(lo[j], _mm512_test_epi8_mask(bl, pat), lo[j], sixteen);
          hi[j] = _mm512_mask_add_epi8(hi[j], _mm512_test_epi8_mask(bh, pat), hi[j], sixteen);
        }
      }
      const uint8_t* sc = w + r4l_scales_offset(T, K, r, g);
      // The scales follow the tile's quants: a stream of their own to prefetch
      // (two rows' 32-byte d vectors share a line; with the mins each row has its own).
      if (kMin || r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + prefetch), _MM_HINT_T0);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
      __m512 mw = _mm512_setzero_ps();
      if constexpr (kMin) mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 32)));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const XGroupL& xg = x[c * G + g];
        __m512i a0 = xg.init, a1 = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          a0 = _mm512_dpbusd_epi32(a0, lo[j], xg.lo[j]);
          a1 = _mm512_dpbusd_epi32(a1, hi[j], xg.hi[j]);
        }
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), _mm512_mul_ps(dw, xg.d), acc[r][c]);
        if constexpr (kMin) acc[r][c] = _mm512_fmadd_ps(mw, xg.s, acc[r][c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kR4Rows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
      if (r < rows) y[c * N + r] = _mm512_reduce_add_ps(acc[r][c]);
}

template <DType T>
void matvec_r4l(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  constexpr int kOffset = T == DType::IQ4_NL_R4 ? 128 : T == DType::Q5_0_R4 ? 16 : 0;
  constexpr bool kMin = T == DType::Q4_1_R4 || T == DType::Q5_1_R4;
  const XGroupL* xg = expand_groups(a.xq, a.M, kOffset, kMin, a.work, a.x_ready);
  const size_t tb = r4_tile_bytes(T, K);
  r4_for_each_tile<4>(a, n0, n1, xg, [&]<int C>(const uint8_t* t, const XGroupL* x, float* y, int64_t rows) {
    tile<T, C>(t, K, x, y, N, rows, tb);
  });
}

}  // namespace

void matvec_legacy_r4(const MatvecArgs& a, int64_t n0, int64_t n1) {
  switch (a.W->dtype) {
    case DType::IQ4_NL_R4: return matvec_r4l<DType::IQ4_NL_R4>(a, n0, n1);
    case DType::Q4_1_R4: return matvec_r4l<DType::Q4_1_R4>(a, n0, n1);
    case DType::Q5_0_R4: return matvec_r4l<DType::Q5_0_R4>(a, n0, n1);
    default: return matvec_r4l<DType::Q5_1_R4>(a, n0, n1);
  }
}

}  // namespace tessera::cpu::avx512
