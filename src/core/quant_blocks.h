// llama.cpp's quantized block layouts (ggml-common.h), byte for byte as they
// lie in GGUF files. All multi-byte fields are little-endian; d / m / dmin are
// IEEE halves (f16) unless noted. ref::dequantize_row (kernels/ref) is the
// specification of the values; the formulas are summarised here.
#pragma once
#include <cstdint>

namespace tessera {

constexpr int kQK = 32;    // elements per block of the legacy types (Q4_0 .. Q8_0, IQ4_NL)
constexpr int kQKK = 256;  // elements per block of the K-quants (a "super-block")

// Legacy types. Element j < 16 of a 4-bit block is the low nibble of qs[j],
// element j + 16 the high nibble; the fifth bit of element j is bit j of qh.
struct BlockQ8_0 {  // x = d * qs
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ4_0 {  // x = d * (q - 8)
  uint16_t d;
  uint8_t qs[kQK / 2];
};
struct BlockQ4_1 {  // x = d * q + m
  uint16_t d, m;
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {  // x = d * (q - 16), q = nibble | (bit j of qh) << 4
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {  // x = d * q + m, q as Q5_0
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockIQ4_NL {  // x = d * kIQ4NLValues[nibble], nibbles as Q4_0
  uint16_t d;
  uint8_t qs[kQK / 2];
};
// The non-linear 4-bit grid of IQ4_NL.
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// K-quants: 256 elements in sub-blocks of 16 or 32 with 4- to 8-bit scales
// of their own, times the super-block's f16 d (and dmin for the offset).
struct BlockQ2_K {  // 16 x 16: x = d * (sc & 15) * q - dmin * (sc >> 4), q 2-bit
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d, dmin;
};
struct BlockQ3_K {  // 16 x 16: x = d * (sc - 32) * (q - (hmask bit ? 0 : 4)), sc 6-bit
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
struct BlockQ4_K {  // 8 x 32: x = d * sc * q - dmin * m, sc / m 6-bit packed in scales
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
struct BlockQ5_K {  // as Q4_K with a fifth bit per element in qh
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {  // 16 x 16: x = d * sc * (q - 32), sc int8, q 6-bit (4 in ql, 2 in qh)
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
struct BlockQ8_K {  // x = d * qs, d f32; bsums[i] = sum of qs[16 i .. 16 i + 15]
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 && sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292);

// The 6-bit scale and min of sub-block j (< 8) of a Q4_K / Q5_K block: j < 4
// in the low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4
// with their top 2 bits in the top bits of bytes j - 4 and j.
inline void k4_scale_min(int j, const uint8_t* s, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = uint8_t((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4));
    m = uint8_t((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// The 16 6-bit scales of a Q3_K block, unpacked (still biased by +32): the low
// nibbles are bytes 0..7 (scales 0..7 low, 8..15 high nibble), bits 4-5 come in
// pairs from bytes 8..11 (scale i: byte 8 + i % 4, bits 2 (i / 4)).
inline void k3_scales(const uint8_t* s, int8_t out[16]) {
  for (int i = 0; i < 16; ++i) {
    const int lo = i < 8 ? s[i] & 0xf : s[i - 8] >> 4;
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    out[i] = int8_t(lo | (hi << 4));
  }
}

}  // namespace tessera
