// Element types of weights and activations, with llama.cpp's block layouts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tessera {

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
};

constexpr int kQK = 32;  // elements per Q8_0 / Q4_0 block

struct BlockQ8_0 {
  uint16_t d;  // f16 scale
  int8_t qs[kQK];
};
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);

// Elements per block (1 for plain types; Q8_G counts elements, scales are separate).
int64_t dtype_block_elems(DType t);
// Bytes per block in the main data array.
size_t dtype_block_bytes(DType t);
// Bytes of a row of n elements; n must be a multiple of the block size.
size_t dtype_row_bytes(DType t, int64_t n);
const char* dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);  // "f32", "q8_0", ... (case-insensitive)

}  // namespace tessera
