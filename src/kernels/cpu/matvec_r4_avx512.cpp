// AVX-512 VNNI matrix-vector kernels for the Q4_0_R4 / Q8_0_R4 layouts (kernels/repack.h).
//
// Per tile row and group of 16 blocks, 64-byte loads (aligned in buffers from repack_weights) hold 4
// consecutive qs bytes of each block: Q4_0_R4 four loads, whose low and high
// nibbles go through one vpdpbusd each; Q8_0_R4 eight loads (already stored
// as unsigned qs + 128), one vpdpbusd each. The activations are stored in the
// same order, so 32-bit lane b sums block b's 32 products. The 16 scales are
// one vcvtph2ps. The offset init in lane b (Q4_0: -8 sum(x_b), since
// q . x = (q - 8) . x + 8 sum(x); Q8_0: -128 sum(x_b)) and the activation
// scales are per lane. Against the file-layout kernels (permutes of unaligned
// 72- / 68-byte block pairs or quads, four row streams) Q4_0 runs at about 2x
// the throughput with the weights in cache, and a tile is one sequential stream.
#include "kernels/cpu/simd.h"

#include <algorithm>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"
#include "kernels/repack.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/r4_x_impl.h"

// The activations of one row and one group of 16 blocks, in the weights' order.
struct XGroup {
  __m512i lo[4];  // byte 4 b + i of lo[j] = x_b[4 j + i]
  __m512i hi[4];  // byte 4 b + i of hi[j] = x_b[16 + 4 j + i]
  __m512i init;   // lane b: -offset * sum(x_b) (offset 8 for Q4_0, 128 for Q8_0)
  __m512 d;       // lane b: scale of x_b
};

// (M, G) groups from the quantized activations, into work (64-byte aligned);
// when ready, work already holds them.
const XGroup* expand_groups(const QuantX& xq, int64_t M, int offset, float* work, bool ready) {
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
      o.init = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(lanes, xq.s + b0), _mm512_set1_epi32(-offset));
      o.d = _mm512_maskz_loadu_ps(lanes, xq.d + b0);
    }
  return out;
}

// Y[c, n + r] for r < rows, c < C: tile at w (4 rows), activation groups x (row stride G).
template <DType T, int C>
void tile(const uint8_t* w, int64_t K, const XGroup* x, float* y, int64_t N, int64_t rows, size_t prefetch) {
  constexpr bool kQ4 = T == DType::Q4_0_R4;
  const int64_t G = r4_groups(K);
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  __m512 acc[kR4Rows][C];
#pragma GCC unroll 4
  for (int r = 0; r < kR4Rows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
#pragma GCC unroll 4
    for (int r = 0; r < kR4Rows; ++r) {
      const uint8_t* p = w + r4_qs_offset(T, r, g);
      __m512i lo[4], hi[4];  // the weight bytes against xg.lo / xg.hi
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(p + prefetch + 64 * j), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(p + 64 * j);
        if constexpr (kQ4) {
          lo[j] = _mm512_and_si512(v, lo4);
          hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
        } else {
          _mm_prefetch(reinterpret_cast<const char*>(p + prefetch + 256 + 64 * j), _MM_HINT_T0);
          lo[j] = v;
          hi[j] = _mm512_loadu_si512(p + 256 + 64 * j);
        }
      }
      const uint8_t* sc = w + r4_scales_offset(T, K, r, g);
      // The scales follow the tile's qs: the next tile's are a stream of their own to prefetch
      // (two rows' 32-byte scale vectors share a line).
      if (r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + prefetch), _MM_HINT_T0);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const XGroup& xg = x[c * G + g];
        __m512i a0 = xg.init, a1 = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          a0 = _mm512_dpbusd_epi32(a0, lo[j], xg.lo[j]);
          a1 = _mm512_dpbusd_epi32(a1, hi[j], xg.hi[j]);
        }
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), _mm512_mul_ps(dw, xg.d), acc[r][c]);
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
void matvec_r4(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const XGroup* xg = expand_groups(a.xq, a.M, T == DType::Q4_0_R4 ? 8 : 128, a.work, a.x_ready);
  const size_t tb = r4_tile_bytes(T, K);
  r4_for_each_tile<4>(a, n0, n1, xg, [&]<int C>(const uint8_t* t, const XGroup* x, float* y, int64_t rows) {
    tile<T, C>(t, K, x, y, N, rows, tb);
  });
}

}  // namespace

void matvec_q4_0_r4(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_r4<DType::Q4_0_R4>(a, n0, n1); }
void matvec_q8_0_r4(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_r4<DType::Q8_0_R4>(a, n0, n1); }

}  // namespace tessera::cpu::avx512
