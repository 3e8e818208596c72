// AVX-512 K-quant (Q2_K .. Q6_K) matrix-vector kernels against Q8_K
// activations, the integer products llama.cpp computes (kquant_impl.h gives
// the algebra). Per weight block: unpack to 256 unsigned quants and 16 scales
// once, then for each activation row: vpmaddubsw (u8 x s8 -> pairs of i16),
// vpmaddwd with the scales (-> i32 per group), one f32 fma with d * da; the
// group-sum term is one fma with the activation sums, expanded once per call.
#include "kernels/cpu/simd.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"

namespace tessera::cpu::avx512 {
namespace {

#include "kernels/cpu/kquant_impl.h"
#include "kernels/cpu/legacy_impl.h"

constexpr int64_t kRowsPerPass = 4;  // activation rows sharing one unpacked block

// bsf[(m * nb + i) * 16 + g] = da(m, i) * bs(m, i, g), the scaled group sums.
const float* expand_sums(const QuantX& xq, int64_t M, float* work, bool ready) {
  auto* bsf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t(63));
  const int64_t nb = xq.K / kQKK;
  for (int64_t b = 0; b < M * nb && !ready; ++b) {
    const __m512 s = _mm512_cvtepi32_ps(_mm512_loadu_si512(xq.s + 16 * b));
    _mm512_store_ps(bsf + 16 * b, _mm512_mul_ps(s, _mm512_set1_ps(xq.d[b])));
  }
  return bsf;
}

template <class U>
void kq_rows(const MatvecArgs& a, int64_t n0, int64_t n1) {
  const int64_t K = a.W->cols(), nb = K / kQKK, M = a.M, N = a.W->rows();
  const QuantX& xq = a.xq;
  const float* bsf = expand_sums(xq, M, a.work, a.x_ready);
  // Lane j of the scale vector of quarter c (64 quants, 4 groups) is group 4 c + j / 8.
  __m512i sidx[4];
  for (int c = 0; c < 4; ++c) {
    alignas(64) int16_t ix[32];
    for (int j = 0; j < 32; ++j) ix[j] = int16_t(4 * c + j / 8);
    sidx[c] = _mm512_load_si512(ix);
  }
  KBlock kb;
  for (int64_t n = n0; n < n1; ++n) {
    const auto* w = reinterpret_cast<const typename U::Block*>(a.W->row(n));
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const int64_t mc = std::min(kRowsPerPass, M - m0);
      __m512 acc[kRowsPerPass], accc[kRowsPerPass];
      for (int r = 0; r < kRowsPerPass; ++r) acc[r] = accc[r] = _mm512_setzero_ps();
      for (int64_t i = 0; i < nb; ++i) {
        U::unpack(w[i], kb);
        const __m512i S = _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(kb.S)));
        __m512i sv[4], qv[4];
        for (int c = 0; c < 4; ++c) {
          sv[c] = _mm512_permutexvar_epi16(sidx[c], S);
          qv[c] = _mm512_load_si512(kb.q + 64 * c);
        }
        const __m512 cv = _mm512_loadu_ps(kb.c);
        for (int64_t r = 0; r < mc; ++r) {
          const int64_t m = m0 + r;
          const int8_t* ax = xq.qs + m * K + i * kQKK;
          __m512i isum = _mm512_setzero_si512();
          for (int c = 0; c < 4; ++c) {
            const __m512i p = _mm512_maddubs_epi16(qv[c], _mm512_loadu_si512(ax + 64 * c));
            isum = _mm512_add_epi32(isum, _mm512_madd_epi16(p, sv[c]));
          }
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(kb.d * xq.d[m * nb + i]), acc[r]);
          accc[r] = _mm512_fmadd_ps(_mm512_load_ps(bsf + 16 * (m * nb + i)), cv, accc[r]);
        }
      }
      for (int64_t r = 0; r < mc; ++r)
        a.Y[(m0 + r) * N + n] = _mm512_reduce_add_ps(acc[r]) - _mm512_reduce_add_ps(accc[r]);
    }
  }
}

}  // namespace

void matvec_kquant(const MatvecArgs& a, int64_t n0, int64_t n1) {
  with_kquant_unpacker(a.W->dtype, [&](auto u) { kq_rows<decltype(u)>(a, n0, n1); });
}

void matvec_legacy(const MatvecArgs& a, int64_t n0, int64_t n1) { matvec_legacy_impl(a, n0, n1); }

}  // namespace tessera::cpu::avx512
