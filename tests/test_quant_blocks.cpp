// The block formats of llama.cpp's quant types, checked on hand-made blocks:
// each expected value below is worked out by hand from the format description
// (core/quant_blocks.h), not produced by the code under test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"
#include "kernels/kernels.h"

using namespace tessera;

namespace {

constexpr uint16_t kOne = 0x3C00, kHalf = 0x3800;  // f16 1.0 and 0.5

template <class B>
std::vector<float> dequant(DType t, const B& b) {
  const int64_t n = dtype_block_elems(t);
  EXPECT_EQ(sizeof(B), dtype_block_bytes(t)) << dtype_name(t);
  std::vector<float> out(static_cast<size_t>(n)), fast(static_cast<size_t>(n));
  const TensorView v = make_view(t, {1, n}, const_cast<B*>(&b));
  ref::dequantize_row(v, 0, out.data());
  dequantize_row(v, 0, fast.data());  // the ISA dispatch agrees with the reference
  EXPECT_EQ(out, fast) << dtype_name(t);
  return out;
}

TEST(QuantBlocks, LegacyTypes) {
  BlockQ4_1 a{};
  a.d = kOne, a.m = kHalf, a.qs[0] = 0x21, a.qs[15] = 0xF0;
  auto y = dequant(DType::Q4_1, a);  // x = d q + m; low nibbles 0..15, high nibbles 16..31
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[16], 2.5f);
  EXPECT_EQ(y[15], 0.5f);
  EXPECT_EQ(y[31], 15.5f);

  BlockQ5_0 b{};
  b.d = kOne, b.qh[0] = 0x01, b.qh[3] = 0x80, b.qs[0] = 0x21, b.qs[15] = 0xF0;
  y = dequant(DType::Q5_0, b);  // fifth bit of element j = bit j of qh; x = d (q - 16)
  EXPECT_EQ(y[0], 1.f);         // (1 | 16) - 16
  EXPECT_EQ(y[16], -14.f);      // 2 - 16
  EXPECT_EQ(y[15], -16.f);
  EXPECT_EQ(y[31], 15.f);  // (15 | 16) - 16

  BlockQ5_1 c{};
  c.d = kOne, c.m = kHalf, c.qh[0] = 0x01, c.qh[3] = 0x80, c.qs[0] = 0x21, c.qs[15] = 0xF0;
  y = dequant(DType::Q5_1, c);
  EXPECT_EQ(y[0], 17.5f);
  EXPECT_EQ(y[16], 2.5f);
  EXPECT_EQ(y[31], 31.5f);

  BlockIQ4_NL e{};
  e.d = kHalf, e.qs[0] = 0xF0, e.qs[1] = 0x98;
  y = dequant(DType::IQ4_NL, e);  // x = d * table[nibble], table[0] = -127, [15] = 113, [8] = 1, [9] = 13
  EXPECT_EQ(y[0], -63.5f);
  EXPECT_EQ(y[16], 56.5f);
  EXPECT_EQ(y[1], 0.5f);
  EXPECT_EQ(y[17], 6.5f);
}

TEST(QuantBlocks, Q2_KAndQ3_K) {
  BlockQ2_K a{};
  a.d = kOne, a.dmin = kHalf;
  a.scales[0] = 0x23, a.scales[2] = 0x15, a.scales[6] = 0x01, a.scales[8] = 0x42;  // low nibble scale, high min
  a.qs[0] = 0xE4, a.qs[32] = 0x02;
  auto y = dequant(DType::Q2_K, a);  // element 128 h + 32 j + l: bits 2j of qs[32 h + l], group e / 16
  EXPECT_EQ(y[0], -1.f);     // 3 * 0 - 0.5 * 2
  EXPECT_EQ(y[32], 4.5f);    // 5 * 1 - 0.5 * 1
  EXPECT_EQ(y[96], 3.f);     // 1 * 3 - 0
  EXPECT_EQ(y[128], 2.f);    // 2 * 2 - 0.5 * 4
  EXPECT_EQ(y[255], 0.f);

  BlockQ3_K b{};
  b.d = kOne;
  b.scales[0] = 0x52;  // scale 0 low bits 2, scale 8 low bits 5
  b.scales[8] = 0x12;  // scale 0 high bits 2 (-> 34), scale 8 high bits 1 (-> 21)
  b.qs[0] = 0x03, b.qs[32] = 0x01, b.hmask[0] = 0x10;
  y = dequant(DType::Q3_K, b);  // x = d (s - 32) (q - (hmask bit ? 0 : 4))
  EXPECT_EQ(y[0], -2.f);        // (34 - 32) * (3 - 4)
  EXPECT_EQ(y[128], -11.f);     // (21 - 32) * (1 - 0), hmask bit 4 of byte 0
  EXPECT_EQ(y[1], -8.f);        // (34 - 32) * (0 - 4)
}

TEST(QuantBlocks, Q4_KQ5_KQ6_KQ8_K) {
  BlockQ4_K a{};
  a.d = kOne, a.dmin = kHalf;
  a.scales[0] = 0x43, a.scales[4] = 0x82, a.scales[8] = 0x75;  // sc0 3, m0 2; sc4 5 | 1 << 4, m4 7 | 2 << 4
  a.qs[0] = 0xA4, a.qs[64] = 0x02;
  auto y = dequant(DType::Q4_K, a);
  EXPECT_EQ(y[0], 11.f);    // 3 * 4 - 0.5 * 2
  EXPECT_EQ(y[32], 0.f);    // sub-block 1: scale and min 0
  EXPECT_EQ(y[128], 22.5f);  // 21 * 2 - 0.5 * 39

  BlockQ5_K b{};
  b.d = kOne, b.dmin = kHalf;
  b.scales[0] = 0x43, b.scales[4] = 0x82, b.scales[1] = 0x01;
  b.qs[0] = 0xA4, b.qh[0] = 0x03;
  y = dequant(DType::Q5_K, b);
  EXPECT_EQ(y[0], 59.f);   // 3 * (4 | 16) - 0.5 * 2
  EXPECT_EQ(y[32], 26.f);  // 1 * (10 | 16) - 0

  BlockQ6_K c{};
  c.d = kHalf;
  c.scales[0] = -3, c.scales[2] = 4, c.scales[4] = 2;
  c.ql[0] = 0x35, c.ql[32] = 0x07, c.qh[0] = 0x1B;
  y = dequant(DType::Q6_K, c);  // x = d s (q - 32), q = 4 bits of ql | 2 bits of qh << 4
  EXPECT_EQ(y[0], -31.5f);      // 0.5 * -3 * ((5 | 3 << 4) - 32)
  EXPECT_EQ(y[32], 14.f);       // 0.5 * 4 * ((7 | 2 << 4) - 32)
  EXPECT_EQ(y[64], -13.f);      // 0.5 * 2 * ((3 | 1 << 4) - 32)

  BlockQ8_K d{};
  d.d = 0.25f, d.qs[5] = -8;
  y = dequant(DType::Q8_K, d);
  EXPECT_EQ(y[5], -2.f);
  EXPECT_EQ(y[6], 0.f);
}

TEST(QuantBlocks, SizesAndNames) {
  EXPECT_EQ(dtype_bits_per_weight(DType::Q4_K), 4.5);
  EXPECT_EQ(dtype_bits_per_weight(DType::Q6_K), 6.5625);
  EXPECT_EQ(dtype_bits_per_weight(DType::Q4_0), 4.5);
  EXPECT_EQ(dtype_row_bytes(DType::Q3_K, 512), 220u);
  EXPECT_EQ(dtype_from_name("Q5_K"), DType::Q5_K);
  EXPECT_EQ(dtype_from_name("iq4_nl"), DType::IQ4_NL);
  EXPECT_FALSE(dtype_from_name("q4_k_m"));  // a mix, not a type
}

// quantize_row then dequantize: relative RMS error of Gaussian rows (with a
// few outliers, as weights have) within the bound of each type's bits.
// Measured: q8_0 0.83%, q6_k 2.5%, q5_k 4.4%, q5_1 4.6%, q5_0 6.5%, q4_k 8.8%,
// q4_1 9.4%, iq4_nl 10.2%, q4_0 12.9%, q3_k 18.8%, q2_k 29.6%; bounds ~15% above.
TEST(QuantBlocks, QuantizersRoundTrip) {
  const int64_t K = 4096;
  std::vector<float> x(K), y(K);
  uint32_t s = 7;
  auto gauss = [&] {
    double u = 0;
    for (int k = 0; k < 12; ++k) s = s * 1664525u + 1013904223u, u += (s >> 8) / double(1 << 24);
    return float(u - 6);
  };
  for (int64_t i = 0; i < K; ++i) x[i] = 0.02f * gauss() * (i % 97 == 0 ? 8.f : 1.f);
  for (auto [t, bound] : std::vector<std::pair<DType, double>>{
           {DType::Q8_0, 0.0095}, {DType::Q6_K, 0.029}, {DType::Q5_K, 0.05}, {DType::Q5_0, 0.075},
           {DType::Q5_1, 0.053}, {DType::Q4_K, 0.101}, {DType::Q4_0, 0.149}, {DType::Q4_1, 0.108},
           {DType::IQ4_NL, 0.117}, {DType::Q3_K, 0.216}, {DType::Q2_K, 0.34}}) {
    std::vector<uint8_t> q(dtype_row_bytes(t, K));
    quantize_row(t, x.data(), q.data(), K);
    ref::dequantize_row(make_view(t, {1, K}, q.data()), 0, y.data());
    double e = 0, n = 0;
    for (int64_t i = 0; i < K; ++i) e += double(y[i] - x[i]) * (y[i] - x[i]), n += double(x[i]) * x[i];
    const double rel = std::sqrt(e / n);
    EXPECT_LT(rel, bound) << dtype_name(t);
    EXPECT_GT(rel, bound / 4) << dtype_name(t) << ": suspiciously exact";
  }
}

// Values a block can hold exactly come back exactly.
TEST(QuantBlocks, QuantizersKeepRepresentableBlocks) {
  std::vector<float> x(kQK), y(kQK);
  const float d = 0.125f;  // exact in f16
  for (DType t : {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL, DType::Q8_0, DType::Q4_0}) {
    for (int j = 0; j < kQK; ++j) {
      switch (t) {
        case DType::Q4_1: x[j] = d * float(j % 16) - 1.f; break;   // min -1, q 0..15
        case DType::Q5_1: x[j] = d * float(j % 32) - 1.f; break;   // q 0..31
        case DType::Q5_0: x[j] = d * float(j % 32 - 16); break;    // largest magnitude -16 d
        case DType::Q4_0: x[j] = d * float(j % 16 - 8); break;
        case DType::IQ4_NL: x[j] = d * float(kIQ4NLValues[j % 16]); break;
        default: x[j] = d * float(j * 4 - 64 - (j == 0 ? 63 : 0)); break;  // Q8_0: -127 d at j = 0
      }
    }
    std::vector<uint8_t> q(dtype_row_bytes(t, kQK));
    quantize_row(t, x.data(), q.data(), kQK);
    ref::dequantize_row(make_view(t, {1, kQK}, q.data()), 0, y.data());
    for (int j = 0; j < kQK; ++j) EXPECT_EQ(y[j], x[j]) << dtype_name(t) << " element " << j;
  }
}

}  // namespace
