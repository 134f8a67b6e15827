// tools/hub.h without a network: quantization names, grouping split GGUFs, and the choice of a
// quantization for a GPU (with room for the KV of a useful context).
#include "tools/hub.h"

#include <gtest/gtest.h>

namespace {

using namespace trove::hub;

HubFile f(const std::string& path, uint64_t gib10) { return {path, gib10 * (1ull << 30) / 10, "ab"}; }

TEST(Hub, QuantNamesFromFileNames) {
  EXPECT_EQ(quant_of("Qwen3-8B-Q4_K_M.gguf"), "Q4_K_M");
  EXPECT_EQ(quant_of("Qwen3-8B-q8_0.gguf"), "Q8_0");
  EXPECT_EQ(quant_of("BF16/Qwen3-32B-BF16-00001-of-00002.gguf"), "BF16");
  EXPECT_EQ(quant_of("Qwen3-Coder-30B-A3B-Instruct-UD-Q4_K_XL.gguf"), "UD-Q4_K_XL");
  EXPECT_EQ(quant_of("model-IQ2_XXS.gguf"), "IQ2_XXS");
  EXPECT_EQ(quant_of("Qwen3-8B-F16.gguf"), "F16");
  EXPECT_EQ(quant_of("README.md"), "");
  EXPECT_EQ(quant_of("weights.gguf"), "");
}

TEST(Hub, SplitPartsAreGroupedAndIncompleteSetsLeftOut) {
  const std::vector<HubFile> files = {
      f("Q8_0/M-Q8_0-00002-of-00002.gguf", 100), f("Q8_0/M-Q8_0-00001-of-00002.gguf", 200),
      f("M-Q4_K_M.gguf", 180), f("M-IQ2_XXS.gguf", 80), f("BF16/M-BF16-00001-of-00003.gguf", 300),
      f("mmproj-M-F16.gguf", 10), f("README.md", 0)};
  const auto g = group_gguf_files(files);
  ASSERT_EQ(g.size(), 3u);  // BF16 has 1 of 3 parts: left out; mmproj and README are not models
  EXPECT_EQ(g[0].quant, "IQ2_XXS");
  EXPECT_FALSE(g[0].supported);
  EXPECT_EQ(g[1].quant, "Q4_K_M");
  EXPECT_TRUE(g[1].supported);
  EXPECT_EQ(g[2].quant, "Q8_0");
  ASSERT_EQ(g[2].parts.size(), 2u);
  EXPECT_EQ(g[2].parts[0].path, "Q8_0/M-Q8_0-00001-of-00002.gguf");  // in part order
  EXPECT_EQ(g[2].bytes, files[0].size + files[1].size);
}

std::vector<QuantGroup> qwen3_coder_like() {
  // Sizes of Qwen3-Coder-30B-A3B's files (GiB): Q4_K_M 18.6, Q5_K_M 21.7, Q6_K 25.1, Q8_0 32.5, BF16 61.
  return group_gguf_files({f("C-Q4_K_M.gguf", 186), f("C-Q5_K_M.gguf", 217), f("C-Q6_K.gguf", 251),
                           f("C-Q8_0.gguf", 325), f("C-BF16.gguf", 610), f("C-IQ1_S.gguf", 70)});
}

TEST(Hub, TheBestQuantizationThatFitsWithKvRoomIsChosen) {
  const uint64_t kv = 2 * 48 * 4 * 128 * 2;  // 96 KiB per token: 3 GiB for 32k tokens
  auto big = choose_quant(qwen3_coder_like(), 141ull << 30, kv, 32768, std::nullopt);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->group.quant, "Q8_0");  // 16-bit only when asked
  EXPECT_NE(big->why.find("fits"), std::string::npos) << big->why;
  auto mid = choose_quant(qwen3_coder_like(), 24ull << 30, kv, 32768, std::nullopt);
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(mid->group.quant, "Q4_K_M");  // Q5_K_M (21.7) + 3 GiB KV + 1 GiB reserve > 24 GiB
  auto roomy = choose_quant(qwen3_coder_like(), 26ull << 30, kv, 32768, std::nullopt);
  EXPECT_EQ(roomy->group.quant, "Q5_K_M");
  auto tiny = choose_quant(qwen3_coder_like(), 8ull << 30, kv, 32768, std::nullopt);
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->group.quant, "Q4_K_M");  // nothing fits: the smallest trove runs, said plainly
  EXPECT_NE(tiny->why.find("no fit"), std::string::npos) << tiny->why;
}

TEST(Hub, QuantOverride) {
  auto bf16 = choose_quant(qwen3_coder_like(), 8ull << 30, 1, 1, std::string("bf16"));
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ(bf16->group.quant, "BF16");
  auto missing = choose_quant(qwen3_coder_like(), 8ull << 30, 1, 1, std::string("Q3_K_M"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("available: IQ1_S"), std::string::npos) << missing.status().message();
  auto unsupported = choose_quant(qwen3_coder_like(), 8ull << 30, 1, 1, std::string("IQ1_S"));
  ASSERT_FALSE(unsupported.ok());
  EXPECT_NE(unsupported.status().message().find("cannot run"), std::string::npos);
  EXPECT_FALSE(choose_quant({}, 8ull << 30, 1, 1, std::nullopt).ok());
}

TEST(Hub, Aliases) {
  ASSERT_NE(find_alias("qwen3-8b"), nullptr);
  EXPECT_EQ(find_alias("qwen3-8b")->repo, "Qwen/Qwen3-8B-GGUF");
  EXPECT_EQ(find_alias("qwen/qwen3-8b-gguf")->name, "qwen3-8b");
  EXPECT_EQ(find_alias("nope"), nullptr);
}

}  // namespace
