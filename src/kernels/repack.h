// Weight layouts rearranged once at load time for a faster kernel on this CPU.
//
// Q4_0 -> Q4_0_R4 and Q8_0 -> Q8_0_R4 (AVX-512 VNNI). A Q4_0 / Q8_0 row is a
// run of 18- / 34-byte blocks { f16 d; qs }, which 64-byte vector loads never
// line up with: the kernels gather bytes and scales with permutes, and four
// rows read side by side are four short streams. The R4 layouts keep the same
// bytes per row but store rows in tiles of 4 (N padded to a multiple of 4 with
// zero rows), and within a tile groups of 16 blocks (512 weights):
//
//   tile t (rows 4t .. 4t+3), 4 * row_bytes(K) bytes, G = K / 512 groups:
//     qs part:     for g < G, for row r < 4: Q bytes (Q4_0: 256, Q8_0: 512);
//                  byte 64 j + 4 b + i (b < 16, i < 4) = qs[4 j + i] of block 16 g + b
//     scales part: for g < G, for row r < 4: the 16 f16 scales of blocks 16 g ..
//
// So one aligned 64-byte load gives 4 consecutive qs bytes of each of 16
// blocks: vpdpbusd sums them into one 32-bit lane per block, the 16 scales are
// one vcvtph2ps, and a tile is one sequential stream. Q4_0 element k of a block
// is the low nibble of qs[k] (k < 16) or the high nibble of qs[k - 16], as in
// Q4_0. Q8_0_R4 stores qs + 128 (qs ^ 0x80), the unsigned operand of vpdpbusd.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/tensor.h"
#include "kernels/kernels.h"

namespace tessera {

constexpr int64_t kR4Rows = 4;     // rows per tile
constexpr int64_t kR4Blocks = 16;  // blocks per group

// The R4 layout of a file type (Q4_0 -> Q4_0_R4, Q8_0 -> Q8_0_R4); t itself otherwise.
DType r4_type_of(DType t);
// Whether W can take its R4 layout on this ISA: a 2-D Q4_0 or Q8_0 matrix,
// AVX-512 (the only kernels for the layouts), K a multiple of 512.
bool r4_applies(const TensorView& W, Isa isa);
// Bytes of the R4 form of an (N, K) matrix of type t: N rounded up to a whole tile.
size_t r4_bytes(DType t, int64_t N, int64_t K);
// Writes W (r4_applies) in its R4 layout into out (r4_bytes bytes; padding
// rows are zero), tiles split across `threads` OpenMP threads.
void repack_r4(const TensorView& W, uint8_t* out, int threads);

// Byte offsets inside an R4 tile of type t (Q4_0_R4 / Q8_0_R4, or their file
// types) with K columns: the qs bytes of (row r of the tile, group g) and its 16 scales.
inline int64_t r4_group_qs(DType t) { return t == DType::Q8_0 || t == DType::Q8_0_R4 ? 512 : 256; }
inline size_t r4_qs_offset(DType t, int64_t r, int64_t g) { return size_t((g * kR4Rows + r) * r4_group_qs(t)); }
inline size_t r4_scales_offset(DType t, int64_t K, int64_t r, int64_t g) {
  return size_t(K / 512 * kR4Rows * r4_group_qs(t) + (g * kR4Rows + r) * kR4Blocks * 2);
}
inline size_t r4_tile_bytes(DType t, int64_t K) { return size_t(kR4Rows) * dtype_row_bytes(t, K); }

}  // namespace tessera
