// The weight formats: sizes, f16/bf16 conversion, and quantize→dequantize error per type.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/quant/quant.h"

namespace q = trove::quant;

TEST(QuantTraits, BlockSizesMatchGgml) {
  EXPECT_EQ(q::row_bytes(q::GgmlType::F32, 256), 1024u);
  EXPECT_EQ(q::row_bytes(q::GgmlType::F16, 256), 512u);
  EXPECT_EQ(q::row_bytes(q::GgmlType::BF16, 256), 512u);
  EXPECT_EQ(q::row_bytes(q::GgmlType::Q8_0, 256), 8u * 34u);
  EXPECT_EQ(q::row_bytes(q::GgmlType::Q4_K, 512), 2u * 144u);
  EXPECT_EQ(q::row_bytes(q::GgmlType::Q5_K, 256), 176u);
  EXPECT_EQ(q::row_bytes(q::GgmlType::Q6_K, 256), 210u);
}

TEST(QuantTraits, NamesAndIds) {
  EXPECT_EQ(q::ggml_type_name(12), "Q4_K");
  EXPECT_EQ(q::ggml_type_name(16), "IQ2_XXS");
  EXPECT_EQ(q::ggml_type_name(30), "BF16");
  EXPECT_EQ(q::ggml_type_name(999), "type#999");
  EXPECT_FALSE(q::traits_of_id(16).has_value());  // IQ2_XXS: not supported
  EXPECT_EQ(q::parse_type("q6_k"), q::GgmlType::Q6_K);
  EXPECT_FALSE(q::parse_type("Q4_0").has_value());
}

TEST(Half, KnownValues) {
  EXPECT_EQ(q::f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(q::f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(q::f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(q::f32_to_f16(65520.0f), 0x7C00);       // rounds up to inf
  EXPECT_EQ(q::f32_to_f16(5.960464477539063e-8f), 0x0001);  // smallest subnormal
  EXPECT_EQ(q::f32_to_f16(2.0e-8f), 0x0000);
  EXPECT_EQ(q::f32_to_f16(1.0f + 1.0f / 2048), 0x3C00);   // halfway, ties to even
  EXPECT_EQ(q::f32_to_f16(1.0f + 3.0f / 2048), 0x3C02);   // halfway, ties to even (up)
  EXPECT_FLOAT_EQ(q::f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isnan(q::f16_to_f32(q::f32_to_f16(NAN))));
}

TEST(Half, EveryFiniteHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00) continue;  // inf/NaN handled above
    const float f = q::f16_to_f32(static_cast<uint16_t>(h));
    ASSERT_EQ(q::f32_to_f16(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(BFloat16, RoundTripAndRounding) {
  EXPECT_EQ(q::f32_to_bf16(1.0f), 0x3F80);
  EXPECT_FLOAT_EQ(q::bf16_to_f32(0x4049), 3.140625f);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7F80) == 0x7F80) continue;
    ASSERT_EQ(q::f32_to_bf16(q::bf16_to_f32(static_cast<uint16_t>(h))), h);
  }
}

TEST(Q8_0, HandComputedBlock) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = -63.5f;
  x[2] = 1.0f;
  std::vector<uint8_t> buf(34);
  q::quantize_row(q::GgmlType::Q8_0, x.data(), buf.data(), 32);
  q::BlockQ8_0 b;
  std::memcpy(&b, buf.data(), 34);
  EXPECT_EQ(b.d, 0x3C00);  // d = 127/127 = 1
  EXPECT_EQ(b.qs[0], 127);
  EXPECT_EQ(b.qs[1], -64);  // -63.5 rounds to even-away: lrint → -64
  EXPECT_EQ(b.qs[2], 1);
  std::vector<float> y(32);
  q::dequantize_row(q::GgmlType::Q8_0, buf.data(), y.data(), 32);
  EXPECT_EQ(y[0], 127.0f);
  EXPECT_EQ(y[2], 1.0f);
}

// Relative RMS error of a round trip on Gaussian data, per type. The bounds follow from the number of
// levels per (sub-)block: 255 (Q8_0), 63 (Q6_K), 31 (Q5_K), 15 (Q4_K) over a block's range, plus 6-bit
// scale rounding for K-quants.
struct ErrorCase {
  q::GgmlType type;
  double max_rel_rms;
};

class RoundTrip : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(RoundTrip, ErrorWithinBound) {
  const auto [type, bound] = GetParam();
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  const int n = 256 * 64;
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  std::vector<uint8_t> buf(q::row_bytes(type, n));
  std::vector<float> y(n, NAN);
  q::quantize_row(type, x.data(), buf.data(), n);
  q::dequantize_row(type, buf.data(), y.data(), n);
  double err = 0, ref = 0;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(std::isfinite(y[i])) << i;
    err += (x[i] - y[i]) * double(x[i] - y[i]);
    ref += double(x[i]) * x[i];
  }
  const double rel = std::sqrt(err / ref);
  EXPECT_LT(rel, bound) << q::traits(type)->name;
  // And the quantization must not be the identity of zeros: a real signal survives.
  EXPECT_GT(ref, 0.0);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, RoundTrip,
                         ::testing::Values(ErrorCase{q::GgmlType::F32, 1e-12}, ErrorCase{q::GgmlType::F16, 1e-3},
                                           ErrorCase{q::GgmlType::BF16, 5e-3}, ErrorCase{q::GgmlType::Q8_0, 0.01},
                                           ErrorCase{q::GgmlType::Q6_K, 0.04}, ErrorCase{q::GgmlType::Q5_K, 0.06},
                                           ErrorCase{q::GgmlType::Q4_K, 0.12}));

TEST(KQuants, ConstantAndZeroBlocksAreExact) {
  for (auto type : {q::GgmlType::Q4_K, q::GgmlType::Q5_K, q::GgmlType::Q6_K, q::GgmlType::Q8_0}) {
    std::vector<float> zeros(256, 0.0f), y(256, NAN);
    std::vector<uint8_t> buf(q::row_bytes(type, 256));
    q::quantize_row(type, zeros.data(), buf.data(), 256);
    q::dequantize_row(type, buf.data(), y.data(), 256);
    for (float v : y) ASSERT_EQ(v, 0.0f) << q::traits(type)->name;
  }
}
