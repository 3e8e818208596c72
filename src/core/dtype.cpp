#include "core/dtype.h"

#include <cctype>
#include <string>

namespace tessera {

namespace {

// One row per DType, in enum order: what every query below reads.
struct Traits {
  DType t;
  const char* name;
  int64_t block_elems;  // 1 for plain types; Q8_G counts elements, its scales are separate
  size_t block_bytes;
  bool user_named;  // a type a user names (the R4 layouts are run-time only)
  bool quantizer;   // quantize_row() writes it
  bool k_quant;     // a K-quant (super-blocks of 256, Q8_K activations), file or R4 layout
};
constexpr Traits kTraits[] = {
    {DType::F32, "f32", 1, 4, true, true, false},
    {DType::F16, "f16", 1, 2, true, true, false},
    {DType::BF16, "bf16", 1, 2, true, true, false},
    {DType::Q8_0, "q8_0", kQK, sizeof(BlockQ8_0), true, true, false},
    {DType::Q4_0, "q4_0", kQK, sizeof(BlockQ4_0), true, true, false},
    {DType::Q8_G, "q8_g", 1, 1, true, false, false},
    {DType::Q4_0_R4, "q4_0_r4", kQK, sizeof(BlockQ4_0), false, false, false},
    {DType::Q8_0_R4, "q8_0_r4", kQK, sizeof(BlockQ8_0), false, false, false},
    {DType::Q4_1, "q4_1", kQK, sizeof(BlockQ4_1), true, true, false},
    {DType::Q5_0, "q5_0", kQK, sizeof(BlockQ5_0), true, true, false},
    {DType::Q5_1, "q5_1", kQK, sizeof(BlockQ5_1), true, true, false},
    {DType::IQ4_NL, "iq4_nl", kQK, sizeof(BlockIQ4_NL), true, true, false},
    {DType::Q2_K, "q2_k", kQKK, sizeof(BlockQ2_K), true, true, true},
    {DType::Q3_K, "q3_k", kQKK, sizeof(BlockQ3_K), true, true, true},
    {DType::Q4_K, "q4_k", kQKK, sizeof(BlockQ4_K), true, true, true},
    {DType::Q5_K, "q5_k", kQKK, sizeof(BlockQ5_K), true, true, true},
    {DType::Q6_K, "q6_k", kQKK, sizeof(BlockQ6_K), true, true, true},
    {DType::Q8_K, "q8_k", kQKK, sizeof(BlockQ8_K), true, false, true},
    // bytes per 512 elements (kernels/repack.h): quants + high bits + scales
    {DType::Q4_K_R4, "q4_k_r4", 512, 256 + 40, false, false, true},
    {DType::Q5_K_R4, "q5_k_r4", 512, 256 + 64 + 40, false, false, true},
    {DType::Q6_K_R4, "q6_k_r4", 512, 256 + 128 + 36, false, false, true},
    {DType::IQ4_NL_R4, "iq4_nl_r4", kQK, sizeof(BlockIQ4_NL), false, false, false},
    {DType::Q4_1_R4, "q4_1_r4", kQK, sizeof(BlockQ4_1), false, false, false},
    {DType::Q5_0_R4, "q5_0_r4", kQK, sizeof(BlockQ5_0), false, false, false},
    {DType::Q5_1_R4, "q5_1_r4", kQK, sizeof(BlockQ5_1), false, false, false},
};
constexpr bool in_enum_order() {
  for (size_t i = 0; i < std::size(kTraits); ++i)
    if (size_t(kTraits[i].t) != i) return false;
  return true;
}
static_assert(in_enum_order() && std::size(kTraits) == size_t(DType::Q5_1_R4) + 1, "kTraits: one row per DType, in order");

const Traits& traits(DType t) { return kTraits[size_t(t)]; }

}  // namespace

bool dtype_is_k_quant(DType t) { return traits(t).k_quant; }
bool dtype_can_quantize(DType t) { return traits(t).quantizer; }
int64_t dtype_block_elems(DType t) { return traits(t).block_elems; }
size_t dtype_block_bytes(DType t) { return traits(t).block_bytes; }
const char* dtype_name(DType t) { return traits(t).name; }

double dtype_bits_per_weight(DType t) {
  if (t == DType::Q8_G) return 8.0;  // + one f32 scale per group, not counted here
  return 8.0 * double(dtype_block_bytes(t)) / double(dtype_block_elems(t));
}

size_t dtype_row_bytes(DType t, int64_t n) {
  // Whole blocks; a partial one counts whole (only the K-quant R4 layouts pad rows to 512).
  const int64_t be = dtype_block_elems(t);
  return size_t((n + be - 1) / be) * dtype_block_bytes(t);
}

std::optional<DType> dtype_from_name(std::string_view name) {
  std::string s(name);
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (const Traits& r : kTraits)
    if (r.user_named && s == r.name) return r.t;
  return std::nullopt;
}

}  // namespace tessera
