// GPU matmul (kernels/ops/matmul.h) against the float64 reference (kernels/ref/matmul_ref.h) on
// fresh random weights and activations, outputs NaN-poisoned before the dispatch. Bound: 1e-5
// relative to the output norm (f32 accumulation over <= 1024 terms). Shapes are small for lavapipe
// (< 5 s on 2 cores; row counts and batches not multiples of the tile); TROVE_KERNEL_FULL=1 adds a Qwen3-8B-sized matvec (4096 x 4096).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ops/matmul.h"
#include "kernels/ref/matmul_ref.h"

using namespace trove;
using quant::GgmlType;

namespace {
constexpr uint32_t kNaN = 0x7fc00000u;

std::unique_ptr<vk::Device> open_device() {
  auto d = vk::Device::open();
  if (!d.ok()) {
    ADD_FAILURE() << d.status().ToString();
    return nullptr;
  }
  return std::move(*d);
}

void check(vk::Device& dev, const ops::Matmul& op, GgmlType type, uint32_t rows, uint32_t cols, uint32_t batch,
           uint64_t seed, double bound = 1e-5, bool x_f16 = false) {
  SCOPED_TRACE(testing::Message() << "type " << static_cast<int>(type) << " " << rows << "x" << cols << " batch " << batch);
  auto wbytes = kernels::ref::random_weights(type, rows, cols, 0.5f, seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t{batch} * cols);
  for (auto& v : x) v = nd(rng);
  // f16 activations: the reference multiplies the same rounded values the GPU reads.
  std::vector<uint16_t> xh;
  if (x_f16) {
    for (auto& v : x) {
      xh.push_back(quant::f32_to_f16(v));
      v = quant::f16_to_f32(xh.back());
    }
  }
  std::vector<float> expect(size_t{batch} * rows);
  ASSERT_TRUE(kernels::ref::matmul({type, rows, cols, wbytes}, x, batch, expect).ok());

  auto wb = dev.buffer((wbytes.size() + 3) / 4 * 4);
  auto xb = dev.buffer(x_f16 ? (xh.size() * 2 + 3) / 4 * 4 : x.size() * 4);
  auto yb = dev.buffer(expect.size() * 4);
  ASSERT_TRUE(wb.ok() && xb.ok() && yb.ok());
  ASSERT_TRUE(wb->upload(wbytes.data(), wbytes.size()).ok());
  ASSERT_TRUE((x_f16 ? xb->upload(xh.data(), xh.size() * 2) : xb->upload(x.data(), x.size() * 4)).ok());
  ASSERT_TRUE(yb->fill(kNaN).ok());
  auto s = dev.stream();
  ASSERT_TRUE(s.ok());
  Status st = op.record(*s, type, rows, cols, batch, *wb, *xb, *yb, 0, x_f16);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_TRUE(s->submit_and_wait().ok());
  std::vector<float> got(expect.size());
  ASSERT_TRUE(yb->download(got.data(), got.size() * 4).ok());
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "output " << i << " not written";
    err2 += (got[i] - expect[i]) * double(got[i] - expect[i]);
    ref2 += double(expect[i]) * expect[i];
  }
  EXPECT_LT(std::sqrt(err2), bound * std::sqrt(ref2));
}
}  // namespace

TEST(Matmul, MatchesReferenceForEachSupportedType) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  uint64_t seed = 1;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_K,
                        GgmlType::Q5_K, GgmlType::Q6_K}) {
    check(*dev, *op, type, 33, 256, 1, seed++);   // decode matvec, odd row count
    check(*dev, *op, type, 17, 1024, 3, seed++);  // small batch, longer rows
    check(*dev, *op, type, 70, 512, 11, seed++);  // batch across two column tiles, partial row group
    if (quant::traits(type)->block_values <= 32) check(*dev, *op, type, 9, 96, 2, seed++);  // one invocation per row
  }
  if (const char* full = std::getenv("TROVE_KERNEL_FULL"); full && std::string(full) == "1") {
    check(*dev, *op, GgmlType::Q4_K, 4096, 4096, 1, seed++);
    check(*dev, *op, GgmlType::Q6_K, 4096, 4096, 1, seed++);
  }
}

// Batches of >= 32 go through the cooperative-matrix shader where the device has matrix units (the
// H100; not lavapipe, which runs the tiled path here): activations are rounded to f16 there, so the
// bound is 2e-3 of the output norm (f16 keeps 11 bits: ~5e-4 per product, f32 sums).
TEST(Matmul, LargeBatchesMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::printf("matmul path for batches >= %u: %s\n", ops::Matmul::kCoopmatMinBatch,
              op->uses_coopmat() ? "cooperative matrix (f16 x f16 -> f32)" : "tiled (f32)");
  uint64_t seed = 100;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    check(*dev, *op, type, 64, 256, 64, seed++, 2e-3);    // one whole tile
    check(*dev, *op, type, 100, 512, 37, seed++, 2e-3);   // partial tiles in both dimensions
  }
}

TEST(Matmul, F16ActivationsMatchReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  uint64_t seed = 200;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    check(*dev, *op, type, 33, 256, 1, seed++, 1e-5, true);    // decode
    check(*dev, *op, type, 70, 512, 11, seed++, 1e-5, true);   // small batch, tiled path
    check(*dev, *op, type, 100, 512, 37, seed++, 2e-3, true);  // matrix units where present
  }
  if (const char* full = std::getenv("TROVE_KERNEL_FULL"); full && std::string(full) == "1") {
    check(*dev, *op, GgmlType::Q4_K, 4096, 4096, 512, seed++, 2e-3);
  }
}

TEST(Matmul, UnsupportedTypeAndBadShapeAreNamed) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::Matmul::create(*dev);
  ASSERT_TRUE(op.ok());
  auto b = dev->buffer(1 << 16);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = op->record(*s, static_cast<GgmlType>(2), 4, 256, 1, *b, *b, *b);  // Q4_0: not supported
  EXPECT_EQ(st.code(), StatusCode::kUnsupported);
  EXPECT_NE(st.message().find("Q4_0"), std::string::npos) << st.message();
  st = op->record(*s, GgmlType::Q8_0, 4, 100, 1, *b, *b, *b);
  EXPECT_NE(st.message().find("multiple of 32"), std::string::npos) << st.message();
  st = op->record(*s, GgmlType::F32, 4096, 4096, 1, *b, *b, *b);
  EXPECT_NE(st.message().find("too small"), std::string::npos) << st.message();
}
