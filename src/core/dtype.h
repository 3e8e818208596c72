// Element types of weights and activations, with llama.cpp's block layouts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "core/quant_blocks.h"

namespace tessera {

// Adding a type: one row in dtype.cpp's table, plus its ggml id (formats/gguf.cpp) and kernels.
enum class DType : uint8_t {
  F32,
  F16,
  BF16,
  Q8_0,  // blocks of 32: { f16 d; int8 qs[32]; }           34 bytes, x = d * q
  Q4_0,  // blocks of 32: { f16 d; uint8 qs[16]; }          18 bytes, x = d * (nibble - 8);
         //   element j < 16 is the low nibble of qs[j], element j + 16 the high nibble
  Q8_G,  // llama2.c "ak42" int8: int8 values with one f32 scale per group of
         //   `group` elements; the scales live in a separate array (TensorView::scales)
  Q4_0_R4,  // internal, never in a file: Q4_0 / Q8_0 repacked at load for the AVX-512
  Q8_0_R4,  //   kernels (kernels/repack.h), the same bytes per row, rows in tiles of 4
  // The rest of llama.cpp's block types (layouts and formulas in core/quant_blocks.h).
  Q4_1,
  Q5_0,
  Q5_1,
  IQ4_NL,
  Q2_K,
  Q3_K,
  Q4_K,
  Q5_K,
  Q6_K,
  Q8_K,  // the activation type of the K-quant dot products; loadable as a weight too
  Q4_K_R4,  // internal, never in a file: Q4_K / Q5_K / Q6_K repacked at load for the
  Q5_K_R4,  //   AVX-512 kernels (kernels/repack.h): rows in tiles of 4, blocks of 512
  Q6_K_R4,  //   elements with the scales unpacked to one byte per 32 (16 for Q6_K)
  IQ4_NL_R4,  // internal, never in a file: IQ4_NL / Q4_1 / Q5_0 / Q5_1 repacked at
  Q4_1_R4,    //   load for the AVX-512 kernels (kernels/repack.h): rows in tiles of 4,
  Q5_0_R4,    //   groups of 16 blocks, the same bytes per row as the file
  Q5_1_R4,
};


// Whether t is a K-quant: Q2_K .. Q8_K (super-blocks of 256) or a K-quant R4 layout.
bool dtype_is_k_quant(DType t);
// Bits per weight of a block type (f32: 32, q4_0: 4.5, q4_k: 4.5, ...).
double dtype_bits_per_weight(DType t);
// Whether quantize_row() can write type t (f32, f16, bf16, q8_0, q4_0, ...).
bool dtype_can_quantize(DType t);
// Elements per block (1 for plain types; Q8_G counts elements, scales are separate).
int64_t dtype_block_elems(DType t);
// Bytes per block in the main data array.
size_t dtype_block_bytes(DType t);
// Bytes of a row of n elements: whole blocks (n a multiple of the block size, except
// the K-quant R4 layouts, whose rows are padded to whole groups of 512).
size_t dtype_row_bytes(DType t, int64_t n);
const char* dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);  // "f32", "q8_0", ... (case-insensitive)

}  // namespace tessera
