// Quantizers for the legacy block types Q4_1, Q5_0, Q5_1 (llama.cpp's
// reference rounding: min / max or signed absmax per block of 32) and IQ4_NL
// (a search over scales for its non-linear grid, weighted by x^2, as
// llama.cpp's quantize_row_iq4_nl without an importance matrix).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "kernels/kernels.h"

namespace tessera::ref {

namespace {

// Element j < 16 into the low nibble of qs[j], j + 16 into the high nibble;
// bit 4 of element j into bit j of qh (when given).
void pack_nibbles(const uint8_t* q, uint8_t* qs, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = uint8_t((q[j] & 0xf) | ((q[j + kQK / 2] & 0xf) << 4));
    h |= uint32_t(q[j] >> 4) << j | uint32_t(q[j + kQK / 2] >> 4) << (j + kQK / 2);
  }
  if (qh) std::memcpy(qh, &h, 4);
}

// x ~= d * q + m, q in [0, nmax]: Q4_1 / Q5_1.
void min_max(const float* x, int nmax, uint16_t& d16, uint16_t& m16, uint8_t* q) {
  const float lo = *std::min_element(x, x + kQK), hi = *std::max_element(x, x + kQK);
  const float d = (hi - lo) / float(nmax), id = d != 0.f ? 1.f / d : 0.f;
  d16 = f32_to_f16(d);
  m16 = f32_to_f16(lo);
  for (int j = 0; j < kQK; ++j) q[j] = uint8_t(std::min(nmax, int((x[j] - lo) * id + 0.5f)));
}

int iq4_nearest(float v) {  // index of the grid value closest to v
  int best = 0;
  for (int k = 1; k < 16; ++k)
    if (std::fabs(float(kIQ4NLValues[k]) - v) < std::fabs(float(kIQ4NLValues[best]) - v)) best = k;
  return best;
}

void iq4_nl(const float* x, BlockIQ4_NL& b) {
  float big = 0.f;
  for (int j = 0; j < kQK; ++j)
    if (std::fabs(x[j]) > std::fabs(big)) big = x[j];
  uint8_t q[kQK] = {};
  if (big == 0.f) {
    b.d = 0;
    for (int j = 0; j < kQK; ++j) q[j] = uint8_t(iq4_nearest(0.f));
    pack_nibbles(q, b.qs, nullptr);
    return;
  }
  // Candidates: the largest value at the grid's end (-127), and inverse scales around it; for each
  // rounding, the weighted least-squares scale; keep the best fit.
  float best_d = big / float(kIQ4NLValues[0]), best_metric = -1.f;
  for (int is = -7; is <= 7; ++is) {
    const float id = (float(kIQ4NLValues[0]) + 0.1f * float(is)) / big;  // llama.cpp: ntry 7, step 0.1
    double sumqx = 0, sumq2 = 0;
    for (int j = 0; j < kQK; ++j) {
      const float w = x[j] * x[j], v = float(kIQ4NLValues[iq4_nearest(id * x[j])]);
      sumqx += w * v * x[j], sumq2 += w * v * v;
    }
    if (sumq2 > 0 && sumqx * sumqx / sumq2 > best_metric) best_metric = float(sumqx * sumqx / sumq2), best_d = float(sumqx / sumq2);
  }
  b.d = f32_to_f16(best_d);
  const float d = f16_to_f32(b.d), id = d != 0.f ? 1.f / d : 0.f;
  for (int j = 0; j < kQK; ++j) q[j] = uint8_t(iq4_nearest(id * x[j]));
  pack_nibbles(q, b.qs, nullptr);
}

}  // namespace

void quantize_legacy(DType t, const float* x, void* out, int64_t n) {
  const int64_t nb = n / kQK;
  uint8_t q[kQK];
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    switch (t) {
      case DType::Q4_1: {
        auto& b = static_cast<BlockQ4_1*>(out)[i];
        min_max(x, 15, b.d, b.m, q);
        pack_nibbles(q, b.qs, nullptr);
        break;
      }
      case DType::Q5_1: {
        auto& b = static_cast<BlockQ5_1*>(out)[i];
        min_max(x, 31, b.d, b.m, q);
        pack_nibbles(q, b.qs, b.qh);
        break;
      }
      case DType::Q5_0: {  // signed absmax at -16: x ~= d * (q - 16)
        auto& b = static_cast<BlockQ5_0*>(out)[i];
        float big = 0.f;
        for (int j = 0; j < kQK; ++j)
          if (std::fabs(x[j]) > std::fabs(big)) big = x[j];
        const float d = big / -16.f, id = d != 0.f ? 1.f / d : 0.f;
        b.d = f32_to_f16(d);
        for (int j = 0; j < kQK; ++j) q[j] = uint8_t(std::min(31, int(x[j] * id + 16.5f)));
        pack_nibbles(q, b.qs, b.qh);
        break;
      }
      case DType::IQ4_NL: iq4_nl(x, static_cast<BlockIQ4_NL*>(out)[i]); break;
      default: fail("quantize_legacy: no quantizer for ", dtype_name(t));
    }
  }
}

}  // namespace tessera::ref
