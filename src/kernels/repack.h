// Weight layouts rearranged once at load time for a faster kernel on this CPU.
//
// Q4_0 -> Q4_0_R4 (AVX-512 VNNI decode). A Q4_0 row is a run of 18-byte
// blocks { f16 d; u8 qs[16] }, which a 64-byte vector load never lines up
// with: the kernel must gather nibbles and scales with word permutes, and four
// rows read side by side are four short streams. Q4_0_R4 keeps the same bytes
// per row but stores rows in tiles of 4 (N padded to a multiple of 4 with zero
// rows), and within a tile groups of 16 blocks (512 weights):
//
//   tile t (rows 4t .. 4t+3), 4 * row_bytes(K) bytes, G = K / 512 groups:
//     qs part:     for g < G, for row r < 4: 256 bytes; byte 64 j + 4 b + i
//                  (j < 4, b < 16, i < 4) = qs[i + 4 j] of block 16 g + b
//     scales part: for g < G, for row r < 4: the 16 f16 scales of blocks 16 g ..
//
// So one aligned 64-byte load gives 4 consecutive qs bytes of each of 16
// blocks: vpdpbusd sums them into one 32-bit lane per block, the 16 scales are
// one vcvtph2ps, and a tile is one sequential stream. Element k of block b is
// the low nibble of qs[k] (k < 16) or the high nibble of qs[k - 16], as in Q4_0.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/tensor.h"
#include "kernels/kernels.h"

namespace tessera {

constexpr int64_t kR4Rows = 4;      // rows per tile
constexpr int64_t kR4Blocks = 16;   // blocks per group
constexpr int64_t kR4GroupQs = 256; // qs bytes of one row's group

// Whether W can take the Q4_0_R4 layout on this ISA: a 2-D Q4_0 matrix,
// AVX-512 (the only kernel for the layout), K a multiple of 512.
bool q4_0_r4_applies(const TensorView& W, Isa isa);
// Bytes of the Q4_0_R4 form of an (N, K) matrix: N rounded up to a whole tile.
size_t q4_0_r4_bytes(int64_t N, int64_t K);
// Writes W (Q4_0, q4_0_r4_applies) as Q4_0_R4 into out (q4_0_r4_bytes bytes;
// padding rows are zero), tiles split across `threads` OpenMP threads.
void repack_q4_0_r4(const TensorView& W, uint8_t* out, int threads);

// Byte offsets inside a Q4_0_R4 tile (K columns): the qs bytes of (row r of
// the tile, group g) and the 16 scales of the same.
inline size_t r4_qs_offset(int64_t r, int64_t g) { return size_t((g * kR4Rows + r) * kR4GroupQs); }
inline size_t r4_scales_offset(int64_t K, int64_t r, int64_t g) {
  return size_t(K / 512 * kR4Rows * kR4GroupQs + (g * kR4Rows + r) * kR4Blocks * 2);
}
inline size_t r4_tile_bytes(int64_t K) { return size_t(kR4Rows) * dtype_row_bytes(DType::Q4_0, K); }

}  // namespace tessera
