#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/fp16.h"

using namespace tessera;

TEST(Fp16, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(Fp16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -26)), 0x0000);
}

TEST(Bf16, RoundTripAndRounding) {
  for (uint32_t h = 0; h < 65536; h += 7) {
    const float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.f, -8)), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.f, -8)), 0x3f82);
}

TEST(DType, RowBytes) {
  EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 64), 68u);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 64), 36u);
  EXPECT_EQ(dtype_row_bytes(DType::BF16, 3), 6u);
  EXPECT_EQ(dtype_from_name("Q4_0"), DType::Q4_0);
  EXPECT_EQ(dtype_from_name("q5_k"), DType::Q5_K);
  EXPECT_FALSE(dtype_from_name("iq2_xxs").has_value());
}

#include "kernels/ops.h"

TEST(Ops, RopeTablesGiveTheSameNumbersAsRope) {
  for (auto style : {ops::RopeStyle::Interleaved, ops::RopeStyle::HalfSplit}) {
    const int64_t hd = 48, n_pos = 37;
    std::vector<float> cs(size_t(n_pos * hd / 2)), sn(cs.size());
    ops::rope_tables(cs.data(), sn.data(), n_pos, hd, 500000.f);
    for (int64_t p = 0; p < n_pos; p += 5) {
      std::vector<float> a(static_cast<size_t>(hd)), b;
      for (int64_t i = 0; i < hd; ++i) a[size_t(i)] = std::sin(float(i * 7 + p));
      b = a;
      ops::rope(a.data(), hd, hd, p, 500000.f, style);
      ops::rope_apply(b.data(), cs.data() + p * hd / 2, sn.data() + p * hd / 2, hd, style);
      for (int64_t i = 0; i < hd; ++i) EXPECT_EQ(a[size_t(i)], b[size_t(i)]) << "pos " << p << " dim " << i;
      // A rotation keeps the norm of each pair.
    }
  }
}

#include <cstdint>

#include "core/aligned.h"

// huge_allocate: whole 2 MiB pages on a 2 MiB boundary (so THP can back every
// page), every byte usable, any size; huge_vector keeps that through resizes.
TEST(Aligned, HugeAllocationsAreWholeAlignedPages) {
  for (size_t bytes : {size_t(1), size_t(4096), size_t(3) << 20, (size_t(4) << 20) + 17}) {
    auto* p = static_cast<uint8_t*>(tessera::huge_allocate(bytes));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % tessera::kHugePage, 0u) << bytes << " bytes";
    std::memset(p, 0x5a, bytes);
    EXPECT_EQ(p[bytes - 1], 0x5a);
    tessera::huge_deallocate(p, bytes);
  }
  tessera::huge_vector<float> v(1000, 1.f);
  v.resize(size_t(3) << 20, 2.f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % tessera::kHugePage, 0u);
  EXPECT_EQ(v.front(), 1.f);
  EXPECT_EQ(v.back(), 2.f);
}
