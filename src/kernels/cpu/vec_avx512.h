// The 16-float vector traits of the AVX-512 files (include only from
// *_avx512.cpp): what the kernels written once over a traits type need
// (attend_impl.h, dequant_impl.h).
#pragma once
#include <cstdint>

#include "kernels/cpu/exp_avx512.h"
#include "kernels/cpu/simd.h"

namespace tessera::cpu::avx512 {
namespace {

struct V512 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_h(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static reg load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void store(float* p, reg x) { _mm512_storeu_ps(p, x); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static float reduce_add(reg a) { return _mm512_reduce_add_ps(a); }
  // The four horizontal sums [sum a, sum b, sum c, sum d] in one transposing add tree.
  static __m128 hsum4(reg a, reg b, reg c, reg d) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // per 128-bit lane
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  // lane: [a b c d]
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }
  static float reduce_max(reg a) { return _mm512_reduce_max_ps(a); }
  static reg exp(reg x) { return exp_ps(x); }
  static reg load_bf16(const uint16_t* p) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  }
  // The first n < 16 elements at p (the rest zero, nothing past them read).
  static __mmask16 first(int n) { return __mmask16((1u << n) - 1); }
  static reg load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
  static reg load_h_n(const uint16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), p)); }
  static reg load_bf16_n(const uint16_t* p, int n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first(n), p)), 16));
  }
  // Integers: 64 bytes, 16 int32 lanes (kquant_impl.h).
  using ireg = __m512i;
  static constexpr int IB = 64;
  static ireg iload(const void* p) { return _mm512_loadu_si512(p); }
  static ireg izero() { return _mm512_setzero_si512(); }
  static ireg iadd(ireg a, ireg b) { return _mm512_add_epi32(a, b); }
  static ireg maddubs(ireg u, ireg s) { return _mm512_maddubs_epi16(u, s); }
  static ireg madd16(ireg a, ireg b) { return _mm512_madd_epi16(a, b); }
  static reg cvt(ireg a) { return _mm512_cvtepi32_ps(a); }
  // Word j of sv[c] = S[4 c + j / 8] (c < 4).
  static void group_scales(const int16_t* S, ireg* sv) {
    const __m512i s = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(S)));
    const __m512i idx = _mm512_srli_epi16(_mm512_setr_epi32(0x00010000, 0x00030002, 0x00050004, 0x00070006, 0x00090008,
                                                            0x000b000a, 0x000d000c, 0x000f000e, 0x00110010, 0x00130012,
                                                            0x00150014, 0x00170016, 0x00190018, 0x001b001a, 0x001d001c,
                                                            0x001f001e),
                                          3);
    for (int c = 0; c < 4; ++c) sv[c] = _mm512_permutexvar_epi16(_mm512_add_epi16(idx, _mm512_set1_epi16(int16_t(4 * c))), s);
  }
  // 16 signed bytes of q times d.
  static void store_i8x16(float* out, __m128i q, reg d) { store(out, mul(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d)); }
};

}  // namespace
}  // namespace tessera::cpu::avx512
