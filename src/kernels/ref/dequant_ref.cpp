// Scalar dequantization of llama.cpp's block types beyond Q4_0 / Q8_0: the
// specification of their values (layouts in core/quant_blocks.h), written from
// the GGUF format description. ref::dequantize_row calls it per row.
#include <cstring>

#include "core/fp16.h"
#include "kernels/kernels.h"

namespace tessera::ref {

namespace {

float h(uint16_t v) { return f16_to_f32(v); }

// Bit j (< 32) of a 4-byte little-endian qh field.
int bit(const uint8_t qh[4], int j) { return (qh[j / 8] >> (j % 8)) & 1; }

void q4_1(const BlockQ4_1* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h(b[i].d), m = h(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * float(b[i].qs[j] & 0xf) + m;
      y[j + 16] = d * float(b[i].qs[j] >> 4) + m;
    }
  }
}

void q5_0(const BlockQ5_0* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * float(((b[i].qs[j] & 0xf) | bit(b[i].qh, j) << 4) - 16);
      y[j + 16] = d * float(((b[i].qs[j] >> 4) | bit(b[i].qh, j + 16) << 4) - 16);
    }
  }
}

void q5_1(const BlockQ5_1* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h(b[i].d), m = h(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * float((b[i].qs[j] & 0xf) | bit(b[i].qh, j) << 4) + m;
      y[j + 16] = d * float((b[i].qs[j] >> 4) | bit(b[i].qh, j + 16) << 4) + m;
    }
  }
}

void iq4_nl(const BlockIQ4_NL* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = h(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * float(kIQ4NLValues[b[i].qs[j] & 0xf]);
      y[j + 16] = d * float(kIQ4NLValues[b[i].qs[j] >> 4]);
    }
  }
}

// Q2_K: element e = 128 h + 32 j + 16 s + l (h < 2, j < 4, s < 2, l < 16) is
// bits 2j..2j+1 of qs[32 h + 16 s + l], with scale byte 8 h + 2 j + s.
void q2_k(const BlockQ2_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = h(b[i].d), dmin = h(b[i].dmin);
    for (int e = 0; e < kQKK; ++e) {
      const int hh = e / 128, j = e % 128 / 32, s = e % 32 / 16, l = e % 16;
      const uint8_t sc = b[i].scales[8 * hh + 2 * j + s];
      const int q = (b[i].qs[32 * hh + 16 * s + l] >> (2 * j)) & 3;
      y[e] = d * float(sc & 0xf) * float(q) - dmin * float(sc >> 4);
    }
  }
}

// Q3_K: as Q2_K for the low 2 bits; the third bit is bit (4 h + j) of
// hmask[16 s + l], and a clear bit subtracts 4. Scale 8 h + 2 j + s.
void q3_k(const BlockQ3_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = h(b[i].d);
    int8_t sc[16];
    k3_scales(b[i].scales, sc);
    for (int e = 0; e < kQKK; ++e) {
      const int hh = e / 128, j = e % 128 / 32, s = e % 32 / 16, l = e % 16;
      const int lo = (b[i].qs[32 * hh + 16 * s + l] >> (2 * j)) & 3;
      const int hi = (b[i].hmask[16 * s + l] >> (4 * hh + j)) & 1;
      y[e] = d * float(sc[8 * hh + 2 * j + s] - 32) * float(lo - (hi ? 0 : 4));
    }
  }
}

// Q4_K / Q5_K: element e = 64 p + 32 u + l (p < 4, u < 2, l < 32) is the low
// (u = 0) or high (u = 1) nibble of qs[32 p + l], sub-block 2 p + u; Q5_K's
// fifth bit is bit 2 p + u of qh[l] (qh null for Q4_K).
void q45_k(uint16_t dh, uint16_t dminh, const uint8_t* scales, const uint8_t* qs, const uint8_t* qh, float* y) {
  const float d = h(dh), dmin = h(dminh);
  for (int e = 0; e < kQKK; ++e) {
    const int p = e / 64, u = e % 64 / 32, l = e % 32;
    uint8_t sc, m;
    k4_scale_min(2 * p + u, scales, sc, m);
    int q = (qs[32 * p + l] >> (4 * u)) & 0xf;
    if (qh) q |= ((qh[l] >> (2 * p + u)) & 1) << 4;
    y[e] = d * float(sc) * float(q) - dmin * float(m);
  }
}

void q4_k(const BlockQ4_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) q45_k(b[i].d, b[i].dmin, b[i].scales, b[i].qs, nullptr, y);
}

void q5_k(const BlockQ5_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) q45_k(b[i].d, b[i].dmin, b[i].scales, b[i].qs, b[i].qh, y);
}

// Q6_K: element e = 128 hh + 32 t + l (hh < 2, t < 4, l < 32): low 4 bits from
// ql[64 hh + l + 32 (t & 1)] (low nibble for t < 2, high for t >= 2), high 2
// bits are bits 2t..2t+1 of qh[32 hh + l]; scale 8 hh + 2 t + l / 16.
void q6_k(const BlockQ6_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = h(b[i].d);
    for (int e = 0; e < kQKK; ++e) {
      const int hh = e / 128, t = e % 128 / 32, l = e % 32;
      const int lo = (b[i].ql[64 * hh + l + 32 * (t & 1)] >> (4 * (t >> 1))) & 0xf;
      const int hi = (b[i].qh[32 * hh + l] >> (2 * t)) & 3;
      y[e] = d * float(b[i].scales[8 * hh + 2 * t + l / 16]) * float((lo | hi << 4) - 32);
    }
  }
}

void q8_k(const BlockQ8_K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK)
    for (int e = 0; e < kQKK; ++e) y[e] = b[i].d * float(b[i].qs[e]);
}

}  // namespace

void dequantize_blocks(DType t, const void* p, int64_t K, float* out) {
  const int64_t nb = K / dtype_block_elems(t);
  switch (t) {
    case DType::Q4_1: return q4_1(static_cast<const BlockQ4_1*>(p), nb, out);
    case DType::Q5_0: return q5_0(static_cast<const BlockQ5_0*>(p), nb, out);
    case DType::Q5_1: return q5_1(static_cast<const BlockQ5_1*>(p), nb, out);
    case DType::IQ4_NL: return iq4_nl(static_cast<const BlockIQ4_NL*>(p), nb, out);
    case DType::Q2_K: return q2_k(static_cast<const BlockQ2_K*>(p), nb, out);
    case DType::Q3_K: return q3_k(static_cast<const BlockQ3_K*>(p), nb, out);
    case DType::Q4_K: return q4_k(static_cast<const BlockQ4_K*>(p), nb, out);
    case DType::Q5_K: return q5_k(static_cast<const BlockQ5_K*>(p), nb, out);
    case DType::Q6_K: return q6_k(static_cast<const BlockQ6_K*>(p), nb, out);
    case DType::Q8_K: return q8_k(static_cast<const BlockQ8_K*>(p), nb, out);
    default: break;
  }
  std::memset(out, 0, size_t(K) * sizeof(float));  // unreachable: the caller handles the other types
}

}  // namespace tessera::ref
