// AVX-512 VNNI matrix-vector kernels for the K-quant R4 layouts Q4_K_R4,
// Q5_K_R4, Q6_K_R4 (kernels/repack.h) against llama.cpp's Q8_K activations.
//
// A group is 512 weights of one row: 16 sub-blocks of 32, one per 32-bit lane.
// The quants are the Q4_0_R4 arrangement (four 64-byte loads, low and high
// nibbles; Q5_K adds one load of fifth bits, Q6_K two of high bit pairs), so
// vpdpbusd sums each sub-block's 32 products (or, for Q6_K, each half's 16)
// into its own lane; the scales are one byte per lane, widened once per row
// and group and shared by up to 4 activation rows:
//   Q4_K / Q5_K: y += (d sc) da * sum(q x)  -  (dmin m) da * sum(x)
//   Q6_K:        y += (d sc_half) da * sum((q - 32) x)   (the -32 sum(x) is the lane's start value)
// with da and the sums of x from the Q8_K blocks (per 16, as llama.cpp keeps them).
// Against matvec_kquant (scalar unpacking of each 256-block) this is the
// Q4_0_R4 kernel's work plus a few scale operations per row and group.
#include "kernels/cpu/simd.h"

#include <algorithm>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tiling.h"
#include "kernels/repack.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/r4_x_impl.h"

// The activations of one row and one group of 512 (two Q8_K blocks), in the weights' order.
struct XGroupK {
  __m512i lo[4], hi[4];  // r4_gather_x
  __m512 d;              // lane b: da of Q8_K block b / 8
  __m512 sm;             // Q4_K / Q5_K: da * sum of lane b's 32 quants (the mins' term)
  __m512i init_lo;       // Q6_K: -32 * sum of lane b's first 16 quants
  __m512i init_hi;       //       and of its last 16
};

// (M, G) groups from the Q8_K activations, into work (64-byte aligned); when ready, work already holds them.
const XGroupK* expand_groups_k(const QuantX& xq, int64_t M, float* work, bool ready) {
  const int64_t G = r4_groups(xq.K), nb = xq.K / kQKK;
  auto* out = reinterpret_cast<XGroupK*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  if (ready) return out;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      XGroupK& o = out[m * G + g];
      const bool half = 2 * g + 1 >= nb;  // K % 512 == 256: the last group's second block is padding
      r4_gather_x(xq.qs + m * xq.K + g * 512, o.lo, o.hi, half ? 0x00ff : 0xffff);
      const float* da = xq.d + m * nb + 2 * g;
      o.d = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(da[0]), _mm512_set1_ps(half ? 0.f : da[1]));
      const int32_t* s = xq.s + m * (xq.K / 16) + 32 * g;  // sums per 16: lane b has 2 b and 2 b + 1
      const __m512i s0 = _mm512_loadu_si512(s), s1 = half ? _mm512_setzero_si512() : _mm512_loadu_si512(s + 16);
      const __m512i slo = _mm512_permutex2var_epi32(s0, even, s1), shi = _mm512_permutex2var_epi32(s0, odd, s1);
      o.sm = _mm512_mul_ps(o.d, _mm512_cvtepi32_ps(_mm512_add_epi32(slo, shi)));
      o.init_lo = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(slo, 5));
      o.init_hi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(shi, 5));
    }
  return out;
}

inline __m512 widen_u8(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 widen_i8(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// Row r of a tile at w, group g, against C activation rows x (row stride G): adds to acc[c].
template <DType T, int C>
__attribute__((always_inline)) inline void krow(const uint8_t* w, int64_t K, int64_t g, int r, const XGroupK* x,
                                                __m512 (&acc)[C], size_t prefetch) {
  const int64_t G = r4_groups(K);
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  const uint8_t* p = w + r4k_qs_offset(r, g);
  __m512i lo[4], hi[4];  // unsigned quants against xg.lo / xg.hi
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    _mm_prefetch(reinterpret_cast<const char*>(p + prefetch + 64 * j), _MM_HINT_T0);
    const __m512i v = _mm512_loadu_si512(p + 64 * j);
    lo[j] = _mm512_and_si512(v, lo4);
    hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
  }
  const uint8_t* h = w + r4k_high_offset(T, K, r, g);
  if constexpr (T == DType::Q5_K_R4) {  // bit j -> bit 4 of lo[j], bit 4 + j -> bit 4 of hi[j]
    _mm_prefetch(reinterpret_cast<const char*>(h + prefetch), _MM_HINT_T0);
    const __m512i hv = _mm512_loadu_si512(h), b4 = _mm512_set1_epi8(0x10);
    lo[0] = _mm512_or_si512(lo[0], _mm512_and_si512(_mm512_slli_epi16(hv, 4), b4));
    lo[1] = _mm512_or_si512(lo[1], _mm512_and_si512(_mm512_slli_epi16(hv, 3), b4));
    lo[2] = _mm512_or_si512(lo[2], _mm512_and_si512(_mm512_slli_epi16(hv, 2), b4));
    lo[3] = _mm512_or_si512(lo[3], _mm512_and_si512(_mm512_slli_epi16(hv, 1), b4));
    hi[0] = _mm512_or_si512(hi[0], _mm512_and_si512(hv, b4));
    hi[1] = _mm512_or_si512(hi[1], _mm512_and_si512(_mm512_srli_epi16(hv, 1), b4));
    hi[2] = _mm512_or_si512(hi[2], _mm512_and_si512(_mm512_srli_epi16(hv, 2), b4));
    hi[3] = _mm512_or_si512(hi[3], _mm512_and_si512(_mm512_srli_epi16(hv, 3), b4));
  } else if constexpr (T == DType::Q6_K_R4) {  // bits 2 t, 2 t + 1 -> bits 4, 5 of lo[t] (first 64 bytes), hi[t]
    _mm_prefetch(reinterpret_cast<const char*>(h + prefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(h + prefetch + 64), _MM_HINT_T0);
    const __m512i b45 = _mm512_set1_epi8(0x30);
    const __m512i h0 = _mm512_loadu_si512(h), h1 = _mm512_loadu_si512(h + 64);
    lo[0] = _mm512_or_si512(lo[0], _mm512_and_si512(_mm512_slli_epi16(h0, 4), b45));
    lo[1] = _mm512_or_si512(lo[1], _mm512_and_si512(_mm512_slli_epi16(h0, 2), b45));
    lo[2] = _mm512_or_si512(lo[2], _mm512_and_si512(h0, b45));
    lo[3] = _mm512_or_si512(lo[3], _mm512_and_si512(_mm512_srli_epi16(h0, 2), b45));
    hi[0] = _mm512_or_si512(hi[0], _mm512_and_si512(_mm512_slli_epi16(h1, 4), b45));
    hi[1] = _mm512_or_si512(hi[1], _mm512_and_si512(_mm512_slli_epi16(h1, 2), b45));
    hi[2] = _mm512_or_si512(hi[2], _mm512_and_si512(h1, b45));
    hi[3] = _mm512_or_si512(hi[3], _mm512_and_si512(_mm512_srli_epi16(h1, 2), b45));
  }
  const uint8_t* sc = w + r4k_scales_offset(T, K, r, g);
  if (r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + prefetch), _MM_HINT_T0);
  // Lanes 0..7 take super-block 2 g, 8..15 super-block 2 g + 1: f16 (d, dmin) pairs, or Q6_K's two d.
  if constexpr (T == DType::Q6_K_R4) {
    const __m512 dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(*reinterpret_cast<const int*>(sc + 32))));
    const __m512 dl = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), dd);
    const __m512 wlo = _mm512_mul_ps(widen_i8(sc), dl), whi = _mm512_mul_ps(widen_i8(sc + 16), dl);
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const XGroupK& xg = x[c * G + g];
      __m512i a0 = xg.init_lo, a1 = xg.init_hi;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        a0 = _mm512_dpbusd_epi32(a0, lo[j], xg.lo[j]);
        a1 = _mm512_dpbusd_epi32(a1, hi[j], xg.hi[j]);
      }
      const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), wlo, _mm512_mul_ps(_mm512_cvtepi32_ps(a1), whi));
      acc[c] = _mm512_fmadd_ps(t, xg.d, acc[c]);
    }
  } else {
    const __m512 dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 32))));
    const __m512i pick_d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512 ws = _mm512_mul_ps(widen_u8(sc), _mm512_permutexvar_ps(pick_d, dd));
    const __m512 wm = _mm512_mul_ps(widen_u8(sc + 16), _mm512_permutexvar_ps(_mm512_add_epi32(pick_d, _mm512_set1_epi32(1)), dd));
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const XGroupK& xg = x[c * G + g];
      __m512i a0 = _mm512_setzero_si512(), a1 = a0;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        a0 = _mm512_dpbusd_epi32(a0, lo[j], xg.lo[j]);
        a1 = _mm512_dpbusd_epi32(a1, hi[j], xg.hi[j]);
      }
      acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), _mm512_mul_ps(ws, xg.d), acc[c]);
      acc[c] = _mm512_fnmadd_ps(wm, xg.sm, acc[c]);
    }
  }
}

// Y[c, n + r] for r < rows, c < C: tile at w (4 rows), activation groups x (row stride G).
template <DType T, int C>
void ktile(const uint8_t* w, int64_t K, const XGroupK* x, float* y, int64_t N, int64_t rows, size_t prefetch) {
  __m512 a0[C], a1[C], a2[C], a3[C];  // one array per tile row, so each stays in registers
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) a0[c] = a1[c] = a2[c] = a3[c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < r4_groups(K); ++g) {
    krow<T, C>(w, K, g, 0, x, a0, prefetch);
    krow<T, C>(w, K, g, 1, x, a1, prefetch);
    krow<T, C>(w, K, g, 2, x, a2, prefetch);
    krow<T, C>(w, K, g, 3, x, a3, prefetch);
  }
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    y[c * N] = _mm512_reduce_add_ps(a0[c]);
    if (rows > 1) y[c * N + 1] = _mm512_reduce_add_ps(a1[c]);
    if (rows > 2) y[c * N + 2] = _mm512_reduce_add_ps(a2[c]);
    if (rows > 3) y[c * N + 3] = _mm512_reduce_add_ps(a3[c]);
  }
}

constexpr int kCMax = 3;  // activation rows per tile pass (4 spills accumulators)

template <DType T>
void matvec_r4k(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const XGroupK* xg = expand_groups_k(a.xq, a.M, a.work, a.x_ready);
  const size_t tb = r4_tile_bytes(T, K);
  r4_for_each_tile<kCMax>(a, n0, n1, xg, [&]<int C>(const uint8_t* t, const XGroupK* x, float* y, int64_t rows) {
    ktile<T, C>(t, K, x, y, N, rows, tb);
  });
}

}  // namespace

void matvec_kquant_r4(const MatvecArgs& a, int64_t n0, int64_t n1) {
  switch (a.W->dtype) {
    case DType::Q4_K_R4: return matvec_r4k<DType::Q4_K_R4>(a, n0, n1);
    case DType::Q5_K_R4: return matvec_r4k<DType::Q5_K_R4>(a, n0, n1);
    default: return matvec_r4k<DType::Q6_K_R4>(a, n0, n1);
  }
}

}  // namespace tessera::cpu::avx512
