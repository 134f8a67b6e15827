// Tests of the MoE expert FFN reference (kernels/ref/matmul_ref.h moe_ffn): its gathered-per-expert
// computation against a per-token computation written here from dense dequantized matrices.
// Runtime < 1 s.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ref/matmul_ref.h"

namespace trove::kernels::ref {
namespace {

using quant::GgmlType;

TEST(MoeFfnRef, MatchesPerTokenDenseComputation) {
  const int64_t hidden = 256, ffn = 512, n_experts = 6, top_k = 2, tokens = 5;
  std::vector<std::vector<uint8_t>> store;
  std::vector<std::vector<float>> dg(n_experts), du(n_experts), dd(n_experts);
  std::vector<ExpertWeights> experts(n_experts);
  for (int64_t e = 0; e < n_experts; ++e) {
    store.push_back(random_weights(GgmlType::Q4_K, ffn, hidden, 0.2f, 100 + e, &dg[e]));
    store.push_back(random_weights(GgmlType::Q4_K, ffn, hidden, 0.2f, 200 + e, &du[e]));
    store.push_back(random_weights(GgmlType::Q6_K, hidden, ffn, 0.2f, 300 + e, &dd[e]));
  }
  for (int64_t e = 0; e < n_experts; ++e) {
    experts[e] = {{GgmlType::Q4_K, ffn, hidden, store[3 * e]},
                  {GgmlType::Q4_K, ffn, hidden, store[3 * e + 1]},
                  {GgmlType::Q6_K, hidden, ffn, store[3 * e + 2]}};
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(tokens * hidden);
  for (auto& v : x) v = nd(rng);
  // Routing: distinct experts per token, expert 5 never chosen (must contribute nothing).
  std::vector<int32_t> ids = {0, 3, 3, 1, 2, 0, 4, 3, 1, 2};
  std::vector<float> wts = {0.7f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f, 0.6f, 0.4f, 0.2f, 0.8f};
  std::vector<float> out(x.size(), std::nanf(""));
  ASSERT_TRUE(moe_ffn(experts, x, tokens, ids, wts, top_k, out).ok());

  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> expect(hidden, 0.0);
    for (int64_t k = 0; k < top_k; ++k) {
      const int e = ids[t * top_k + k];
      std::vector<double> h(ffn);
      for (int64_t f = 0; f < ffn; ++f) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < hidden; ++c) {
          g += static_cast<double>(dg[e][f * hidden + c]) * x[t * hidden + c];
          u += static_cast<double>(du[e][f * hidden + c]) * x[t * hidden + c];
        }
        h[f] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int64_t c = 0; c < hidden; ++c) {
        double d = 0;
        for (int64_t f = 0; f < ffn; ++f) d += static_cast<double>(dd[e][c * ffn + f]) * h[f];
        expect[c] += wts[t * top_k + k] * d;
      }
    }
    double err2 = 0, ref2 = 0;
    for (int64_t c = 0; c < hidden; ++c) {
      ASSERT_TRUE(std::isfinite(out[t * hidden + c]));
      err2 += (out[t * hidden + c] - expect[c]) * (out[t * hidden + c] - expect[c]);
      ref2 += expect[c] * expect[c];
    }
    // The reference rounds the intermediate activations to f32 (as the GPU does); 1e-5 relative.
    EXPECT_LT(std::sqrt(err2), 1e-5 * std::sqrt(ref2)) << "token " << t;
  }
}

TEST(MoeFfnRef, BadExpertIdIsNamed) {
  std::vector<float> dense;
  auto g = random_weights(GgmlType::F32, 4, 8, 1.0f, 1);
  auto d = random_weights(GgmlType::F32, 8, 4, 1.0f, 2);
  std::vector<ExpertWeights> experts = {{{GgmlType::F32, 4, 8, g}, {GgmlType::F32, 4, 8, g}, {GgmlType::F32, 8, 4, d}}};
  std::vector<float> x(8, 1.0f), out(8);
  std::vector<int32_t> ids = {1};
  std::vector<float> w = {1.0f};
  Status s = moe_ffn(experts, x, 1, ids, w, 1, out);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("selects expert 1"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace trove::kernels::ref
