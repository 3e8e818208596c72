// What the R4 kernels (kernels/repack.h) share: the activations' order and the
// loop over tiles. Included by the Q4_0 / Q8_0 and the K-quant R4 kernels
// inside their AVX-512 file's anonymous namespace, so it compiles with that
// file's flags.
#pragma once

// 512 quantized activations x in the weights' order: byte 4 b + i of lo[j] is
// x[32 b + 4 j + i], of hi[j] x[32 b + 16 + 4 j + i] (b < 16, i, j < 4).
// Lanes outside `lanes` are zero and their bytes are not read (a half group).
inline void r4_gather_x(const int8_t* x, __m512i lo[4], __m512i hi[4], __mmask16 lanes = 0xffff) {
  // dword b of each 32-byte block's first / second 16 bytes: 4-byte steps of 32 bytes
  const __m512i idx = _mm512_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120);
  for (int j = 0; j < 4; ++j) {
    lo[j] = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, idx, x + 4 * j, 4);
    hi[j] = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, idx, x + 16 + 4 * j, 4);
  }
}

// Rows [n0, n1) of the R4 matrix of a, with xg its activation groups (X's row m
// at xg + m * r4_groups(K)): calls tile.template operator()<C>(tile bytes, groups,
// y, rows) for passes of C <= CMax activation rows over each tile of 4 weight
// rows, weight rows in blocks of about 256 KiB (they stay in L2 while the
// passes go over them). n0 is a multiple of 4 (the dispatcher splits rows in
// 16s); a partial last tile computes its padding rows, rows says how many are real.
// block(b0, b1), when given, is called before the passes over each block of weight rows [b0, b1).
template <int CMax, class XG, class Tile, class Block = decltype([](int64_t, int64_t) {})>
void r4_for_each_tile(const MatvecArgs& a, int64_t n0, int64_t n1, const XG* xg, Tile&& tile, Block&& block_start = {}) {
  const DType T = a.W->dtype;
  const int64_t K = a.W->cols(), N = a.W->rows(), G = r4_groups(K);
  const auto* w = static_cast<const uint8_t*>(a.W->data);
  const size_t tb = r4_tile_bytes(T, K);
  const int64_t block = rows_per_cache_block(dtype_row_bytes(T, K));
  for (int64_t b0 = n0; b0 < n1; b0 += block) {
    const int64_t b1 = std::min(n1, b0 + block);
    block_start(b0, b1);
    for (int64_t m = 0; m < a.M; m += CMax) {
      const int64_t c = std::min<int64_t>(CMax, a.M - m);
      for (int64_t n = b0; n < b1; n += kR4Rows) {
        const uint8_t* t = w + size_t(n / kR4Rows) * tb;
        const XG* x = xg + m * G;
        float* y = a.Y + m * N + n;
        const int64_t rows = std::min<int64_t>(kR4Rows, b1 - n);
        if constexpr (CMax >= 4) {
          if (c == 4) {
            tile.template operator()<4>(t, x, y, rows);
            continue;
          }
        }
        if constexpr (CMax >= 3) {
          if (c == 3) {
            tile.template operator()<3>(t, x, y, rows);
            continue;
          }
        }
        if (c == 2) tile.template operator()<2>(t, x, y, rows);
        else tile.template operator()<1>(t, x, y, rows);
      }
    }
  }
}
