#include "core/dtype.h"

#include <cctype>
#include <string>

namespace tessera {

int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_0_R4:
    case DType::Q8_0_R4:
      return kQK;
    default:
      return 1;
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
  }
  return 0;
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
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  std::string s(name);
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  // Q4_0_R4 / Q8_0_R4 are run-time layouts, not types a user names.
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q8_G})
    if (s == dtype_name(t)) return t;
  return std::nullopt;
}

}  // namespace tessera
