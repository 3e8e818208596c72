// bf16 GEMM on AMX tiles (Intel AMX-BF16): C(M, N) (+)= A(M, K) B(N, K)^T with
// f32 accumulation, the same contract and blocking as gemm_bf16_avx512.cpp.
//
// A tile product TDPBF16PS multiplies a 16 x 32 bf16 A tile (16 rows of 16
// k pairs) by a 16 x 16 B tile (16 k pairs of 16 columns, "VNNI" pairs) into a
// 16 x 16 f32 C tile: 16 K multiply-adds per cycle-ish, ~16x the vdpbf16ps FMA
// rate. The micro-kernel holds a 32 x 32 block of C in four C tiles and, per 32
// k, loads two A and two B tiles (the eight tiles AMX has).
//   B: the AVX-512 kernel's 32-column panels [p][32 lanes] as they are (a B
//      tile is 16 of the 32 lanes of 16 consecutive p, 128-byte stride).
//   A: per 16 rows, k tile after k tile of [16 rows][16 words] (1 KB each):
//      row-major operands are converted into place; others are packed as
//      16-wide panels [p][16] and transposed 16 x 16 words at a time.
// k blocks hold whole k tiles (zero-padded), so every tile product is whole;
// C edges go through a 32 x 32 buffer.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/fp16.h"
#include "kernels/gemm_bf16.h"

namespace tessera::cpu {

namespace avx512 {
void gemm_pack_bf16_panels(const GemmOperand& O, int64_t W, int64_t r0, int64_t r1, int64_t k0, int64_t kc,
                           int64_t kp_out, uint32_t* out);
}

namespace amx {

namespace {

constexpr int64_t MR = 32, NR = 32, NC = 256, MC = 64, KC = 384;
inline int64_t round_up(int64_t x, int64_t r) { return (x + r - 1) / r * r; }
// Words per row of a k block: whole tiles of 16 pairs.
inline int64_t kp_of(int64_t kc) { return round_up(kc, 32) / 2; }
// K in equal blocks of at most KC, each a whole number of k tiles (32).
inline int64_t k_block(int64_t K) {
  const int64_t nk = (K + KC - 1) / KC;
  return nk ? std::min(KC, round_up((K + nk - 1) / nk, 32)) : 0;
}
inline bool a_resident(int64_t m, int64_t n) { return m <= n; }

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The unpacks and shuffles with an all-ones mask: GCC 12's unmasked forms pass an
// "undefined" source that -Wuninitialized reports; these compile to the same.
inline __m512i unpacklo32(__m512i a, __m512i b) { return _mm512_mask_unpacklo_epi32(a, 0xffff, a, b); }
inline __m512i unpackhi32(__m512i a, __m512i b) { return _mm512_mask_unpackhi_epi32(a, 0xffff, a, b); }
inline __m512i unpacklo64(__m512i a, __m512i b) { return _mm512_mask_unpacklo_epi64(a, 0xff, a, b); }
inline __m512i unpackhi64(__m512i a, __m512i b) { return _mm512_mask_unpackhi_epi64(a, 0xff, a, b); }
template <int Imm>
inline __m512i shuffle128(__m512i a, __m512i b) { return _mm512_mask_shuffle_i32x4(a, 0xffff, a, b, Imm); }

// 16 x 16 32-bit words: out[j * 16 + i] = in[i * 16 + j].
inline void transpose16(const uint32_t* in, uint32_t* out) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(in + i * 16);
  for (int i = 0; i < 16; i += 2) {
    t[i] = unpacklo32(r[i], r[i + 1]);
    t[i + 1] = unpackhi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = unpacklo64(t[i], t[i + 2]);
    r[i + 1] = unpackhi64(t[i], t[i + 2]);
    r[i + 2] = unpacklo64(t[i + 1], t[i + 3]);
    r[i + 3] = unpackhi64(t[i + 1], t[i + 3]);
  }
  // r[4q + s] holds, per 128-bit lane L, rows 4q..4q+3 of column 4L + s.
  for (int i = 0; i < 4; ++i) {
    const __m512i a = r[i], b = r[4 + i], c = r[8 + i], d = r[12 + i];
    const __m512i ab_lo = shuffle128<0x88>(a, b), ab_hi = shuffle128<0xdd>(a, b);
    const __m512i cd_lo = shuffle128<0x88>(c, d), cd_hi = shuffle128<0xdd>(c, d);
    t[i] = shuffle128<0x88>(ab_lo, cd_lo);       // column i (lane 0 of each)
    t[4 + i] = shuffle128<0x88>(ab_hi, cd_hi);   // column 4 + i
    t[8 + i] = shuffle128<0xdd>(ab_lo, cd_lo);   // column 8 + i
    t[12 + i] = shuffle128<0xdd>(ab_hi, cd_hi);  // column 12 + i
  }
  for (int j = 0; j < 16; ++j) _mm512_storeu_si512(out + j * 16, t[j]);
}

// Rows [r0, r1) x k [k0, k0 + kc) of A -> 16-row groups of k tiles [16 rows][16 words]
// (kp words per row, zero past kc and past r1), an even number of groups. tmp: 16 * kp words.
void pack_a(const GemmOperand& A, int64_t r0, int64_t r1, int64_t k0, int64_t kc, int64_t kp, uint32_t* out,
            uint32_t* tmp) {
  const int64_t groups = 2 * ((r1 - r0 + MR - 1) / MR);  // whole 32-row blocks
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rb = r0 + 16 * g;
    uint32_t* grp = out + g * 16 * kp;
    const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(16, r1 - rb));
    if (rows == 0) {
      std::fill(grp, grp + 16 * kp, 0u);
      continue;
    }
    if (A.s_k == 1) {  // row-major: each row's k run converted (f32) or copied (bf16) into its tile rows
      const int64_t full = kc / 32;
      for (int64_t i = 0; i < 16; ++i) {
        for (int64_t t = 0; t < kp / 16; ++t) {
          uint32_t* dst = grp + t * 256 + i * 16;
          if (i >= rows) {
            _mm512_storeu_si512(dst, _mm512_setzero_si512());
            continue;
          }
          const int64_t at = (rb + i) * A.s_row + k0 + 32 * t;
          if (t < full) {
            __m512i v;
            if (A.bf16) {
              v = _mm512_loadu_si512(static_cast<const uint16_t*>(A.p) + at);
            } else {
              const float* s = static_cast<const float*>(A.p) + at;
              v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s));
            }
            _mm512_storeu_si512(dst, v);
          } else {  // the k tail: the remaining kc - 32 t elements, zero after
            alignas(64) uint16_t h[32] = {};
            for (int64_t k = 0; k < kc - 32 * t; ++k)
              h[k] = A.bf16 ? static_cast<const uint16_t*>(A.p)[at + k] : f32_to_bf16(static_cast<const float*>(A.p)[at + k]);
            std::memcpy(dst, h, 64);
          }
        }
      }
      continue;
    }
    avx512::gemm_pack_bf16_panels(A, 16, rb, rb + rows, k0, kc, kp, tmp);  // [p][16]
    for (int64_t t = 0; t < kp / 16; ++t) transpose16(tmp + t * 256, grp + t * 256);
  }
}

// C block (rows x cols <= 32 x 32) (+)= A (two 16-row groups of kt k tiles) . B panel.
void micro(int64_t kt, const uint32_t* a0, const uint32_t* a1, const uint32_t* b, float* C, int64_t ldc, int64_t rows,
           int64_t cols, bool load_c) {
  alignas(64) float buf[32 * 32];
  const bool whole = rows == 32 && cols == 32;
  float* c = whole ? C : buf;
  const int64_t ld = whole ? ldc : 32;
  if (!whole) {
    for (int64_t r = 0; r < 32; ++r)
      for (int64_t j = 0; j < 32; ++j) buf[r * 32 + j] = load_c && r < rows && j < cols ? C[r * ldc + j] : 0.f;
  }
  if (load_c || !whole) {
    _tile_loadd(0, c, ld * 4);
    _tile_loadd(1, c + 16, ld * 4);
    _tile_loadd(2, c + 16 * ld, ld * 4);
    _tile_loadd(3, c + 16 * ld + 16, ld * 4);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t t = 0; t < kt; ++t) {
    _tile_loadd(4, a0 + t * 256, 64);
    _tile_loadd(6, b + t * 16 * NR, NR * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + t * 16 * NR + 16, NR * 4);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + t * 256, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ld * 4);
  _tile_stored(1, c + 16, ld * 4);
  _tile_stored(2, c + 16 * ld, ld * 4);
  _tile_stored(3, c + 16 * ld + 16, ld * 4);
  if (!whole)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(C + r * ldc, buf + r * 32, size_t(cols) * 4);
}

void configure() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  _tile_loadconfig(&cfg);
}
void release() { _tile_release(); }

}  // namespace

// Words of packing workspace one thread needs for an m x n block of C.
int64_t gemm_work_words(int64_t m, int64_t n) {
  const int64_t kw = kp_of(KC);
  return (a_resident(m, n) ? round_up(m, MR) + NC : round_up(n, NR) + MC) * kw + 16 * kw + 16;
}

void gemm_bf16_block(const GemmOperand& A, const GemmOperand& B, int64_t K, float* C, int64_t ldc, bool accumulate,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint32_t* work) {
  if (K == 0) {
    if (!accumulate)
      for (int64_t m = m0; m < m1; ++m) std::fill(C + m * ldc + n0, C + m * ldc + n1, 0.f);
    return;
  }
  configure();
  const bool a_res = a_resident(m1 - m0, n1 - n0);
  const int64_t kw = kp_of(KC);
  uint32_t* res = work;  // the resident operand's packed k block
  uint32_t* str = work + (a_res ? round_up(m1 - m0, MR) : round_up(n1 - n0, NR)) * kw;  // the streamed one
  uint32_t* tmp = str + (a_res ? NC : MC) * kw;                                          // A's transpose source
  const int64_t kb = k_block(K);
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t kc = std::min(kb, K - k0), kp = kp_of(kc), kt = kp / 16;
    const bool load_c = accumulate || k0 > 0;
    auto b_panels = [&](int64_t nb, int64_t nc, uint32_t* buf) -> const uint32_t* {
      if (B.packed) return B.packed + (k0 / kb) * round_up(B.packed_n, NR) * kp_of(kb) + (nb / NR) * NR * kp;
      avx512::gemm_pack_bf16_panels(B, NR, nb, nb + nc, k0, kc, kp, buf);
      return buf;
    };
    // A's 32-row block starting at row mb of a packing that starts at row base.
    auto a_at = [&](const uint32_t* pk, int64_t base, int64_t mb) { return pk + (mb - base) * kp; };
    if (a_res) {
      pack_a(A, m0, m1, k0, kc, kp, res, tmp);
      for (int64_t nb = n0; nb < n1; nb += NC) {
        const int64_t nc = std::min(NC, n1 - nb);
        const uint32_t* bp = b_panels(nb, nc, str);
        for (int64_t mb = m0; mb < m1; mb += MR)
          for (int64_t j = 0; j < nc; j += NR) {
            const uint32_t* a = a_at(res, m0, mb);
            micro(kt, a, a + 16 * kp, bp + (j / NR) * NR * kp, C + mb * ldc + nb + j, ldc, std::min(MR, m1 - mb),
                  std::min(NR, nc - j), load_c);
          }
      }
    } else {
      const uint32_t* bp = b_panels(n0, n1 - n0, res);
      for (int64_t ib = m0; ib < m1; ib += MC) {
        const int64_t mc = std::min(MC, m1 - ib);
        pack_a(A, ib, ib + mc, k0, kc, kp, str, tmp);
        for (int64_t j = n0; j < n1; j += NR)
          for (int64_t mb = ib; mb < ib + mc; mb += MR) {
            const uint32_t* a = a_at(str, ib, mb);
            micro(kt, a, a + 16 * kp, bp + ((j - n0) / NR) * NR * kp, C + mb * ldc + j, ldc,
                  std::min(MR, ib + mc - mb), std::min(NR, n1 - j), load_c);
          }
      }
    }
  }
  release();
}

// B(N, K) as gemm_bf16_block reads a pre-packed B: k block after k block of
// 32-column panels, rows [n0, n1) of them. Returns the words of the whole layout.
int64_t gemm_pack_b_rows(const GemmOperand& B, int64_t N, int64_t K, int64_t n0, int64_t n1, uint32_t* out) {
  const int64_t kb = k_block(K), stride = round_up(N, NR) * kp_of(kb);
  int64_t words = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t kc = std::min(kb, K - k0), kp = kp_of(kc);
    if (out) avx512::gemm_pack_bf16_panels(B, NR, n0, n1, k0, kc, kp, out + (k0 / kb) * stride + (n0 / NR) * NR * kp);
    words = (k0 / kb) * stride + round_up(N, NR) * kp;
  }
  return words;
}

}  // namespace amx
}  // namespace tessera::cpu
