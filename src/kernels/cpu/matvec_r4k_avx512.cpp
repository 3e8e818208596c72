// AVX-512 VNNI matrix-vector kernels for the K-quant R4 layouts Q4_K_R4,
// Q5_K_R4, Q6_K_R4 (kernels/repack.h) against llama.cpp's Q8_K activations.
//
// A group is 512 weights of one row: 16 sub-blocks of 32, one per 32-bit lane.
// The quants are the Q4_0_R4 arrangement (four 64-byte loads, low and high
// nibbles; Q5_K adds one load of fifth bits, Q6_K two of high bit pairs), so
// vpdpbusd sums each sub-block's 32 products (or, for Q6_K, each half's 16)
// into its own lane; the scales are one byte per lane, widened once per row
// and group and shared by up to 4 activation rows (Q6_K 3), which meet each
// 64-byte slice of 2 weight rows before the next (matvec_r4_avx512.cpp's order):
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

// v shifted left by n bits (right by -n) in each 16-bit lane.
template <int n>
inline __m512i shift16(__m512i v) {
  if constexpr (n > 0) return _mm512_slli_epi16(v, n);
  else if constexpr (n < 0) return _mm512_srli_epi16(v, -n);
  else return v;
}

// Slice j (bytes 4 j .. 4 j + 3 of each lane's 16-byte halves) of tile row r's
// group g as unsigned quants: lo against the activations' lo[j], hi against their hi[j].
template <DType T, int j>
__attribute__((always_inline)) inline void kslice(const uint8_t* w, int64_t K, int r, int64_t g, size_t prefetch,
                                                  __m512i& lo, __m512i& hi) {
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  const uint8_t* p = w + r4k_qs_offset(r, g) + 64 * j;
  _mm_prefetch(reinterpret_cast<const char*>(p + prefetch), _MM_HINT_T0);
  const __m512i v = _mm512_loadu_si512(p);
  lo = _mm512_and_si512(v, lo4);
  hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
  const uint8_t* h = w + r4k_high_offset(T, K, r, g);
  if constexpr (T == DType::Q5_K_R4) {  // bit j -> bit 4 of lo, bit 4 + j -> bit 4 of hi
    if (j == 0) _mm_prefetch(reinterpret_cast<const char*>(h + prefetch), _MM_HINT_T0);
    const __m512i hv = _mm512_loadu_si512(h), b4 = _mm512_set1_epi8(0x10);
    lo = _mm512_or_si512(lo, _mm512_and_si512(shift16<4 - j>(hv), b4));
    hi = _mm512_or_si512(hi, _mm512_and_si512(shift16<-j>(hv), b4));
  } else if constexpr (T == DType::Q6_K_R4) {  // bits 2 j, 2 j + 1 -> bits 4, 5 (lo: first 64 bytes, hi: next)
    if (j == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(h + prefetch), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(h + prefetch + 64), _MM_HINT_T0);
    }
    const __m512i b45 = _mm512_set1_epi8(0x30);
    lo = _mm512_or_si512(lo, _mm512_and_si512(shift16<4 - 2 * j>(_mm512_loadu_si512(h)), b45));
    hi = _mm512_or_si512(hi, _mm512_and_si512(shift16<4 - 2 * j>(_mm512_loadu_si512(h + 64)), b45));
  }
}

// Tile row r's scales of group g, per lane and times the super-block's d:
// Q4_K / Q5_K the sub-block scale (s0) and min (s1); Q6_K the first (s0) and last (s1) 16's scale.
// Lanes 0..7 take super-block 2 g, 8..15 super-block 2 g + 1.
template <DType T>
__attribute__((always_inline)) inline void kscales(const uint8_t* w, int64_t K, int r, int64_t g, size_t prefetch,
                                                   __m512& s0, __m512& s1) {
  const uint8_t* sc = w + r4k_scales_offset(T, K, r, g);
  if (r % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + prefetch), _MM_HINT_T0);
  if constexpr (T == DType::Q6_K_R4) {  // two f16 d
    const __m512 dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(*reinterpret_cast<const int*>(sc + 32))));
    const __m512 dl = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), dd);
    s0 = _mm512_mul_ps(widen_i8(sc), dl);
    s1 = _mm512_mul_ps(widen_i8(sc + 16), dl);
  } else {  // f16 (d, dmin) pairs
    const __m512 dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 32))));
    const __m512i pick_d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    s0 = _mm512_mul_ps(widen_u8(sc), _mm512_permutexvar_ps(pick_d, dd));
    s1 = _mm512_mul_ps(widen_u8(sc + 16), _mm512_permutexvar_ps(_mm512_add_epi32(pick_d, _mm512_set1_epi32(1)), dd));
  }
}

// With more than one pass of activation rows over a block of weight rows, the
// block's scales are unpacked once (unpack_scales) instead of in every pass:
// s0 and s1 of (tile t of the block, group g, row r) at kPlane ((t G + g) 4 + r).
constexpr int64_t kPlane = 32;

// The scales of the tiles of weight rows [b0, b1) (b0 a multiple of 4) into planes.
template <DType T>
void unpack_scales(const uint8_t* w, int64_t K, int64_t b0, int64_t b1, float* planes) {
  const int64_t G = r4_groups(K);
  const size_t tb = r4_tile_bytes(T, K);
  for (int64_t n = b0; n < b1; n += kR4Rows) {
    const uint8_t* t = w + size_t(n / kR4Rows) * tb;
    float* o = planes + (n - b0) / kR4Rows * G * kR4Rows * kPlane;
    for (int64_t g = 0; g < G; ++g)
      for (int r = 0; r < kR4Rows; ++r, o += kPlane) {
        __m512 s0, s1;
        kscales<T>(t, K, r, g, 0, s0, s1);
        _mm512_store_ps(o, s0);
        _mm512_store_ps(o + 16, s1);
      }
  }
}

// Row r's group g against one activation row: adds to acc. The row's four
// slices in file order, one sequential stream (decode).
template <DType T>
__attribute__((always_inline)) inline void krow1(const uint8_t* w, int64_t K, int64_t g, int r, const XGroupK& xg,
                                                 __m512& acc, size_t prefetch) {
  __m512i lo[4], hi[4];
  kslice<T, 0>(w, K, r, g, prefetch, lo[0], hi[0]);
  kslice<T, 1>(w, K, r, g, prefetch, lo[1], hi[1]);
  kslice<T, 2>(w, K, r, g, prefetch, lo[2], hi[2]);
  kslice<T, 3>(w, K, r, g, prefetch, lo[3], hi[3]);
  __m512 s0, s1;
  kscales<T>(w, K, r, g, prefetch, s0, s1);
  constexpr bool k6 = T == DType::Q6_K_R4;
  __m512i a0 = k6 ? xg.init_lo : _mm512_setzero_si512(), a1 = k6 ? xg.init_hi : _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    a0 = _mm512_dpbusd_epi32(a0, lo[j], xg.lo[j]);
    a1 = _mm512_dpbusd_epi32(a1, hi[j], xg.hi[j]);
  }
  if constexpr (k6) {
    const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), s0, _mm512_mul_ps(_mm512_cvtepi32_ps(a1), s1));
    acc = _mm512_fmadd_ps(t, xg.d, acc);
  } else {
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), _mm512_mul_ps(s0, xg.d), acc);
    acc = _mm512_fnmadd_ps(s1, xg.sm, acc);
  }
}

// Y[n + r] for r < rows against one activation row.
template <DType T>
void ktile1(const uint8_t* w, int64_t K, const XGroupK* x, float* y, int64_t rows, size_t prefetch) {
  __m512 acc[kR4Rows];
  for (auto& v : acc) v = _mm512_setzero_ps();
  for (int64_t g = 0; g < r4_groups(K); ++g) {
    krow1<T>(w, K, g, 0, x[g], acc[0], prefetch);
    krow1<T>(w, K, g, 1, x[g], acc[1], prefetch);
    krow1<T>(w, K, g, 2, x[g], acc[2], prefetch);
    krow1<T>(w, K, g, 3, x[g], acc[3], prefetch);
  }
#pragma GCC unroll 4
  for (int r = 0; r < kR4Rows; ++r)
    if (r < rows) y[r] = _mm512_reduce_add_ps(acc[r]);
}

// Y[c, n + r] for r in [r0, r0 + 2), r < rows, c < C, as the legacy types'
// tile_sliced (matvec_r4_avx512.cpp): per group, slice j of 2 weight rows
// meets slice j of the C activation rows before slice j + 1, the integer sums
// in registers (Q6_K: two per pair, its halves have their own scales, so C <= 3).
// sc: the tile's scale planes (unpack_scales), or null to unpack them here.
template <DType T, int C>
void ktile_sliced(const uint8_t* w, int64_t K, const XGroupK* x, float* y, int64_t N, int r0, int64_t rows,
                  size_t prefetch, const float* sc) {
  constexpr int R = 2;
  constexpr bool k6 = T == DType::Q6_K_R4;
  const int64_t G = r4_groups(K);
  __m512 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    if (sc) {  // this group's two rows of scale planes, for the end of the group
      const char* p = reinterpret_cast<const char*>(sc + (g * kR4Rows + r0) * kPlane);
      for (int l = 0; l < 4; ++l) _mm_prefetch(p + 64 * l, _MM_HINT_T0);
    }
    __m512i ia[R][C], ib[R][C];  // lane sums of the lo slices (Q4_K / Q5_K: of both) and (Q6_K) of the hi slices
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        ia[r][c] = k6 ? x[c * G + g].init_lo : _mm512_setzero_si512();
        if constexpr (k6) ib[r][c] = x[c * G + g].init_hi;
      }
    auto slice = [&]<int j>() __attribute__((always_inline)) {
      __m512i lo[R], hi[R];
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) kslice<T, j>(w, K, r0 + r, g, prefetch, lo[r], hi[r]);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        __m512i xl = x[c * G + g].lo[j], xh = x[c * G + g].hi[j];
        asm("" : "+v"(xl), "+v"(xh));  // in registers, not loaded again per row as memory operands
#pragma GCC unroll 2
        for (int r = 0; r < R; ++r) {
          ia[r][c] = _mm512_dpbusd_epi32(ia[r][c], lo[r], xl);
          if constexpr (k6) ib[r][c] = _mm512_dpbusd_epi32(ib[r][c], hi[r], xh);
          else ia[r][c] = _mm512_dpbusd_epi32(ia[r][c], hi[r], xh);
        }
      }
    };
    slice.template operator()<0>();
    slice.template operator()<1>();
    slice.template operator()<2>();
    slice.template operator()<3>();
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
      __m512 s0, s1;
      if (sc) {
        s0 = _mm512_load_ps(sc + (g * kR4Rows + r0 + r) * kPlane);
        s1 = _mm512_load_ps(sc + (g * kR4Rows + r0 + r) * kPlane + 16);
      } else {
        kscales<T>(w, K, r0 + r, g, prefetch, s0, s1);
      }
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const XGroupK& xg = x[c * G + g];
        if constexpr (k6) {
          const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][c]), s0, _mm512_mul_ps(_mm512_cvtepi32_ps(ib[r][c]), s1));
          acc[r][c] = _mm512_fmadd_ps(t, xg.d, acc[r][c]);
        } else {
          acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][c]), _mm512_mul_ps(s0, xg.d), acc[r][c]);
          acc[r][c] = _mm512_fnmadd_ps(s1, xg.sm, acc[r][c]);
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
      if (r0 + r < rows) y[c * N + r0 + r] = _mm512_reduce_add_ps(acc[r][c]);
}

template <DType T>
void matvec_r4k(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), N = a.W->rows();
  const XGroupK* xg = expand_groups_k(a.xq, a.M, a.work, a.x_ready);
  const size_t tb = r4_tile_bytes(T, K);
  constexpr int kCMax = T == DType::Q6_K_R4 ? 3 : 4;  // activation rows per pass: what the registers hold
  const auto* w = static_cast<const uint8_t*>(a.W->data);
  const int64_t G = r4_groups(K);
  // With more than one pass over a block, its scales are unpacked once, after the activations in work.
  float* planes = nullptr;
  int64_t b0 = 0;
  if (a.M > kCMax && rows_per_cache_block(dtype_row_bytes(T, K)) * G * kPlane <= kScaleWorkFloats) {
    const float* end = a.work + work_floats(K, a.M) - kScaleWorkFloats - 16;
    planes = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(end) + 63) & ~uintptr_t(63));
  }
  auto block = [&](int64_t n, int64_t end) {
    b0 = n;
    if (planes) unpack_scales<T>(w, K, n, end, planes);
  };
  r4_for_each_tile<kCMax>(a, n0, n1, xg, [&]<int C>(const uint8_t* t, const XGroupK* x, float* y, int64_t rows) {
    if constexpr (C == 1) {
      ktile1<T>(t, K, x, y, rows, tb);
    } else {
      const float* sc = planes ? planes + ((t - w) / tb - b0 / kR4Rows) * G * kR4Rows * kPlane : nullptr;
      for (int r0 = 0; r0 < kR4Rows; r0 += 2) ktile_sliced<T, C>(t, K, x, y, N, r0, rows, tb, sc);
    }
  }, block);
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
