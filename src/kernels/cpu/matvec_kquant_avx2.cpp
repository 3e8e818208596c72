// AVX2 K-quant (Q2_K .. Q6_K) matrix-vector kernels against Q8_K activations:
// the structure of matvec_kquant_avx512.cpp at 256 bits (kquant_impl.h gives
// the algebra): vpmaddubsw + vpmaddwd with the group scales per 32 quants.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"

namespace tessera::cpu::avx2 {
namespace {

#include "kernels/cpu/kquant_impl.h"
#include "kernels/cpu/legacy_impl.h"

constexpr int64_t kRowsPerPass = 4;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// bsf[(m * nb + i) * 16 + g] = da(m, i) * bs(m, i, g).
const float* expand_sums(const QuantX& xq, int64_t M, float* work, bool ready) {
  auto* bsf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  const int64_t nb = xq.K / kQKK;
  for (int64_t b = 0; b < M * nb && !ready; ++b)
    for (int g = 0; g < 16; ++g) bsf[16 * b + g] = float(xq.s[16 * b + g]) * xq.d[b];
  return bsf;
}

template <class U>
void kq_rows(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), nb = K / kQKK, M = a.M, N = a.W->rows();
  const QuantX& xq = a.xq;
  const float* bsf = expand_sums(xq, M, a.work, a.x_ready);
  KBlock kb;
  for (int64_t n = n0; n < n1; ++n) {
    const auto* w = reinterpret_cast<const typename U::Block*>(a.W->row(n));
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const int64_t mc = std::min(kRowsPerPass, M - m0);
      __m256 acc[kRowsPerPass], accc[kRowsPerPass];
      for (int r = 0; r < kRowsPerPass; ++r) acc[r] = accc[r] = _mm256_setzero_ps();
      for (int64_t i = 0; i < nb; ++i) {
        U::unpack(w[i], kb);
        // 32 quants per register: groups 2 c and 2 c + 1.
        __m256i sv[8];
        for (int c = 0; c < 8; ++c) sv[c] = _mm256_set_m128i(_mm_set1_epi16(kb.S[2 * c + 1]), _mm_set1_epi16(kb.S[2 * c]));
        const __m256 c0 = _mm256_loadu_ps(kb.c), c1 = _mm256_loadu_ps(kb.c + 8);
        for (int64_t r = 0; r < mc; ++r) {
          const int64_t m = m0 + r;
          const int8_t* ax = xq.qs + m * K + i * kQKK;
          __m256i isum = _mm256_setzero_si256();
          for (int c = 0; c < 8; ++c) {
            const __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(kb.q + 32 * c));
            const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ax + 32 * c)));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, sv[c]));
          }
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(kb.d * xq.d[m * nb + i]), acc[r]);
          const float* bs = bsf + 16 * (m * nb + i);
          accc[r] = _mm256_fmadd_ps(_mm256_load_ps(bs), c0, accc[r]);
          accc[r] = _mm256_fmadd_ps(_mm256_load_ps(bs + 8), c1, accc[r]);
        }
      }
      for (int64_t r = 0; r < mc; ++r) a.Y[(m0 + r) * N + n] = hsum(acc[r]) - hsum(accc[r]);
    }
  }
}

}  // namespace

void matvec_kquant(const MatvecArgs& a, int64_t n0, int64_t n1) {
  with_kquant_unpacker(a.W->dtype, [&](auto u) { kq_rows<decltype(u)>(a, n0, n1); });
}

void matvec_legacy(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_legacy_impl(a, n0, n1); }

}  // namespace tessera::cpu::avx2
