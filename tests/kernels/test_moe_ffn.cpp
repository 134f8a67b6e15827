// GPU MoE expert FFN (kernels/ops/moe_ffn.h) against the float64 reference (kernels/ref/matmul_ref.h
// moe_ffn): random Q4_K experts, random routing with an unused expert, output NaN-poisoned before
// (run() zeroes it, so a skipped token would show as a mismatch, not as a NaN). Bound 1e-4 relative
// to the output norm (two f32 matmuls and SwiGLU in a row). lavapipe < 5 s.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ops/moe_ffn.h"
#include "kernels/ref/matmul_ref.h"

using namespace trove;
using quant::GgmlType;

TEST(MoeFfn, MatchesReference) {
  auto d = vk::Device::open();
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  vk::Device& dev = **d;
  auto op = ops::MoeFfn::create(dev);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  const uint32_t hidden = 256, ffn = 512, n_experts = 5, top_k = 2, tokens = 6;
  std::vector<std::vector<uint8_t>> host;
  std::vector<vk::Buffer> dev_bufs;
  dev_bufs.reserve(3 * n_experts);
  std::vector<kernels::ref::ExpertWeights> ref_experts;
  std::vector<ops::ExpertBuffers> gpu_experts;
  for (uint32_t e = 0; e < n_experts; ++e) {
    host.push_back(kernels::ref::random_weights(GgmlType::Q4_K, ffn, hidden, 0.2f, 10 + e));
    host.push_back(kernels::ref::random_weights(GgmlType::Q4_K, ffn, hidden, 0.2f, 20 + e));
    host.push_back(kernels::ref::random_weights(GgmlType::Q4_K, hidden, ffn, 0.2f, 30 + e));
  }
  for (uint32_t e = 0; e < n_experts; ++e) {
    ref_experts.push_back({{GgmlType::Q4_K, ffn, hidden, host[3 * e]},
                           {GgmlType::Q4_K, ffn, hidden, host[3 * e + 1]},
                           {GgmlType::Q4_K, hidden, ffn, host[3 * e + 2]}});
    for (int m = 0; m < 3; ++m) {
      auto b = dev.buffer(host[3 * e + m].size());
      ASSERT_TRUE(b.ok());
      ASSERT_TRUE(b->upload(host[3 * e + m].data(), host[3 * e + m].size()).ok());
      dev_bufs.push_back(std::move(*b));
    }
    gpu_experts.push_back({GgmlType::Q4_K, &dev_bufs[3 * e], &dev_bufs[3 * e + 1], &dev_bufs[3 * e + 2]});
  }
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t{tokens} * hidden);
  for (auto& v : x) v = nd(rng);
  std::vector<int32_t> ids = {0, 3, 3, 1, 2, 0, 1, 3, 0, 2, 3, 1};  // expert 4 unused
  std::vector<float> wts = {0.7f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f, 0.6f, 0.4f, 0.2f, 0.8f, 0.55f, 0.45f};
  std::vector<float> expect(x.size());
  ASSERT_TRUE(kernels::ref::moe_ffn(ref_experts, x, tokens, ids, wts, top_k, expect).ok());

  auto xb = dev.buffer(x.size() * 4), ob = dev.buffer(x.size() * 4);
  ASSERT_TRUE(xb.ok() && ob.ok());
  ASSERT_TRUE(xb->upload(x.data(), x.size() * 4).ok());
  ASSERT_TRUE(ob->fill(0x7fc00000u).ok());
  Status st = op->run(dev, gpu_experts, hidden, ffn, tokens, top_k, ids, wts, *xb, *ob);
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::vector<float> got(x.size());
  ASSERT_TRUE(ob->download(got.data(), got.size() * 4).ok());
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << i;
    err2 += double(got[i] - expect[i]) * (got[i] - expect[i]);
    ref2 += double(expect[i]) * expect[i];
  }
  EXPECT_LT(std::sqrt(err2), 1e-4 * std::sqrt(ref2));

  std::vector<int32_t> bad = ids;
  bad[3] = 7;
  st = op->run(dev, gpu_experts, hidden, ffn, tokens, top_k, bad, wts, *xb, *ob);
  EXPECT_NE(st.message().find("selects expert 7"), std::string::npos) << st.message();
}
