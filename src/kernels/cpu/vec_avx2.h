// The 8-float vector traits of the AVX2 files (include only from *_avx2.cpp):
// what the kernels written once over a traits type need (attend_impl.h,
// dequant_impl.h).
#pragma once
#include <cstdint>

#include "kernels/cpu/exp_avx2.h"
#include "kernels/cpu/simd.h"

namespace tessera::cpu::avx2 {
namespace {

struct V256 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_h(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static reg load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void store(float* p, reg x) { _mm256_storeu_ps(p, x); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  // The four horizontal sums [sum a, sum b, sum c, sum d] in one transposing add tree.
  static __m128 hsum4(reg a, reg b, reg c, reg d) {
    const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));  // per 128-bit lane
    const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));  // lane: [a b c d]
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  }
  static float reduce_add(reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float reduce_max(reg a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static reg exp(reg x) { return exp256(x); }
  static reg load_bf16(const uint16_t* p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  // The first n < 8 elements at p (the rest zero, nothing past them read).
  template <class T>
  static void copy_n(T (&buf)[8], const T* p, int n) {
    for (int i = 0; i < 8; ++i) buf[i] = i < n ? p[i] : T(0);
  }
  static reg load_n(const float* p, int n) {
    float b[8];
    copy_n(b, p, n);
    return load(b);
  }
  static reg load_h_n(const uint16_t* p, int n) {
    uint16_t b[8];
    copy_n(b, p, n);
    return load_h(b);
  }
  static reg load_bf16_n(const uint16_t* p, int n) {
    uint16_t b[8];
    copy_n(b, p, n);
    return load_bf16(b);
  }
  // Integers: 32 bytes, 8 int32 lanes (kquant_impl.h).
  using ireg = __m256i;
  static constexpr int IB = 32;
  static ireg iload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static ireg izero() { return _mm256_setzero_si256(); }
  static ireg iadd(ireg a, ireg b) { return _mm256_add_epi32(a, b); }
  static ireg maddubs(ireg u, ireg s) { return _mm256_maddubs_epi16(u, s); }
  static ireg madd16(ireg a, ireg b) { return _mm256_madd_epi16(a, b); }
  static reg cvt(ireg a) { return _mm256_cvtepi32_ps(a); }
  // Word j of sv[c] = S[2 c + j / 8] (c < 8).
  static void group_scales(const int16_t* S, ireg* sv) {
    for (int c = 0; c < 8; ++c) sv[c] = _mm256_set_m128i(_mm_set1_epi16(S[2 * c + 1]), _mm_set1_epi16(S[2 * c]));
  }
  // 16 signed bytes of q times d (two registers).
  static void store_i8x16(float* out, __m128i q, reg d) {
    store(out, mul(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
    store(out + 8, mul(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), d));
  }
};

}  // namespace
}  // namespace tessera::cpu::avx2
