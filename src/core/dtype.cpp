#include "core/dtype.h"

#include <cctype>
#include <string>

namespace tessera {

bool dtype_is_k_quant(DType t) {
  switch (t) {
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::Q8_K: return true;
    default: return false;
  }
}

bool dtype_can_quantize(DType t) {
  switch (t) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_K:
    case DType::Q6_K: return true;
    default: return false;
  }
}

int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_0_R4:
    case DType::Q8_0_R4:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::IQ4_NL: return kQK;
    default: return dtype_is_k_quant(t) ? kQKK : 1;
  }
}

size_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::Q8_0:
    case DType::Q8_0_R4: return sizeof(BlockQ8_0);
    case DType::Q4_0:
    case DType::Q4_0_R4: return sizeof(BlockQ4_0);
    case DType::Q8_G: return 1;
    case DType::Q4_1: return sizeof(BlockQ4_1);
    case DType::Q5_0: return sizeof(BlockQ5_0);
    case DType::Q5_1: return sizeof(BlockQ5_1);
    case DType::IQ4_NL: return sizeof(BlockIQ4_NL);
    case DType::Q2_K: return sizeof(BlockQ2_K);
    case DType::Q3_K: return sizeof(BlockQ3_K);
    case DType::Q4_K: return sizeof(BlockQ4_K);
    case DType::Q5_K: return sizeof(BlockQ5_K);
    case DType::Q6_K: return sizeof(BlockQ6_K);
    case DType::Q8_K: return sizeof(BlockQ8_K);
  }
  return 0;
}

double dtype_bits_per_weight(DType t) {
  if (t == DType::Q8_G) return 8.0;  // + one f32 scale per group, not counted here
  return 8.0 * double(dtype_block_bytes(t)) / double(dtype_block_elems(t));
}

size_t dtype_row_bytes(DType t, int64_t n) {
  return size_t(n / dtype_block_elems(t)) * dtype_block_bytes(t);
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
    case DType::Q8_G: return "q8_g";
    case DType::Q4_0_R4: return "q4_0_r4";
    case DType::Q8_0_R4: return "q8_0_r4";
    case DType::Q4_1: return "q4_1";
    case DType::Q5_0: return "q5_0";
    case DType::Q5_1: return "q5_1";
    case DType::IQ4_NL: return "iq4_nl";
    case DType::Q2_K: return "q2_k";
    case DType::Q3_K: return "q3_k";
    case DType::Q4_K: return "q4_k";
    case DType::Q5_K: return "q5_k";
    case DType::Q6_K: return "q6_k";
    case DType::Q8_K: return "q8_k";
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  std::string s(name);
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  // Q4_0_R4 / Q8_0_R4 are run-time layouts, not types a user names.
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_G, DType::Q4_1, DType::Q5_0,
                  DType::Q5_1, DType::IQ4_NL, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K,
                  DType::Q8_K})
    if (s == dtype_name(t)) return t;
  return std::nullopt;
}

}  // namespace tessera
