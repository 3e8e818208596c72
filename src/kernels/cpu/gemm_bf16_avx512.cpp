// bf16 GEMM on AVX-512 BF16: C(M, N) (+)= A(M, K) B(N, K)^T with f32 accumulation.
//
// BLIS-style blocking: K in blocks of at most KC (split evenly, so K = 288
// is one block, not 256 + 32); per thread a block of C whose smaller operand
// stays packed while the other streams through it (see gemm_bf16_block).
// Packed operands hold bf16 pairs (k even in the low half, k odd in the high
// half of a 32-bit word), the layout vdpbf16ps multiplies:
//   A block: for each MR rows: [p][r] words  (MR x kc/2)
//   B block: for each NR columns: [p][NR lanes] words = NR / 16 zmm per p
// Both are the same "panel" layout with width MR or NR. Packing reads f32
// operands directly (rounding to bf16, nearest even, as it goes) or bf16 ones
// as stored; row-major and k-major operands take vectorised paths (an 8 x 8
// word transpose, or an interleave of two k rows), other strides the scalar one.
// The f32 kernel (gemm_f32_block) reads a row-major f32 A in place instead.
// The micro-kernel keeps an MR x NR tile of C in MR * NR / 16 zmm accumulators
// and, per k (pair), broadcasts one A word per row against the NR / 16 B vectors.
#include <algorithm>
#include <cstring>

#include "core/fp16.h"
#include "kernels/cpu/simd.h"
#include "kernels/gemm_bf16.h"

namespace tessera::cpu::avx512 {

namespace {

// Panel widths: MR rows of A; NR<F32> columns of B (f32: 48 = 3 zmm, so the
// 8 x 48 tile has 24 accumulators and 11 loads per 24 FMAs; bf16: 32, which
// the AMX kernel's B panels share). NC: columns of B streamed per block.
constexpr int64_t MR = 8;
template <bool F32>
constexpr int64_t NR = F32 ? 48 : 32;
template <bool F32>
constexpr int64_t NC = F32 ? 6 * NR<F32> : 8 * NR<F32>;
// k per block: bf16 panels hold k pairs (384 k = 192 words per row), f32 panels one k per word.
template <bool F32>
constexpr int64_t KC = F32 ? 256 : 384;
// Packed words per k block row.
template <bool F32>
constexpr int64_t words_of(int64_t kc) {
  return F32 ? kc : (kc + 1) / 2;
}

// The k-block length: K split into equal even blocks of at most KC.
template <bool F32>
inline int64_t k_block(int64_t K) {
  const int64_t nk = (K + KC<F32> - 1) / KC<F32>;
  const int64_t kc = nk ? (K + nk - 1) / nk : 0;
  return std::min(KC<F32>, (kc + 1) & ~int64_t(1));
}

// Element (row, k) of an operand as bf16 bits.
inline uint16_t elem(const GemmOperand& o, int64_t row, int64_t k) {
  const int64_t i = row * o.s_row + k * o.s_k;
  return o.bf16 ? static_cast<const uint16_t*>(o.p)[i] : f32_to_bf16(static_cast<const float*>(o.p)[i]);
}

inline uint32_t pair(const GemmOperand& o, int64_t row, int64_t k, int64_t k_end) {
  const uint32_t lo = elem(o, row, k);
  const uint32_t hi = k + 1 < k_end ? elem(o, row, k + 1) : 0u;
  return lo | hi << 16;
}

// Software prefetch of element i (rows strided by s_k are not a stream the hardware follows well).
inline void prefetch(const GemmOperand& o, int64_t i) {
  _mm_prefetch(o.bf16 ? reinterpret_cast<const char*>(static_cast<const uint16_t*>(o.p) + i)
                      : reinterpret_cast<const char*>(static_cast<const float*>(o.p) + i),
               _MM_HINT_T0);
}

// 8 consecutive elements from i on, as 8 bf16 (xmm).
inline __m128i load8(const GemmOperand& o, int64_t i) {
  if (o.bf16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(o.p) + i));
  return (__m128i)_mm256_cvtneps_pbh(_mm256_loadu_ps(static_cast<const float*>(o.p) + i));
}
// 16 consecutive elements from i on, as 8 bf16 pairs (ymm).
inline __m256i load16(const GemmOperand& o, int64_t i) {
  if (o.bf16) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(o.p) + i));
  return (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(static_cast<const float*>(o.p) + i));
}

// r[j] (8 words each) -> out[j * stride + i] = word j of r[i]: an 8 x 8 transpose.
inline void store_transposed8(__m256i r0, __m256i r1, __m256i r2, __m256i r3, __m256i r4, __m256i r5, __m256i r6,
                              __m256i r7, uint32_t* out, int64_t stride) {
  const __m256 t0 = _mm256_unpacklo_ps(_mm256_castsi256_ps(r0), _mm256_castsi256_ps(r1));
  const __m256 t1 = _mm256_unpackhi_ps(_mm256_castsi256_ps(r0), _mm256_castsi256_ps(r1));
  const __m256 t2 = _mm256_unpacklo_ps(_mm256_castsi256_ps(r2), _mm256_castsi256_ps(r3));
  const __m256 t3 = _mm256_unpackhi_ps(_mm256_castsi256_ps(r2), _mm256_castsi256_ps(r3));
  const __m256 t4 = _mm256_unpacklo_ps(_mm256_castsi256_ps(r4), _mm256_castsi256_ps(r5));
  const __m256 t5 = _mm256_unpackhi_ps(_mm256_castsi256_ps(r4), _mm256_castsi256_ps(r5));
  const __m256 t6 = _mm256_unpacklo_ps(_mm256_castsi256_ps(r6), _mm256_castsi256_ps(r7));
  const __m256 t7 = _mm256_unpackhi_ps(_mm256_castsi256_ps(r6), _mm256_castsi256_ps(r7));
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
  auto st = [&](int j, __m256 v) { _mm256_storeu_ps(reinterpret_cast<float*>(out + j * stride), v); };
  st(0, _mm256_permute2f128_ps(s0, s4, 0x20));
  st(1, _mm256_permute2f128_ps(s1, s5, 0x20));
  st(2, _mm256_permute2f128_ps(s2, s6, 0x20));
  st(3, _mm256_permute2f128_ps(s3, s7, 0x20));
  st(4, _mm256_permute2f128_ps(s0, s4, 0x31));
  st(5, _mm256_permute2f128_ps(s1, s5, 0x31));
  st(6, _mm256_permute2f128_ps(s2, s6, 0x31));
  st(7, _mm256_permute2f128_ps(s3, s7, 0x31));
}

// Element (row, k) of an f32 operand, as its bits.
inline uint32_t f32_bits(const GemmOperand& o, int64_t row, int64_t k) {
  uint32_t u;
  std::memcpy(&u, static_cast<const float*>(o.p) + row * o.s_row + k * o.s_k, 4);
  return u;
}

// Rows [r0, r1) x k [k0, k0 + kc) of O -> W-wide panels at out:
// panel b (rows r0 + b W ..) holds word [p][i] = pair(row, k0 + 2p) of its row i
// (F32: the f32 element (row, k0 + p)); rows past r1 are zero. kp_out (>= the
// words of kc) is the panel's length in words: words past kc's are zero (the
// AMX kernel's k tiles of 16 pairs).
template <int64_t W, bool F32 = false>
void pack(const GemmOperand& O, int64_t r0, int64_t r1, int64_t k0, int64_t kc, uint32_t* out, int64_t kp_out = 0) {
  const int64_t kp = words_of<F32>(kc), full = F32 ? kc : kc / 2;
  if (kp_out < kp) kp_out = kp;
  for (int64_t rb = r0; rb < r1; rb += W) {
    uint32_t* panel = out + ((rb - r0) / W) * W * kp_out;
    if (kp_out > kp) std::fill(panel + kp * W, panel + kp_out * W, 0u);
    const int64_t rows = std::min(W, r1 - rb), groups = rows / 8;  // whole groups of 8 rows
    int64_t p_done = 0;                                             // pairs [0, p_done) done for the groups
    if (F32 && groups && O.s_row == 1) {  // k-major f32: 8 consecutive rows per k, as they are
      const auto* src = static_cast<const float*>(O.p);
      for (int64_t p = 0; p < full; ++p)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = (k0 + p) * O.s_k + rb + 8 * g;
          _mm_prefetch(reinterpret_cast<const char*>(src + i + 8 * O.s_k), _MM_HINT_T0);
          _mm256_storeu_ps(reinterpret_cast<float*>(panel + p * W + 8 * g), _mm256_loadu_ps(src + i));
        }
      p_done = full;
    } else if (F32 && groups && O.s_k == 1) {  // row-major f32: 8 k of 8 rows, transposed
      const auto* src = static_cast<const float*>(O.p);
      for (; p_done + 8 <= full; p_done += 8)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = (rb + 8 * g) * O.s_row + k0 + p_done, s = O.s_row;
          auto ld = [&](int64_t j) { return _mm256_castps_si256(_mm256_loadu_ps(src + i + j * s)); };
          store_transposed8(ld(0), ld(1), ld(2), ld(3), ld(4), ld(5), ld(6), ld(7), panel + p_done * W + 8 * g, W);
        }
    } else if (!F32 && groups && O.s_row == 1) {  // k-major: 8 consecutive rows per k, interleave two k
      for (int64_t p = 0; p < full; ++p)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = (k0 + 2 * p) * O.s_k + rb + 8 * g;
          prefetch(O, i + 8 * O.s_k), prefetch(O, i + 9 * O.s_k);
          const __m128i lo = load8(O, i), hi = load8(O, i + O.s_k);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(panel + p * W + 8 * g), _mm_unpacklo_epi16(lo, hi));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(panel + p * W + 8 * g + 4), _mm_unpackhi_epi16(lo, hi));
        }
      p_done = full;
    } else if (!F32 && groups && O.s_k == 1) {  // row-major: 16 k of 8 rows, transposed as words
      for (; p_done + 8 <= full; p_done += 8)
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t i = (rb + 8 * g) * O.s_row + k0 + 2 * p_done, s = O.s_row;
          store_transposed8(load16(O, i), load16(O, i + s), load16(O, i + 2 * s), load16(O, i + 3 * s),
                            load16(O, i + 4 * s), load16(O, i + 5 * s), load16(O, i + 6 * s), load16(O, i + 7 * s),
                            panel + p_done * W + 8 * g, W);
        }
    }
    for (int64_t p = 0; p < kp; ++p)
      for (int64_t i = p < p_done ? 8 * groups : 0; i < W; ++i)
        panel[p * W + i] = i >= rows ? 0u : F32 ? f32_bits(O, rb + i, k0 + p) : pair(O, rb + i, k0 + 2 * p, k0 + kc);
  }
}

// C tile (rows x cols, rows <= MR, cols <= NR) (+)= A panel . B panel over kp pairs
// (F32: kp single k, one f32 FMA per lane).
// A_ROWS (f32 only): A is read in place, row-major (k contiguous), rows lda
// floats apart; rows past `rows` re-read the last one (their sums are not
// stored), so nothing past the operand is touched.
template <bool F32, bool A_ROWS = false>
void micro(int64_t kp, const uint32_t* a, const uint32_t* b, float* C, int64_t ldc, int64_t rows, int64_t cols,
           bool load_c, int64_t lda = 0) {
  constexpr int NV = int(NR<F32> / 16);  // B vectors per k
  // The C tile is read (or written) after the k loop: fetch its lines now, so
  // the DRAM latency hides behind the products (C of an output layer's dW is
  // tens of MB and is streamed once per k block).
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; c += 16) _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + c), _MM_HINT_T0);
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  if constexpr (F32) {
    // A's element (row r, k p) is ar[r][p * AS]: a packed panel holds the rows of a k side by side.
    constexpr int64_t AS = A_ROWS ? 1 : MR;
    const float* ar[MR];
#pragma GCC unroll 8
    for (int64_t r = 0; r < MR; ++r)
      ar[r] = reinterpret_cast<const float*>(a) + (A_ROWS ? std::min(r, rows - 1) * lda : r);
    const float* bf = reinterpret_cast<const float*>(b);
#pragma GCC unroll 4
    for (int64_t p = 0; p < kp; ++p) {
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(bf + p * NR<F32> + 16 * v);
#pragma GCC unroll 8
      for (int64_t r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(ar[r][p * AS]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
  } else {
    for (int64_t p = 0; p < kp; ++p) {
      __m512bh bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + p * NR<F32> + 16 * v);
#pragma GCC unroll 8
      for (int64_t r = 0; r < MR; ++r) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[p * MR + r]));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
      }
    }
  }
  __mmask16 mask[NV];
  for (int v = 0; v < NV; ++v) {
    const int64_t left = cols - 16 * v;
    mask[v] = left >= 16 ? __mmask16(0xffff) : left > 0 ? __mmask16((1u << left) - 1) : __mmask16(0);
  }
  // Unrolled over all MR rows with a guard, so the accumulators stay in registers.
#pragma GCC unroll 8
  for (int64_t r = 0; r < MR; ++r) {
    if (r >= rows) break;
    float* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 x = acc[r][v];
      if (load_c) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], c + 16 * v));
      _mm512_mask_storeu_ps(c + 16 * v, mask[v], x);
    }
  }
}

}  // namespace

// The bf16 panels of pack<W> for the AMX kernel (W = 16 or 32).
void gemm_pack_bf16_panels(const GemmOperand& O, int64_t W, int64_t r0, int64_t r1, int64_t k0, int64_t kc,
                           int64_t kp_out, uint32_t* out) {
  if (W == 16) return pack<16>(O, r0, r1, k0, kc, out, kp_out);
  pack<32>(O, r0, r1, k0, kc, out, kp_out);
}

// The loop order keeps the smaller operand's whole k block packed (resident,
// in L2) and streams the other through it in blocks (NC columns or MC rows):
// A-resident when m <= n. Packing the larger operand whole would not fit L2
// (the 32000-row dW of an output layer is 12 MB per k block).
inline bool a_resident(int64_t m, int64_t n) { return m <= n; }
inline int64_t round_up(int64_t x, int64_t r) { return (x + r - 1) / r * r; }
constexpr int64_t MC = 64;

// Words of packing workspace one thread needs for an m x n block of C.
template <bool F32>
int64_t work_words(int64_t m, int64_t n) {
  return (a_resident(m, n) ? round_up(m, MR) + NC<F32> : round_up(n, NR<F32>) + MC) * words_of<F32>(KC<F32>) + 16;
}
int64_t gemm_work_words(int64_t m, int64_t n, bool f32) {
  return f32 ? work_words<true>(m, n) : work_words<false>(m, n);
}

int64_t gemm_panel_width(bool f32) { return f32 ? NR<true> : NR<false>; }

// f32 -> bf16 (round to nearest even), n values.
void convert_bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  for (; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

namespace {
// One thread's block of C: rows [m0, m1), columns [n0, n1).
template <bool F32>
void block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate, int64_t m0,
           int64_t m1, int64_t n0, int64_t n1, uint32_t* work) {
  constexpr int64_t nr = NR<F32>, nc_max = NC<F32>;
  const bool a_res = a_resident(m1 - m0, n1 - n0);
  uint32_t* res = work;  // the resident operand's packed k block
  uint32_t* str = work + (a_res ? round_up(m1 - m0, MR) : round_up(n1 - n0, nr)) * words_of<F32>(KC<F32>);  // streamed
  const int64_t kb = k_block<F32>(K);
  // f32 with a row-major A: the micro-kernel broadcasts from A's rows in
  // place (8 sequential streams), so A is never packed.
  const bool a_inplace = F32 && !A.bf16 && A.s_k == 1;
  const float* af = static_cast<const float*>(A.p);
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t kc = std::min(kb, K - k0), kp = words_of<F32>(kc);
    const bool load_c = accumulate || k0 > 0;
    // B's panels for columns [nb, nb + nc): packed into buf, or in place when B comes pre-packed (one k block).
    auto b_panels = [&](int64_t nb, int64_t nc, uint32_t* buf) -> const uint32_t* {
      if (B.packed) return B.packed + (k0 / kb) * round_up(B.packed_n, nr) * words_of<F32>(kb) + (nb / nr) * nr * kp;
      pack<nr, F32>(B, nb, nb + nc, k0, kc, buf);
      return buf;
    };
    // The C tile at (mb, col) (+)= A rows [mb, mb + rows) . the B panel at bp; A's rows are either
    // a packed panel in apanel or, for a row-major f32 A, read in place.
    auto tile = [&](int64_t mb, int64_t rows, const uint32_t* apanel, const uint32_t* bp, int64_t col, int64_t cols) {
      if (a_inplace)
        micro<F32, F32>(kp, reinterpret_cast<const uint32_t*>(af + mb * A.s_row + k0), bp, C + mb * ldc + col, ldc,
                        rows, cols, load_c, A.s_row);
      else
        micro<F32>(kp, apanel, bp, C + mb * ldc + col, ldc, rows, cols, load_c);
    };
    if (a_res) {
      if (!a_inplace) pack<MR, F32>(A, m0, m1, k0, kc, res);
      for (int64_t nb = n0; nb < n1; nb += nc_max) {
        const int64_t nc = std::min(nc_max, n1 - nb);
        const uint32_t* bp = b_panels(nb, nc, str);
        for (int64_t mb = m0; mb < m1; mb += MR)
          for (int64_t j = 0; j < nc; j += nr)
            tile(mb, std::min(MR, m1 - mb), res + ((mb - m0) / MR) * MR * kp, bp + (j / nr) * nr * kp, nb + j,
                 std::min(nr, nc - j));
      }
    } else {
      const uint32_t* bp = b_panels(n0, n1 - n0, res);
      for (int64_t ib = m0; ib < m1; ib += MC) {
        const int64_t mc = std::min(MC, m1 - ib);
        if (!a_inplace) pack<MR, F32>(A, ib, ib + mc, k0, kc, str);
        for (int64_t j = n0; j < n1; j += nr)
          for (int64_t mb = ib; mb < ib + mc; mb += MR)
            tile(mb, std::min(MR, ib + mc - mb), str + ((mb - ib) / MR) * MR * kp, bp + ((j - n0) / nr) * nr * kp, j,
                 std::min(nr, n1 - j));
      }
    }
  }
  if (K == 0 && !accumulate)
    for (int64_t m = m0; m < m1; ++m) std::fill(C + m * ldc + n0, C + m * ldc + n1, 0.f);
}
}  // namespace

void gemm_bf16_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work) {
  block<false>(A, B, K, C, ldc, accumulate, m0, m1, n0, n1, work);
}

// B(N, K) as the panels pack<NR<F32>> writes, k block after k block (the blocks
// block() takes): rows [n0, n1) of them. Returns the words of the whole layout.
namespace {
template <bool F32>
int64_t pack_b_rows(const GemmOperand& B, int64_t N, int64_t K, int64_t n0, int64_t n1, uint32_t* out) {
  constexpr int64_t nr = NR<F32>;
  const int64_t kb = k_block<F32>(K), stride = round_up(N, nr) * words_of<F32>(kb);
  int64_t words = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t kc = std::min(kb, K - k0), kp = words_of<F32>(kc);
    if (out) pack<nr, F32>(B, n0, n1, k0, kc, out + (k0 / kb) * stride + (n0 / nr) * nr * kp);
    words = (k0 / kb) * stride + round_up(N, nr) * kp;
  }
  return words;
}
}  // namespace
int64_t gemm_pack_b_rows(const GemmOperand& B, int64_t N, int64_t K, bool f32, int64_t n0, int64_t n1,
                         uint32_t* out) {
  return f32 ? pack_b_rows<true>(B, N, K, n0, n1, out) : pack_b_rows<false>(B, N, K, n0, n1, out);
}

// The same blocking with f32 panels and f32 FMAs (operands must be f32).
void gemm_f32_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                    int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work) {
  block<true>(A, B, K, C, ldc, accumulate, m0, m1, n0, n1, work);
}

}  // namespace tessera::cpu::avx512
