// The f16-output layer ops of prefill (RmsNormF16, SwiGluF16 in kernels/ops/layer_ops.h) against the
// f32 references of kernels/ref/layer_ref.h rounded to f16: each output within one f16 ulp of the
// rounded reference (the GPU's f32 math differs from the reference's by ~1e-7 relative, which can
// move a value across a rounding boundary, never further). Fresh random inputs, NaN-poisoned
// outputs, odd row counts; Qwen3-8B widths. < 2 s on lavapipe.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/ops/layer_ops.h"
#include "kernels/quant/quant.h"
#include "kernels/ref/layer_ref.h"

using namespace trove;

namespace {
std::unique_ptr<vk::Device> open_device() {
  auto d = vk::Device::open();
  if (!d.ok()) {
    ADD_FAILURE() << d.status().ToString();
    return nullptr;
  }
  return std::move(*d);
}

vk::Buffer upload(vk::Device& dev, const std::vector<float>& v) {
  auto b = dev.buffer(v.size() * 4);
  EXPECT_TRUE(b.ok());
  EXPECT_TRUE(b->upload(v.data(), v.size() * 4).ok());
  return std::move(*b);
}

// Every half within one f16 ulp of f16(want); none left NaN.
void expect_f16_close(const std::vector<uint16_t>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = quant::f16_to_f32(got[i]);
    ASSERT_TRUE(std::isfinite(g)) << "output " << i << " not written";
    const float w = quant::f16_to_f32(quant::f32_to_f16(want[i]));
    const float ulp = std::max(std::ldexp(1.0f, std::ilogb(std::max(std::fabs(w), 6.1e-5f)) - 10), 5.97e-8f);
    ASSERT_LE(std::fabs(g - w), ulp * 1.01f) << "output " << i << ": got " << g << " want " << want[i];
  }
}
}  // namespace

TEST(LayerOpsF16, RmsNormF16MatchesRoundedReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::RmsNormF16::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto [rows, ncols] : {std::pair<uint32_t, uint32_t>{37, 4096}, {5, 130}, {1, 2}}) {
    std::vector<float> x(size_t{rows} * ncols), w(ncols), want(x.size());
    for (auto& v : x) v = nd(rng) * 3.0f;
    for (auto& v : w) v = 0.5f + 0.1f * nd(rng);
    ref::rms_norm(x.data(), w.data(), want.data(), rows, ncols, 1e-6f);
    auto xb = upload(*dev, x), wb = upload(*dev, w);
    auto ob = dev->buffer((x.size() * 2 + 3) / 4 * 4);
    ASSERT_TRUE(ob.ok());
    ASSERT_TRUE(ob->fill(0x7e007e00u).ok());  // f16 NaN pairs
    auto s = dev->stream();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(op->record(*s, xb, wb, *ob, rows, ncols, 1e-6f).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint16_t> got(x.size());
    ASSERT_TRUE(ob->download(got.data(), got.size() * 2).ok());
    expect_f16_close(got, want);
  }
}

TEST(LayerOpsF16, SwiGluF16MatchesRoundedReference) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto op = ops::SwiGluF16::create(*dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(12);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (uint32_t n : {37u * 12288u, 2u, 1000u}) {
    std::vector<float> g(n), u(n), want(n);
    for (auto& v : g) v = nd(rng);
    for (auto& v : u) v = nd(rng);
    ref::swiglu(g.data(), u.data(), want.data(), n);
    auto gb = upload(*dev, g), ub = upload(*dev, u);
    auto ob = dev->buffer((size_t{n} * 2 + 3) / 4 * 4);
    ASSERT_TRUE(ob.ok());
    ASSERT_TRUE(ob->fill(0x7e007e00u).ok());
    auto s = dev->stream();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(op->record(*s, gb, ub, *ob, n).ok());
    ASSERT_TRUE(s->submit_and_wait().ok());
    std::vector<uint16_t> got(n);
    ASSERT_TRUE(ob->download(got.data(), got.size() * 2).ok());
    expect_f16_close(got, want);
  }
}

TEST(LayerOpsF16, OddWidthsAreRefusedByName) {
  auto dev = open_device();
  ASSERT_TRUE(dev);
  auto rms = ops::RmsNormF16::create(*dev);
  auto swi = ops::SwiGluF16::create(*dev);
  ASSERT_TRUE(rms.ok() && swi.ok());
  auto b = dev->buffer(4096);
  ASSERT_TRUE(b.ok());
  auto s = dev->stream();
  ASSERT_TRUE(s.ok());
  Status st = rms->record(*s, *b, *b, *b, 2, 7, 1e-6f);
  EXPECT_NE(st.message().find("even"), std::string::npos) << st.message();
  st = swi->record(*s, *b, *b, *b, 9);
  EXPECT_NE(st.message().find("even"), std::string::npos) << st.message();
}
