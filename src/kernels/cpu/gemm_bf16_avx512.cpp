// bf16 GEMM on AVX-512 BF16: C(M, N) (+)= A(M, K) B(N, K)^T with f32 accumulation.
//
// BLIS-style blocking: K in blocks of KC, per thread a range of N in blocks of
// NC. Packed operands hold bf16 pairs (k even in the low half, k odd in the
// high half of a 32-bit word), the layout vdpbf16ps multiplies:
//   A block: for each MR rows: [p][r] words  (MR x KC/2)
//   B block: for each NR = 32 columns: [p][32 lanes] words = two zmm per p
// The micro-kernel keeps an MR x 32 tile of C in 2 * MR zmm accumulators and,
// per k pair, broadcasts one A word per row against the two B vectors.
#include <algorithm>
#include <cstring>

#include "core/fp16.h"
#include "kernels/cpu/simd.h"
#include "kernels/gemm_bf16.h"

namespace tessera::cpu::avx512 {

namespace {

constexpr int64_t MR = 8, NR = 32, KC = 256, NC = 256;

// Packing reads bf16 operands only (f32 ones are converted first, see
// convert_bf16 below). Pairs of k: the low half holds k even.
inline uint16_t elem(const GemmOperand& o, int64_t row, int64_t k) {
  return static_cast<const uint16_t*>(o.p)[row * o.s_row + k * o.s_k];
}

inline uint32_t pair(const GemmOperand& o, int64_t row, int64_t k, int64_t k_end) {
  const uint32_t lo = elem(o, row, k);
  const uint32_t hi = k + 1 < k_end ? elem(o, row, k + 1) : 0u;
  return lo | hi << 16;
}

// A rows [m0, m1) x k [k0, k0 + kc) -> out, MR-row panels, rows past m1 zero.
void pack_a(const GemmOperand& A, int64_t m0, int64_t m1, int64_t k0, int64_t kc, uint32_t* out) {
  const int64_t kp = (kc + 1) / 2, full = kc / 2;
  const auto* base = static_cast<const uint16_t*>(A.p);
  for (int64_t mb = m0; mb < m1; mb += MR) {
    uint32_t* panel = out + ((mb - m0) / MR) * MR * kp;
    const int64_t rows = std::min(MR, m1 - mb);
    if (rows == MR && A.s_row == 1) {  // k-major storage: 8 consecutive rows per k, interleave two k
      for (int64_t p = 0; p < full; ++p) {
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + (k0 + 2 * p) * A.s_k + mb));
        const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + (k0 + 2 * p + 1) * A.s_k + mb));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(panel + p * MR), _mm_unpacklo_epi16(lo, hi));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(panel + p * MR + 4), _mm_unpackhi_epi16(lo, hi));
      }
      for (int64_t p = full; p < kp; ++p)
        for (int64_t r = 0; r < MR; ++r) panel[p * MR + r] = pair(A, mb + r, k0 + 2 * p, k0 + kc);
      continue;
    }
    if (A.s_k == 1) {  // row-major: the pairs are words already
      for (int64_t r = 0; r < MR; ++r) {
        if (r >= rows) {
          for (int64_t p = 0; p < kp; ++p) panel[p * MR + r] = 0u;
          continue;
        }
        const uint16_t* row = base + (mb + r) * A.s_row + k0;
        for (int64_t p = 0; p < full; ++p) std::memcpy(&panel[p * MR + r], row + 2 * p, 4);
        if (kc % 2) panel[(kp - 1) * MR + r] = row[kc - 1];
      }
      continue;
    }
    for (int64_t p = 0; p < kp; ++p)
      for (int64_t r = 0; r < MR; ++r) panel[p * MR + r] = r < rows ? pair(A, mb + r, k0 + 2 * p, k0 + kc) : 0u;
  }
}

// B rows (columns of C) [n0, n0 + nc) x k [k0, k0 + kc) -> out, NR-column panels.
void pack_b(const GemmOperand& B, int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t* out) {
  const int64_t kp = (kc + 1) / 2, full = kc / 2;
  const auto* base = static_cast<const uint16_t*>(B.p);
  for (int64_t j = 0; j < nc; j += NR) {
    uint32_t* panel = out + (j / NR) * NR * kp;
    const int64_t cols = std::min(NR, nc - j);
    if (cols == NR && B.s_row == 1) {  // k-major: 32 consecutive columns per k, interleave two k
      for (int64_t p = 0; p < full; ++p) {
        const uint16_t* r0 = base + (k0 + 2 * p) * B.s_k + n0 + j;
        const uint16_t* r1 = r0 + B.s_k;
        for (int h = 0; h < 2; ++h) {
          const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + 16 * h));
          const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + 16 * h));
          const __m256i a = _mm256_unpacklo_epi16(lo, hi), b = _mm256_unpackhi_epi16(lo, hi);
          // unpack works per 128-bit lane: a = cols 0-3 | 8-11, b = cols 4-7 | 12-15
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + p * NR + 16 * h), _mm256_permute2x128_si256(a, b, 0x20));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + p * NR + 16 * h + 8), _mm256_permute2x128_si256(a, b, 0x31));
        }
      }
      for (int64_t p = full; p < kp; ++p)
        for (int64_t l = 0; l < NR; ++l) panel[p * NR + l] = pair(B, n0 + j + l, k0 + 2 * p, k0 + kc);
      continue;
    }
    if (B.s_k == 1) {  // row-major (weights): the pairs are words already
      for (int64_t l = 0; l < NR; ++l) {
        if (l >= cols) {
          for (int64_t p = 0; p < kp; ++p) panel[p * NR + l] = 0u;
          continue;
        }
        const uint16_t* row = base + (n0 + j + l) * B.s_row + k0;
        for (int64_t p = 0; p < full; ++p) std::memcpy(&panel[p * NR + l], row + 2 * p, 4);
        if (kc % 2) panel[(kp - 1) * NR + l] = row[kc - 1];
      }
      continue;
    }
    for (int64_t p = 0; p < kp; ++p)
      for (int64_t l = 0; l < NR; ++l) panel[p * NR + l] = l < cols ? pair(B, n0 + j + l, k0 + 2 * p, k0 + kc) : 0u;
  }
}

// C tile (rows x cols, rows <= MR, cols <= NR) (+)= A panel . B panel over kp pairs.
void micro(int64_t kp, const uint32_t* a, const uint32_t* b, float* C, int64_t ldc, int64_t rows, int64_t cols,
           bool load_c) {
  __m512 acc[MR][2];
#pragma GCC unroll 8
  for (int64_t r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + p * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + p * NR + 16);
#pragma GCC unroll 8
    for (int64_t r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[p * MR + r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? __mmask16(0xffff) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : 0;
  for (int64_t r = 0; r < rows; ++r) {
    float* c = C + r * ldc;
    __m512 v0 = acc[r][0], v1 = acc[r][1];
    if (load_c) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

}  // namespace

// Words of packing workspace one thread needs for m rows of A.
int64_t gemm_bf16_work_words(int64_t m) { return ((m + MR - 1) / MR) * MR * (KC / 2) + NC * (KC / 2) + 16; }

// f32 -> bf16 (round to nearest even), n values; src and dst dense.
void convert_bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  for (; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

// One thread's block of C: rows [m0, m1), columns [n0, n1); bf16 operands.
void gemm_bf16_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work) {
  uint32_t* ap = work;
  uint32_t* bp = work + ((m1 - m0 + MR - 1) / MR) * MR * (KC / 2);
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0), kp = (kc + 1) / 2;
    const bool load_c = accumulate || k0 > 0;
    pack_a(A, m0, m1, k0, kc, ap);
    for (int64_t nb = n0; nb < n1; nb += NC) {
      const int64_t nc = std::min(NC, n1 - nb);
      pack_b(B, nb, nc, k0, kc, bp);
      for (int64_t mb = m0; mb < m1; mb += MR)
        for (int64_t j = 0; j < nc; j += NR)
          micro(kp, ap + ((mb - m0) / MR) * MR * kp, bp + (j / NR) * NR * kp, C + mb * ldc + nb + j, ldc,
                std::min(MR, m1 - mb), std::min(NR, nc - j), load_c);
    }
  }
  if (K == 0 && !accumulate)
    for (int64_t m = m0; m < m1; ++m) std::fill(C + m * ldc + n0, C + m * ldc + n1, 0.f);
}

}  // namespace tessera::cpu::avx512
