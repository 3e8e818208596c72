// Scalar specification of the activation quantization used by the integer
// paths (Q8_0 / Q4_0 / Q8_G weights): symmetric int8 per block, scale
// amax / 127, round half to even (what SIMD conversions do by default).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "kernels/cpu/cpu_kernels.h"

namespace tessera::cpu {

void quantize_x_scalar(const float* x, int64_t K, int64_t block, bool f16_scale, int8_t* qs, float* d, int32_t* s) {
  for (int64_t b = 0; b < K / block; ++b) {
    const float* xb = x + b * block;
    float amax = 0.f;
    for (int64_t k = 0; k < block; ++k) amax = std::fmax(amax, std::fabs(xb[k]));
    const float db = f16_scale ? f16_to_f32(f32_to_f16(amax / 127.f)) : amax / 127.f;
    const float id = amax == 0.f ? 0.f : f16_scale ? 127.f / amax : 1.f / db;
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

namespace tessera::cpu {

// llama.cpp's Q8_K (quantize_row_q8_K_ref): per 256 values, the value of
// largest magnitude v maps to -127 (scale -127 / v, so d = v / -127 may be
// negative), round half to even, clamp at 127; sums per 16 quants.
void quantize_x_q8k(const float* x, int64_t K, int8_t* qs, float* d, int32_t* s) {
  for (int64_t b = 0; b < K / kQKK; ++b) {
    const float* xb = x + b * kQKK;
    float amax = 0.f, vmax = 0.f;
    for (int k = 0; k < kQKK; ++k)
      if (std::fabs(xb[k]) > amax) {
        amax = std::fabs(xb[k]);
        vmax = xb[k];
      }
    const float iscale = amax != 0.f ? -127.f / vmax : 0.f;
    for (int g = 0; g < kQKK / 16; ++g) {
      int32_t sum = 0;
      for (int k = 16 * g; k < 16 * g + 16; ++k) {
        const int q = std::min(127, int(std::nearbyint(iscale * xb[k])));
        qs[b * kQKK + k] = int8_t(q);
        sum += q;
      }
      s[b * (kQKK / 16) + g] = sum;
    }
    d[b] = amax != 0.f ? 1.f / iscale : 0.f;
  }
}

}  // namespace tessera::cpu

namespace tessera::cpu {

void q8_1_sums(const float* x, int64_t K, int32_t* s) {
  for (int64_t b = 0; b < K / kQK; ++b) {
    float amax = 0.f;
    for (int k = 0; k < kQK; ++k) amax = std::max(amax, std::fabs(x[b * kQK + k]));
    const float v = f16_to_f32(f32_to_f16(amax / 127.f * float(s[b])));
    std::memcpy(&s[b], &v, 4);
  }
}

}  // namespace tessera::cpu
