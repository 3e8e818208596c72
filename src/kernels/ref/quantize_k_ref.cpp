// Round-to-nearest quantizers for Q4_K and Q6_K (synthetic weights, tests,
// benchmarks). Simpler than llama.cpp's, which search scales that minimise a
// weighted error: the block layouts are the same, the choice of scales is not.
#include <algorithm>
#include <cmath>

#include "core/fp16.h"
#include "kernels/kernels.h"

namespace tessera::ref {

namespace {
int clampi(float v, int lo, int hi) { return std::clamp(int(std::lround(v)), lo, hi); }
}  // namespace

// Per sub-block of 32: x ~= scale * q - min with min = -min(x, 0), q in 0..15;
// the 8 scales and mins are 6-bit multiples of the block's d and dmin.
void quantize_row_q4_k(const float* x, BlockQ4_K* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    float scale[8], mn[8], dmax = 0.f, mmax = 0.f;
    for (int j = 0; j < 8; ++j) {
      const float* v = x + 32 * j;
      const float lo = std::min(0.f, *std::min_element(v, v + 32)), hi = *std::max_element(v, v + 32);
      scale[j] = (hi - lo) / 15.f;
      mn[j] = -lo;
      dmax = std::max(dmax, scale[j]);
      mmax = std::max(mmax, mn[j]);
    }
    const float d = f16_to_f32(f32_to_f16(dmax / 63.f)), dmin = f16_to_f32(f32_to_f16(mmax / 63.f));
    y[i].d = f32_to_f16(d);
    y[i].dmin = f32_to_f16(dmin);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = uint8_t(d > 0.f ? clampi(scale[j] / d, 0, 63) : 0);
      m[j] = uint8_t(dmin > 0.f ? clampi(mn[j] / dmin, 0, 63) : 0);
    }
    for (int j = 0; j < 4; ++j) {  // the packing k4_scale_min reads
      y[i].scales[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
      y[i].scales[j + 4] = uint8_t(m[j] | ((m[j + 4] >> 4) << 6));
      y[i].scales[j + 8] = uint8_t((sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4));
    }
    for (int p = 0; p < 4; ++p)
      for (int l = 0; l < 32; ++l) {
        int q[2];
        for (int u = 0; u < 2; ++u) {
          const int j = 2 * p + u;
          const float step = d * float(sc[j]);
          q[u] = step > 0.f ? clampi((x[32 * j + l] + dmin * float(m[j])) / step, 0, 15) : 0;
        }
        y[i].qs[32 * p + l] = uint8_t(q[0] | (q[1] << 4));
      }
  }
}

// Per group of 16: x ~= scale * (q - 32), the value of largest magnitude at
// -32; the 16 scales are int8 multiples of the block's d.
void quantize_row_q6_k(const float* x, BlockQ6_K* y, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i, x += kQKK) {
    float scale[16], amax = 0.f;
    for (int g = 0; g < 16; ++g) {
      float big = 0.f;
      for (int l = 0; l < 16; ++l)
        if (std::fabs(x[16 * g + l]) > std::fabs(big)) big = x[16 * g + l];
      scale[g] = big / -32.f;
      amax = std::max(amax, std::fabs(scale[g]));
    }
    const float d = f16_to_f32(f32_to_f16(amax / 127.f));
    y[i].d = f32_to_f16(d);
    uint8_t q[kQKK];
    for (int g = 0; g < 16; ++g) {
      y[i].scales[g] = int8_t(d > 0.f ? clampi(scale[g] / d, -128, 127) : 0);
      const float step = d * float(y[i].scales[g]);
      for (int l = 0; l < 16; ++l)
        q[16 * g + l] = uint8_t(step != 0.f ? clampi(x[16 * g + l] / step + 32.f, 0, 63) : 32);
    }
    for (int hh = 0; hh < 2; ++hh)  // the packing ref/dequant_ref.cpp reads
      for (int l = 0; l < 32; ++l) {
        const uint8_t* v = q + 128 * hh;
        y[i].ql[64 * hh + l] = uint8_t((v[l] & 0xf) | ((v[l + 64] & 0xf) << 4));
        y[i].ql[64 * hh + l + 32] = uint8_t((v[l + 32] & 0xf) | ((v[l + 96] & 0xf) << 4));
        y[i].qh[32 * hh + l] =
            uint8_t((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) | ((v[l + 96] >> 4) << 6));
      }
  }
}

}  // namespace tessera::ref
