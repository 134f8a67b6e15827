// Synthetic models are reproducible: the same seed gives the same bytes whatever the thread count,
// another seed gives other weights, and the file reads back with the shapes of its preset.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/gguf/gguf.h"
#include "engine/gguf/model_info.h"
#include "engine/gguf/synthetic.h"

namespace fs = std::filesystem;
using namespace trove::gguf;

namespace {

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("trove-synth-" + std::to_string(getpid()) + "-" + name)).string();
}

std::vector<char> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

MkModelReport make(const std::string& out, uint64_t seed, unsigned threads, const std::string& type = "Q4_K_M") {
  MkModelOptions o;
  o.preset = "tiny-moe";
  o.type = type;
  o.out = out;
  o.seed = seed;
  o.threads = threads;
  auto r = write_synthetic_model(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : MkModelReport{};
}

}  // namespace

TEST(SyntheticModel, SameSeedSameBytesWhateverTheThreadCount) {
  const auto a = tmp("a.gguf"), b = tmp("b.gguf"), c = tmp("c.gguf");
  make(a, 7, 1);
  make(b, 7, 3);
  make(c, 8, 2);
  const auto ba = slurp(a), bb = slurp(b), bc = slurp(c);
  ASSERT_GT(ba.size(), 1000000u);
  EXPECT_TRUE(ba == bb) << "same seed, different bytes";
  EXPECT_FALSE(ba == bc) << "another seed gave the same bytes";
  for (const auto& p : {a, b, c}) fs::remove(p);
}

TEST(SyntheticModel, ReadsBackWithThePresetShapesAndTheMix) {
  const auto path = tmp("shape.gguf");
  const auto report = make(path, 1, 2);
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto m = describe_model(**f);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->architecture, "qwen3moe");
  EXPECT_TRUE(m->synthetic);
  EXPECT_EQ(m->n_expert, 8u);
  EXPECT_EQ(m->n_expert_used, 2u);
  EXPECT_EQ(m->n_head, 4u);
  EXPECT_EQ(m->n_head_kv, 2u);
  EXPECT_EQ(m->head_dim, 128u);
  EXPECT_NE(m->head_dim, m->n_embd / m->n_head);  // Q width differs from hidden size
  EXPECT_EQ(m->vocab_size, 151936u);
  EXPECT_EQ(m->template_family, TemplateFamily::kQwen3);
  EXPECT_EQ(m->parameters, report.parameters);
  // Q4_K_M: the head is Q6_K, the router and norms F32, the rest Q4_K or Q6_K by layer.
  EXPECT_EQ((*f)->find_tensor("output.weight")->type, trove::quant::GgmlType::Q6_K);
  EXPECT_EQ((*f)->find_tensor("blk.1.ffn_gate_inp.weight")->type, trove::quant::GgmlType::F32);
  EXPECT_EQ((*f)->find_tensor("blk.1.attn_q.weight")->type, trove::quant::GgmlType::Q4_K);
  // use_more_bits over 3 layers picks layer 2 only (i >= 7*3/8).
  EXPECT_EQ((*f)->find_tensor("blk.0.ffn_down_exps.weight")->type, trove::quant::GgmlType::Q4_K);
  EXPECT_EQ((*f)->find_tensor("blk.2.ffn_down_exps.weight")->type, trove::quant::GgmlType::Q6_K);
  EXPECT_EQ((*f)->find_tensor("blk.2.attn_v.weight")->type, trove::quant::GgmlType::Q6_K);
  const auto* gate = (*f)->find_tensor("blk.0.ffn_gate_exps.weight");
  ASSERT_NE(gate, nullptr);
  EXPECT_EQ(gate->n_dims, 3);
  EXPECT_EQ(gate->ne[0], 256u);
  EXPECT_EQ(gate->ne[2], 8u);
  fs::remove(path);
}

TEST(SyntheticModel, OneSeedIsOneModelAtEveryPrecision) {
  // F32 and Q8_0 files of one seed hold the same weights: dequantized Q8_0 is within its rounding of F32.
  const auto p32 = tmp("f32.gguf"), p8 = tmp("q8.gguf");
  make(p32, 5, 2, "F32");
  make(p8, 5, 2, "Q8_0");
  auto a = GgufFile::open(p32);
  auto b = GgufFile::open(p8);
  ASSERT_TRUE(a.ok() && b.ok());
  const auto* ta = (*a)->find_tensor("blk.2.attn_k.weight");
  const auto* tb = (*b)->find_tensor("blk.2.attn_k.weight");
  ASSERT_TRUE(ta && tb);
  const int64_t n = static_cast<int64_t>(ta->ne[0]);
  std::vector<float> x(n), y(n);
  trove::quant::dequantize_row(trove::quant::GgmlType::F32, ta->data, x.data(), n);
  trove::quant::dequantize_row(trove::quant::GgmlType::Q8_0, tb->data, y.data(), n);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(x[i], y[i], amax / 127.0f) << i;
  fs::remove(p32);
  fs::remove(p8);
}

TEST(SyntheticModel, BadArgumentsAreRefusedClearly) {
  MkModelOptions o;
  o.preset = "qwen4";
  o.type = "Q4_K";
  o.out = tmp("x.gguf");
  auto r = write_synthetic_model(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unknown preset 'qwen4'"), std::string::npos);
  EXPECT_NE(r.status().message().find("tiny-moe"), std::string::npos);
  o.preset = "tiny";
  o.type = "IQ2_XXS";
  r = write_synthetic_model(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("Q4_K_M"), std::string::npos);
  o.type = "Q8_0";
  o.hidden = 300;
  r = write_synthetic_model(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("multiple of 256"), std::string::npos);
  o.hidden.reset();
  o.tokenizer_dir = "/nonexistent";
  r = write_synthetic_model(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tokenizer.json"), std::string::npos);
}
