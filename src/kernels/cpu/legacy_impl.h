// Matrix-vector kernel of the 32-element block types Q4_1, Q5_0, Q5_1 and
// IQ4_NL against llama.cpp's Q8_0 activations (QuantX, f16 scales), in 256-bit
// AVX2 instructions: one block is one register. matvec_legacy_avx2.cpp and
// matvec_kquant_avx512.cpp include this inside their ISA namespace's anonymous
// namespace (so it compiles with their flags).
//
// A block unpacks to 32 quants q and   x[j] = d * (q[j] - o) + m:
//   Q4_1 q = nibble, o = 0;  Q5_0 q = nibble | bit j of qh << 4, o = 16, m = 0;
//   Q5_1 as Q5_0 with o = 0 and m;  IQ4_NL q = kIQ4NLValues[nibble] (signed), o = 0, m = 0.
// Against a = da * qa with block sum sa:
//   sum_j x[j] a[j] = d * da * (sum_j q[j] qa[j] - o * sa) + m * da * sa.
// The min term takes llama.cpp's Q8_1 block value f16(amax / 127 * sa), the
// unrounded scale times the sum rounded to a half (QuantX.s holds its bits):
// with da * sa in f32 instead, Q4_1 / Q5_1 files were 4e-3 from llama.cpp's logits.
#pragma once

struct LBlock {
  __m256i q;  // unsigned, or signed for IQ4_NL
  float d, m;
};

inline __m256i nibbles(const uint8_t* qs) {  // element j < 16: low nibble of qs[j]; j + 16: high nibble
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i lo4 = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), lo4), _mm_and_si128(v, lo4));
}

// 0x10 in byte j where bit j of the 32-bit qh is set.
inline __m256i fifth_bits(const uint8_t* qh4) {
  uint32_t qh;
  std::memcpy(&qh, qh4, 4);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(qh)),
                                            _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                               0x0303030303030303));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(0x10));
}

struct LQ4_1 {
  using B = tessera::BlockQ4_1;
  static constexpr int kOffset = 0;
  static constexpr bool kSigned = false, kMin = true;
  static LBlock unpack(const B& b) { return {nibbles(b.qs), _cvtsh_ss(b.d), _cvtsh_ss(b.m)}; }
};
struct LQ5_0 {
  using B = tessera::BlockQ5_0;
  static constexpr int kOffset = 16;
  static constexpr bool kSigned = false, kMin = false;
  static LBlock unpack(const B& b) { return {_mm256_or_si256(nibbles(b.qs), fifth_bits(b.qh)), _cvtsh_ss(b.d), 0.f}; }
};
struct LQ5_1 {
  using B = tessera::BlockQ5_1;
  static constexpr int kOffset = 0;
  static constexpr bool kSigned = false, kMin = true;
  static LBlock unpack(const B& b) {
    return {_mm256_or_si256(nibbles(b.qs), fifth_bits(b.qh)), _cvtsh_ss(b.d), _cvtsh_ss(b.m)};
  }
};
struct LIQ4_NL {
  using B = tessera::BlockIQ4_NL;
  static constexpr int kOffset = 0;
  static constexpr bool kSigned = true, kMin = false;
  static LBlock unpack(const B& b) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tessera::kIQ4NLValues)));
    return {_mm256_shuffle_epi8(table, nibbles(b.qs)), _cvtsh_ss(b.d), 0.f};
  }
};

// sum of q[j] * qa[j] per 32-bit lane (8 lanes); signed q by the sign trick
// (|q| <= 127, so vpmaddubsw cannot saturate).
template <bool Signed>
inline __m256i dot32(__m256i q, __m256i a) {
  __m256i p;
  if constexpr (Signed) p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
  else p = _mm256_maddubs_epi16(q, a);
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <class L>
void legacy_rows(const tessera::cpu::MatvecArgs& a, int64_t n0, int64_t n1) {
  constexpr int64_t kRows = 4;  // activation rows sharing one unpacked block
  const int64_t K = a.W->cols(), nb = K / tessera::kQK, M = a.M, N = a.W->rows();
  const tessera::cpu::QuantX& xq = a.xq;
  for (int64_t n = n0; n < n1; ++n) {
    const typename L::B* w = reinterpret_cast<const typename L::B*>(a.W->row(n));
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
      const int64_t mc = std::min(kRows, M - m0);
      __m256 acc[kRows];
      float accm[kRows] = {};
      for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const LBlock lb = L::unpack(w[b]);
        for (int64_t r = 0; r < mc; ++r) {
          const int64_t xb = (m0 + r) * nb + b;
          __m256i isum = dot32<L::kSigned>(lb.q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.qs + 32 * xb)));
          if constexpr (L::kOffset != 0)
            isum = _mm256_add_epi32(isum, _mm256_setr_epi32(-L::kOffset * xq.s[xb], 0, 0, 0, 0, 0, 0, 0));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(lb.d * xq.d[xb]), acc[r]);
          if constexpr (L::kMin) accm[r] += lb.m * std::bit_cast<float>(xq.s[xb]);  // Q8_1: the half d * sum
        }
      }
      for (int64_t r = 0; r < mc; ++r) a.Y[(m0 + r) * N + n] = hsum8(acc[r]) + accm[r];
    }
  }
}

inline void matvec_legacy_impl(const tessera::cpu::MatvecArgs& a, int64_t n0, int64_t n1) {
  using tessera::DType;
  switch (a.W->dtype) {
    case DType::Q4_1: return legacy_rows<LQ4_1>(a, n0, n1);
    case DType::Q5_0: return legacy_rows<LQ5_0>(a, n0, n1);
    case DType::Q5_1: return legacy_rows<LQ5_1>(a, n0, n1);
    default: return legacy_rows<LIQ4_NL>(a, n0, n1);
  }
}
