// AVX-512 VNNI matrix-vector kernels for the R4 layouts of the 32-weight block
// types (kernels/repack.h): Q4_0_R4, Q8_0_R4, IQ4_NL_R4, Q4_1_R4, Q5_0_R4, Q5_1_R4.
//
// Per tile row and group of 16 blocks, four 64-byte slices (aligned in buffers
// from repack_weights) hold 4 consecutive quant bytes of each block: 32-bit
// lane b of a vpdpbusd sums block b's products. The activations are stored in
// the same order, the 16 scales are one vcvtph2ps, and the offset term starts
// lane b at -o sum(x_b), since q . x = (q - o) . x + o sum(x). Per type:
//   Q4_0    low / high nibbles, o = 8;  Q8_0  two slices (stored as qs + 128), o = 128;
//   IQ4_NL  the nibbles index llama.cpp's grid plus 128 (one vpshufb), o = 128;
//   Q5_0    bit 4 of each quant from the block's qh: a vpshufb copies the qh
//           byte of a 4-byte chunk to the chunk's 4 bytes, vptestmb picks bit
//           4 j + i of byte i, and a masked add sets 16; o = 16;
//   Q4_1 / Q5_1  o = 0; the min term m_b s_b (s_b: llama.cpp's Q8_1 block
//           value, QuantX.s's float bits) is one more FMA per lane.
// Against the file-layout kernels (unaligned 18- to 34-byte blocks, four row
// streams) Q4_0 runs at about 2x the throughput with the weights in cache,
// and a tile is one sequential stream.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <array>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"
#include "kernels/repack.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/r4_x_impl.h"

template <DType T>
constexpr bool kLegacy = T == DType::IQ4_NL_R4 || T == DType::Q4_1_R4 || T == DType::Q5_0_R4 || T == DType::Q5_1_R4;
template <DType T>
constexpr bool kMin = T == DType::Q4_1_R4 || T == DType::Q5_1_R4;
template <DType T>
constexpr int kOffset = T == DType::Q4_0_R4 ? 8 : T == DType::Q8_0_R4 || T == DType::IQ4_NL_R4 ? 128
                        : T == DType::Q5_0_R4                        ? 16
                                                                     : 0;

// The activations of one row and one group of 16 blocks, in the weights' order.
struct XGroup {
  __m512i lo[4];  // byte 4 b + i of lo[j] = x_b[4 j + i]
  __m512i hi[4];  // byte 4 b + i of hi[j] = x_b[16 + 4 j + i]
  __m512i init;   // lane b: -offset * sum(x_b)
  __m512 d;       // lane b: scale of x_b
  __m512 s;       // lane b: Q8_1's block value of x_b (Q4_1 / Q5_1), else 0
};

// (M, G) groups from the quantized activations, into work (64-byte aligned);
// when ready, work already holds them.
const XGroup* expand_groups(const QuantX& xq, int64_t M, int offset, bool min, float* work, bool ready) {
  const int64_t G = r4_groups(xq.K), nb = xq.nblocks();
  auto* out = reinterpret_cast<XGroup*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  if (ready) return out;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      XGroup& o = out[m * G + g];
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

// llama.cpp's IQ4_NL grid plus 128, the bytes vpshufb looks the nibbles up in.
constexpr auto kGrid128 = [] {
  std::array<uint8_t, 16> g{};
  for (int i = 0; i < 16; ++i) g[i] = uint8_t(kIQ4NLValues[i] + 128);
  return g;
}();

// In every 32-bit lane, byte k of the lane in all four bytes (vpshufb indices).
inline __m512i lane_byte(int k) {
  const __m512i base = _mm512_broadcast_i32x4(_mm_set_epi64x(0x0C0C0C0C08080808, 0x0404040400000000));
  return _mm512_add_epi8(base, _mm512_set1_epi8(char(k)));
}

// Slice j (bytes 4 j .. 4 j + 3 of each block) of tile row r's group g as the
// unsigned operands of vpdpbusd: lo against the activations' lo[j], hi against their hi[j].
template <DType T>
inline void r4_slice(const uint8_t* w, int64_t K, int64_t r, int64_t g, int j, size_t prefetch, __m512i& lo,
                     __m512i& hi) {
  const uint8_t* p = w + r4_qs_offset(T, r, g) + 64 * j;  // Q8_0_R4: 512-byte groups, hi 256 on
  _mm_prefetch(reinterpret_cast<const char*>(p + prefetch), _MM_HINT_T0);
  lo = _mm512_loadu_si512(p);
  if constexpr (T == DType::Q8_0_R4) {
    _mm_prefetch(reinterpret_cast<const char*>(p + prefetch + 256), _MM_HINT_T0);
    hi = _mm512_loadu_si512(p + 256);
    return;
  }
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  hi = _mm512_and_si512(_mm512_srli_epi16(lo, 4), lo4);
  lo = _mm512_and_si512(lo, lo4);
  if constexpr (T == DType::IQ4_NL_R4) {
    const __m512i grid = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kGrid128.data())));
    lo = _mm512_shuffle_epi8(grid, lo);
    hi = _mm512_shuffle_epi8(grid, hi);
  }
  if constexpr (T == DType::Q5_0_R4 || T == DType::Q5_1_R4) {
    // Bit 4 j + i of qh (j < 4 within the lo / hi halves) sits in byte j / 2 (lo; hi: 2 + j / 2),
    // bit 4 (j % 2) + i: the byte pattern per half.
    const uint8_t* hp = w + r4l_high_offset(T, K, r, g);
    if (j == 0) _mm_prefetch(reinterpret_cast<const char*>(hp + prefetch), _MM_HINT_T0);
    const __m512i H = _mm512_loadu_si512(hp), sixteen = _mm512_set1_epi8(16);
    const __m512i pat = _mm512_set1_epi32(j % 2 ? int(0x80402010u) : 0x08040201);
    const __m512i bl = _mm512_shuffle_epi8(H, lane_byte(j / 2)), bh = _mm512_shuffle_epi8(H, lane_byte(2 + j / 2));
    lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(bl, pat), lo, sixteen);
    hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(bh, pat), hi, sixteen);
  }
}

// Tile row r's 16 weight scales of group g as floats, and (Q4_1 / Q5_1) its 16 mins in m.
template <DType T>
inline __m512 r4_scales(const uint8_t* w, int64_t K, int r, int64_t g, size_t prefetch, __m512& m) {
  const uint8_t* sc = w + (kLegacy<T> ? r4l_scales_offset(T, K, r, g) : r4_scales_offset(T, K, r, g));
  // The scales follow the tile's quants: a stream of their own to prefetch
  // (two rows' 32-byte d vectors share a line; with the mins each row has its own).
  if (kMin<T> || r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + prefetch), _MM_HINT_T0);
  if constexpr (kMin<T>) m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 32)));
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
}

// Y[n + r] for r < rows against one activation row (decode): the tile in file
// order, one sequential stream, each row's group against the activations in turn.
template <DType T>
void tile1(const uint8_t* w, int64_t K, const XGroup* x, float* y, int64_t rows, size_t prefetch) {
  const int64_t G = r4_groups(K);
  __m512 acc[kR4Rows];
  for (auto& v : acc) v = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
#pragma GCC unroll 4
    for (int r = 0; r < kR4Rows; ++r) {
      __m512i lo[4], hi[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) r4_slice<T>(w, K, r, g, j, prefetch, lo[j], hi[j]);
      __m512 mw;
      const __m512 dw = r4_scales<T>(w, K, r, g, prefetch, mw);
      __m512i a0 = x[g].init, a1 = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        a0 = _mm512_dpbusd_epi32(a0, lo[j], x[g].lo[j]);
        a1 = _mm512_dpbusd_epi32(a1, hi[j], x[g].hi[j]);
      }
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), _mm512_mul_ps(dw, x[g].d), acc[r]);
      if constexpr (kMin<T>) acc[r] = _mm512_fmadd_ps(mw, x[g].s, acc[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kR4Rows; ++r)
    if (r < rows) y[r] = _mm512_reduce_add_ps(acc[r]);
}

// Y[c, n + r] for r in [r0, r0 + R), r < rows, c < C: tile at w, activation
// groups x (row stride G). Per group, slice j goes through every (row, column)
// pair before the next slice, so each activation vector loaded meets R rows
// and each weight vector C columns, where tile1's order loads about 1.25 times
// per vpdpbusd (loads bound it once more than one activation row shares the
// weights). R C integer sums, R C float sums and R slices of weights fill the
// register file at R 2 x C 4: (8 R + 10 C) / (8 R C) = 0.88 loads per
// vpdpbusd, one pass over the tile's weights per 4 columns. (R 4 x C 2 loads
// less, 0.56, but streams the weights in from L2 twice as often: slower on
// both types, by a little on Q4_0 and a lot on Q8_0, whose tiles are twice the bytes.)
template <DType T, int R, int C>
void tile_sliced(const uint8_t* w, int64_t K, const XGroup* x, float* y, int64_t N, int r0, int64_t rows,
                 size_t prefetch) {
  const int64_t G = r4_groups(K);
  __m512 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i ia[R][C];  // lane b: block b's integer dot product plus the offset term
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) ia[r][c] = x[c * G + g].init;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      __m512i lo[R], hi[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) r4_slice<T>(w, K, r0 + r, g, j, prefetch, lo[r], hi[r]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        __m512i xl = x[c * G + g].lo[j], xh = x[c * G + g].hi[j];
        // In registers: folded into each vpdpbusd as a memory operand, they would be loaded R times.
        asm("" : "+v"(xl), "+v"(xh));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          ia[r][c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ia[r][c], lo[r], xl), hi[r], xh);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m512 mw;
      const __m512 dw = r4_scales<T>(w, K, r0 + r, g, prefetch, mw);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const XGroup& xg = x[c * G + g];
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][c]), _mm512_mul_ps(dw, xg.d), acc[r][c]);
        if constexpr (kMin<T>) acc[r][c] = _mm512_fmadd_ps(mw, xg.s, acc[r][c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
      if (r0 + r < rows) y[c * N + r0 + r] = _mm512_reduce_add_ps(acc[r][c]);
}

template <DType T>
void matvec_r4(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const XGroup* xg = expand_groups(a.xq, a.M, kOffset<T>, kMin<T>, a.work, a.x_ready);
  const size_t tb = r4_tile_bytes(T, K);
  constexpr int R = 2;
  r4_for_each_tile<4>(a, n0, n1, xg, [&]<int C>(const uint8_t* t, const XGroup* x, float* y, int64_t rows) {
    if constexpr (C == 1) {
      tile1<T>(t, K, x, y, rows, tb);
    } else {
      for (int r0 = 0; r0 < kR4Rows; r0 += R) tile_sliced<T, R, C>(t, K, x, y, N, r0, rows, tb);
    }
  });
}

}  // namespace

void matvec_q4_0_r4(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_r4<DType::Q4_0_R4>(a, n0, n1); }
void matvec_q8_0_r4(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_r4<DType::Q8_0_R4>(a, n0, n1); }
void matvec_legacy_r4(const MatvecArgs& a, int64_t n0, int64_t n1) {
  switch (a.W->dtype) {
    case DType::IQ4_NL_R4: return matvec_r4<DType::IQ4_NL_R4>(a, n0, n1);
    case DType::Q4_1_R4: return matvec_r4<DType::Q4_1_R4>(a, n0, n1);
    case DType::Q5_0_R4: return matvec_r4<DType::Q5_0_R4>(a, n0, n1);
    default: return matvec_r4<DType::Q5_1_R4>(a, n0, n1);
  }
}

}  // namespace tessera::cpu::avx512
