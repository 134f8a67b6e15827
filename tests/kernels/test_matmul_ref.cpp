// Tests of the matmul reference (kernels/ref/matmul_ref.h), the oracle the matmul shaders are
// checked against. The expected values here are computed independently: exactly in integers for
// the float types, and from a dense dequantized matrix for the quantized types. Runtime < 1 s.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ref/matmul_ref.h"

namespace trove::kernels::ref {
namespace {

using quant::GgmlType;

std::vector<float> nan_filled(size_t n) { return std::vector<float>(n, std::nanf("")); }

// Small integers are exact in F32, F16 and BF16, and their dot products are exact in float, so the
// reference must reproduce the integer result bit for bit; this pins the layout (row-major, input
// dim contiguous) and the batch indexing.
TEST(MatmulRef, FloatTypesExactOnIntegers) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> small(-8, 8);
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    const int64_t rows = 7, cols = 12, batch = 3;
    std::vector<int> wi(rows * cols), xi(batch * cols);
    for (auto& v : wi) v = small(rng);
    for (auto& v : xi) v = small(rng);
    std::vector<float> wf(wi.begin(), wi.end()), x(xi.begin(), xi.end());
    const size_t rb = quant::row_bytes(type, cols);
    std::vector<uint8_t> bytes(rows * rb);
    for (int64_t r = 0; r < rows; ++r) quant::quantize_row(type, wf.data() + r * cols, bytes.data() + r * rb, cols);
    auto y = nan_filled(batch * rows);
    ASSERT_TRUE(matmul({type, rows, cols, bytes}, x, batch, y).ok());
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < rows; ++r) {
        int expect = 0;
        for (int64_t c = 0; c < cols; ++c) expect += wi[r * cols + c] * xi[b * cols + c];
        EXPECT_EQ(y[b * rows + r], static_cast<float>(expect)) << "type " << static_cast<int>(type) << " b " << b << " r " << r;
      }
    }
  }
}

// Every quantized type: against the dense dequantized matrix, and against the original
// (unquantized) values within the format's rounding error.
TEST(MatmulRef, QuantizedTypesMatchDenseMatrix) {
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    for (int64_t batch : {1, 5}) {
      const int64_t rows = 9, cols = 512;
      std::vector<float> dense;
      auto bytes = random_weights(type, rows, cols, 0.5f, 42 + batch, &dense);
      std::mt19937 rng(7);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> x(batch * cols);
      for (auto& v : x) v = nd(rng);
      auto y = nan_filled(batch * rows);
      ASSERT_TRUE(matmul({type, rows, cols, bytes}, x, batch, y).ok());
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < rows; ++r) {
          long double expect = 0;
          for (int64_t c = 0; c < cols; ++c) expect += static_cast<long double>(dense[r * cols + c]) * x[b * cols + c];
          ASSERT_TRUE(std::isfinite(y[b * rows + r]));
          EXPECT_NEAR(y[b * rows + r], static_cast<double>(expect), 1e-5 * (1.0 + std::fabs(static_cast<double>(expect))));
        }
      }
    }
  }
}

TEST(MatmulRef, F16ActivationsWidenExactly) {
  const int64_t rows = 4, cols = 64, batch = 2;
  std::vector<float> dense;
  auto bytes = random_weights(GgmlType::Q8_0, rows, cols, 1.0f, 3, &dense);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> ud(-2.0f, 2.0f);
  std::vector<quant::f16_bits> xh(batch * cols);
  std::vector<float> xf(batch * cols);
  for (size_t i = 0; i < xh.size(); ++i) {
    xh[i] = quant::f32_to_f16(ud(rng));
    xf[i] = quant::f16_to_f32(xh[i]);
  }
  auto y16 = nan_filled(batch * rows), y32 = nan_filled(batch * rows);
  WeightMatrix w{GgmlType::Q8_0, rows, cols, bytes};
  ASSERT_TRUE(matmul_f16(w, xh, batch, y16).ok());
  ASSERT_TRUE(matmul(w, xf, batch, y32).ok());
  EXPECT_EQ(y16, y32);
}

TEST(MatmulRef, BadShapesAreNamed) {
  std::vector<uint8_t> bytes(quant::row_bytes(GgmlType::Q4_K, 256) * 2);
  std::vector<float> x(256), y(2);
  Status s = matmul({GgmlType::Q4_K, 2, 100, bytes}, x, 1, y);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("multiple of 256"), std::string::npos) << s.message();
  s = matmul({GgmlType::Q4_K, 3, 256, bytes}, x, 1, y);
  EXPECT_NE(s.message().find("bytes"), std::string::npos) << s.message();
  s = matmul({GgmlType::Q4_K, 2, 256, bytes}, x, 2, y);
  EXPECT_NE(s.message().find("activations"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace trove::kernels::ref
