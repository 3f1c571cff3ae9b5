#include "shared/dtype.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;

// Expected bit patterns below are the IEEE 754 encodings, worked by hand:
// bfloat16 = sign, 8 exponent bits (bias 127), 7 mantissa bits;
// binary16 = sign, 5 exponent bits (bias 15), 10 mantissa bits.

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeName(DType::kI32), "I32");
}

TEST(Bf16Test, ExactValues) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(3.0f), 0x4040);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0x4049), 3.140625f);
}

TEST(Bf16Test, RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -7);              // spacing of bf16 values in [1, 2)
  EXPECT_EQ(FloatToBf16(1.0f + ulp / 2), 0x3f80);      // tie: down to even mantissa 0
  EXPECT_EQ(FloatToBf16(1.0f + 3 * ulp / 2), 0x3f82);  // tie: up to even mantissa 2
  EXPECT_EQ(FloatToBf16(1.0f + ulp / 2 + std::ldexp(1.0f, -20)), 0x3f81);  // above the tie
  EXPECT_EQ(FloatToBf16(1.0f + ulp / 2 - std::ldexp(1.0f, -20)), 0x3f80);  // below the tie
  // Mantissa overflow carries into the exponent: just under 2 rounds to 2.
  EXPECT_EQ(FloatToBf16(std::nextafter(2.0f, 0.0f)), 0x4000);
  // FLT_MAX is above the midpoint between bf16's largest finite and 2^128.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
}

TEST(Bf16Test, SubnormalsInfinitiesAndNan) {
  EXPECT_EQ(FloatToBf16(std::ldexp(1.0f, -133)), 0x0001);  // smallest bf16 subnormal
  EXPECT_EQ(Bf16ToFloat(0x0001), std::ldexp(1.0f, -133));
  EXPECT_EQ(FloatToBf16(3 * std::ldexp(1.0f, -134)), 0x0002);  // tie between 1 and 2 units
  EXPECT_EQ(FloatToBf16(std::ldexp(1.0f, -134)), 0x0000);      // tie between 0 and 1 unit
  EXPECT_EQ(FloatToBf16(std::ldexp(1.0f, -149)), 0x0000);      // float's smallest subnormal
  EXPECT_EQ(FloatToBf16(INFINITY), 0x7f80);
  EXPECT_EQ(FloatToBf16(-INFINITY), 0xff80);
  EXPECT_TRUE(std::isinf(Bf16ToFloat(0x7f80)));
  const uint16_t nan = FloatToBf16(NAN);
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);  // still a NaN, not an infinity
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7fc0)));
}

TEST(Bf16Test, EveryBitPatternRoundTrips) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float value = Bf16ToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(value)))) << std::hex << bits;
    } else {
      EXPECT_EQ(FloatToBf16(value), bits) << std::hex << bits;
    }
  }
}

TEST(F16Test, ExactValues) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToF16(0.5f), 0x3800);
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(F16ToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
}

TEST(F16Test, RoundsToNearestEven) {
  const float ulp = std::ldexp(1.0f, -10);
  EXPECT_EQ(FloatToF16(1.0f + ulp / 2), 0x3c00);
  EXPECT_EQ(FloatToF16(1.0f + 3 * ulp / 2), 0x3c02);
  EXPECT_EQ(FloatToF16(1.0f + ulp / 2 + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(FloatToF16(std::nextafter(2.0f, 0.0f)), 0x4000);
  // 65520 is the tie between 65504 and 65536 (= infinity): even wins, which
  // is infinity; anything below stays finite.
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(1e6f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e6f), 0xfc00);
}

TEST(F16Test, SubnormalsInfinitiesAndNan) {
  const float unit = std::ldexp(1.0f, -24);  // smallest f16 subnormal
  EXPECT_EQ(FloatToF16(unit), 0x0001);
  EXPECT_EQ(F16ToFloat(0x0001), unit);
  EXPECT_EQ(FloatToF16(1023 * unit), 0x03ff);  // largest subnormal
  EXPECT_EQ(F16ToFloat(0x03ff), 1023 * unit);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToF16(unit / 2), 0x0000);               // tie: to even (zero)
  EXPECT_EQ(FloatToF16(3 * unit / 2), 0x0002);           // tie: to even (2 units)
  EXPECT_EQ(FloatToF16(-unit), 0x8001);
  // Just under the smallest normal rounds up into it.
  EXPECT_EQ(FloatToF16(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);
  EXPECT_EQ(FloatToF16(INFINITY), 0x7c00);
  EXPECT_EQ(FloatToF16(-INFINITY), 0xfc00);
  EXPECT_TRUE(std::isinf(F16ToFloat(0xfc00)));
  EXPECT_LT(F16ToFloat(0xfc00), 0.0f);
  const uint16_t nan = FloatToF16(NAN);
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7e00)));
}

TEST(F16Test, EveryBitPatternRoundTrips) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float value = F16ToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(value)))) << std::hex << bits;
    } else {
      EXPECT_EQ(FloatToF16(value), bits) << std::hex << bits;
    }
  }
}

TEST(ConvertTest, ArraysMatchScalarConversions) {
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 65504.0f, std::ldexp(1.0f, -24), 1e-30f};
  std::vector<uint16_t> halves(values.size());
  std::vector<float> back(values.size());
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    ConvertFromFloat(values.data(), values.size(), dtype, halves.data());
    ConvertToFloat(halves.data(), dtype, values.size(), back.data());
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t expected =
          dtype == DType::kBF16 ? FloatToBf16(values[i]) : FloatToF16(values[i]);
      EXPECT_EQ(halves[i], expected) << i;
      EXPECT_EQ(back[i], dtype == DType::kBF16 ? Bf16ToFloat(expected) : F16ToFloat(expected)) << i;
    }
  }
  std::vector<float> copy(values.size());
  ConvertFromFloat(values.data(), values.size(), DType::kF32, copy.data());
  EXPECT_EQ(copy, values);
  std::vector<int32_t> ints(3);
  const float small[] = {3.0f, -7.0f, 0.0f};
  ConvertFromFloat(small, 3, DType::kI32, ints.data());
  EXPECT_THAT(ints, ElementsAre(3, -7, 0));
  std::vector<float> from_ints(3);
  ConvertToFloat(ints.data(), DType::kI32, 3, from_ints.data());
  EXPECT_THAT(from_ints, ElementsAre(3.0f, -7.0f, 0.0f));
}

}  // namespace
}  // namespace pdserve
