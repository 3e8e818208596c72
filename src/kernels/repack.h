// Weight layouts rearranged once at load time for a faster kernel on this CPU.
//
// Q4_0 -> Q4_0_R4 and Q8_0 -> Q8_0_R4 (AVX-512 VNNI). A Q4_0 / Q8_0 row is a
// run of 18- / 34-byte blocks { f16 d; qs }, which 64-byte vector loads never
// line up with: the kernels gather bytes and scales with permutes, and four
// rows read side by side are four short streams. The R4 layouts keep the same
// bytes per row but store rows in tiles of 4 (N padded to a multiple of 4 with
// zero rows), and within a tile groups of 16 blocks (512 weights):
//
//   tile t (rows 4t .. 4t+3), 4 * row_bytes(512 G) bytes, G = ceil(K / 512) groups:
//     qs part:     for g < G, for row r < 4: Q bytes (Q4_0: 256, Q8_0: 512);
//                  byte 64 j + 4 b + i (b < 16, i < 4) = qs[4 j + i] of block 16 g + b
//     scales part: for g < G, for row r < 4: the 16 f16 scales of blocks 16 g ..
//
// So one aligned 64-byte load gives 4 consecutive qs bytes of each of 16
// blocks: vpdpbusd sums them into one 32-bit lane per block, the 16 scales are
// one vcvtph2ps, and a tile is one sequential stream. Q4_0 element k of a block
// is the low nibble of qs[k] (k < 16) or the high nibble of qs[k - 16], as in
// Q4_0. Q8_0_R4 stores qs + 128 (qs ^ 0x80), the unsigned operand of vpdpbusd.
//
// Q4_K / Q5_K / Q6_K -> Q4_K_R4 / Q5_K_R4 / Q6_K_R4 (AVX-512 VNNI), the same
// tiles of 4 rows and groups of 512 elements. The 16 32-bit lanes of a group
// are 32-element sub-blocks: lane b is sub-block b % 8 of super-block 2 g + b / 8,
// with unsigned quants q[b][k] (k < 32). Per (group g, row r), in three parts:
//   quants:  256 bytes; byte 64 j + 4 b + i (j, i < 4) holds q[b][4 j + i] & 15
//            in its low nibble and q[b][16 + 4 j + i] & 15 in its high nibble
//            (the Q4_0_R4 arrangement, so the activations expand the same way);
//   high:    Q5_K 64 bytes, byte 4 b + i bit j = bit 4 of q[b][4 j + i], bit
//            4 + j = bit 4 of q[b][16 + 4 j + i]; Q6_K 128 bytes, byte 64 h + 4 b + i
//            bits 2 t, 2 t + 1 = bits 4, 5 of q[b][16 h + 4 t + i]; Q4_K none;
//   scales:  Q4_K / Q5_K 40 bytes: sc[16], m[16] (u8, lane b), f16 d and dmin of
//            super-block 2 g, then of 2 g + 1: x = d sc q - dmin m;
//            Q6_K 36 bytes: sc of elements 0..15 of lane b [16], of 16..31 [16]
//            (i8), f16 d of 2 g and of 2 g + 1: x = d sc (q - 32).
// A tile stores all groups' quants, then all high parts, then all scales, so
// every 64-byte load of quants is aligned. The scales unpacked to a byte per
// sub-block cost 8 bytes per 512 weights over the file (Q6_K: none).
//
// IQ4_NL / Q4_1 / Q5_0 / Q5_1 -> IQ4_NL_R4 / Q4_1_R4 / Q5_0_R4 / Q5_1_R4
// (AVX-512 VNNI), the same tiles and groups of 16
// blocks, and the same bytes per row as the file. Per (group g, row r):
//   quants:  256 bytes, the Q4_0_R4 arrangement of the blocks' nibbles;
//   high:    Q5_0 / Q5_1 64 bytes, bytes 4 b .. 4 b + 3 the 32-bit qh of block b
//            (bit k: bit 4 of element k); IQ4_NL / Q4_1 none;
//   scales:  the 16 f16 d, then (Q4_1 / Q5_1) the 16 f16 m.
// Quants, then high parts, then scales, as the K-quant layouts.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/tensor.h"
#include "kernels/kernels.h"

namespace tessera {

constexpr int64_t kR4Rows = 4;     // rows per tile
constexpr int64_t kR4Blocks = 16;  // blocks per group

// The R4 layout of a file type (Q4_0 -> Q4_0_R4, Q8_0 -> Q8_0_R4, Q4_K ->
// Q4_K_R4, ...); t itself otherwise.
DType r4_type_of(DType t);
// The file type an R4 layout is made from (Q4_0_R4 -> Q4_0, ...); t itself otherwise.
DType r4_file_type(DType t);
// Whether t is one of the K-quant R4 layouts (Q4_K_R4, Q5_K_R4, Q6_K_R4).
bool r4_is_k(DType t);
// Whether t is one of IQ4_NL_R4, Q4_1_R4, Q5_0_R4, Q5_1_R4.
bool r4_is_legacy(DType t);
// Whether W can take its R4 layout on this ISA: a 2-D Q4_0, Q8_0, IQ4_NL, Q4_1,
// Q5_0 or Q5_1 matrix whose rows pad to whole groups of 512 by at most K / 8
// (Llama 2 7B's K = 11008: 256; Gemma 2 2B's 2304: 256; not a 288-wide row),
// or a Q4_K, Q5_K or Q6_K one (K a multiple of 256), on
// AVX-512 (the only kernels for the layouts).
bool r4_applies(const TensorView& W, Isa isa);
// Bytes of the R4 form of an (N, K) matrix of type t: N rounded up to a whole tile.
size_t r4_bytes(DType t, int64_t N, int64_t K);
// Writes W (r4_applies) in its R4 layout into out (r4_bytes bytes; padding
// rows are zero), tiles split across `threads` OpenMP threads.
void repack_r4(const TensorView& W, uint8_t* out, int threads);

// Groups of 512 in a row of K: a last partial group is padded with zero blocks
// (scales 0: they compute to 0): the K-quant layouts a half group (K % 512 ==
// 256), the 32-element block types any whole number of blocks.
inline int64_t r4_groups(int64_t K) { return (K + 511) / 512; }
// Byte offsets inside an R4 tile of type t (Q4_0_R4 / Q8_0_R4, or their file
// types) with K columns: the qs bytes of (row r of the tile, group g) and its 16 scales.
inline int64_t r4_group_qs(DType t) { return t == DType::Q8_0 || t == DType::Q8_0_R4 ? 512 : 256; }
inline size_t r4_qs_offset(DType t, int64_t r, int64_t g) { return size_t((g * kR4Rows + r) * r4_group_qs(t)); }
inline size_t r4_scales_offset(DType t, int64_t K, int64_t r, int64_t g) {
  return size_t(r4_groups(K) * kR4Rows * r4_group_qs(t) + (g * kR4Rows + r) * kR4Blocks * 2);
}
inline size_t r4_tile_bytes(DType t, int64_t K) {
  return size_t(kR4Rows) * dtype_row_bytes(r4_type_of(t), 512 * r4_groups(K));
}

// Byte offsets inside a K-quant R4 tile (type t: the R4 layout or its file type).
// (Inline without calls: the kernels compute them per group with every vector register live.)
constexpr int64_t r4k_high_bytes(DType t) {
  return t == DType::Q5_K_R4 || t == DType::Q5_K ? 64 : t == DType::Q6_K_R4 || t == DType::Q6_K ? 128 : 0;
}
constexpr int64_t r4k_scale_bytes(DType t) { return t == DType::Q6_K_R4 || t == DType::Q6_K ? 36 : 40; }
// A K-quant or legacy tile: per (group, row) 256 bytes of nibbles, then a plane of
// `high` bytes (fifth / sixth bits) per (group, row), then one of `scale` bytes.
inline size_t r4n_qs_offset(int64_t r, int64_t g) { return size_t((g * kR4Rows + r) * 256); }
inline size_t r4n_high_offset(int64_t high, int64_t K, int64_t r, int64_t g) {
  return size_t(r4_groups(K) * kR4Rows * 256 + (g * kR4Rows + r) * high);
}
inline size_t r4n_scales_offset(int64_t high, int64_t scale, int64_t K, int64_t r, int64_t g) {
  return size_t(r4_groups(K) * kR4Rows * (256 + high) + (g * kR4Rows + r) * scale);
}
inline size_t r4k_qs_offset(int64_t r, int64_t g) { return r4n_qs_offset(r, g); }
inline size_t r4k_high_offset(DType t, int64_t K, int64_t r, int64_t g) {
  return r4n_high_offset(r4k_high_bytes(t), K, r, g);
}
inline size_t r4k_scales_offset(DType t, int64_t K, int64_t r, int64_t g) {
  return r4n_scales_offset(r4k_high_bytes(t), r4k_scale_bytes(t), K, r, g);
}

// Row r of a K-quant R4 matrix W into out(K): the scalar reference of the layout.
void r4k_dequantize_row(const TensorView& W, int64_t r, float* out);

// Byte offsets inside a legacy R4 tile (type t: the R4 layout or its file type).
constexpr int64_t r4l_high_bytes(DType t) {
  return t == DType::Q5_0_R4 || t == DType::Q5_0 || t == DType::Q5_1_R4 || t == DType::Q5_1 ? 64 : 0;
}
constexpr int64_t r4l_scale_bytes(DType t) {
  return t == DType::Q4_1_R4 || t == DType::Q4_1 || t == DType::Q5_1_R4 || t == DType::Q5_1 ? 64 : 32;
}
inline size_t r4l_qs_offset(int64_t r, int64_t g) { return r4n_qs_offset(r, g); }
inline size_t r4l_high_offset(DType t, int64_t K, int64_t r, int64_t g) {
  return r4n_high_offset(r4l_high_bytes(t), K, r, g);
}
inline size_t r4l_scales_offset(DType t, int64_t K, int64_t r, int64_t g) {
  return r4n_scales_offset(r4l_high_bytes(t), r4l_scale_bytes(t), K, r, g);
}

// Row r of a legacy R4 matrix W into out(K): the scalar reference of the layout.
void r4l_dequantize_row(const TensorView& W, int64_t r, float* out);

}  // namespace tessera
