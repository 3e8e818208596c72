// Scalar specification of the activation quantization used by the integer
// paths (Q8_0 / Q4_0 / Q8_G weights): symmetric int8 per block, scale
// amax / 127, round half to even (what SIMD conversions do by default).
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"

namespace tessera::cpu {

void quantize_x_scalar(const float* x, int64_t K, int64_t block, int8_t* qs, float* d, int32_t* s) {
  for (int64_t b = 0; b < K / block; ++b) {
    const float* xb = x + b * block;
    float amax = 0.f;
    for (int64_t k = 0; k < block; ++k) amax = std::fmax(amax, std::fabs(xb[k]));
    const float db = amax / 127.f;
    const float id = db != 0.f ? 1.f / db : 0.f;
    int32_t sum = 0;
    for (int64_t k = 0; k < block; ++k) {
      const int q = int(std::nearbyint(xb[k] * id));
      qs[b * block + k] = int8_t(q);
      sum += q;
    }
    d[b] = db;
    s[b] = sum;
  }
}

}  // namespace tessera::cpu
