// `trove kv` driven as a user would: the binary run on a store this test filled, while this test still
// holds the store open for writing (as a server would).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvstore/store.h"
#include "tests/kvstore/store_test_util.h"

using namespace trove::kv;
using trove::kv::testing::insert_prompt;
using trove::kv::testing::TempDir;
using trove::kv::testing::tokens_for;
using json = nlohmann::json;

namespace {

struct Run {
  int code;
  std::string out;
};

Run run_trove(const std::string& args) {
  const char* exe = std::getenv("TROVE_EXE");
  const std::string cmd = std::string(exe ? exe : "build/trove") + " " + args + " 2>&1";
  Run r{0, ""};
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WEXITSTATUS(status);
  return r;
}

class KvCli : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Store::open(dir_.str(), Options{});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    insert_prompt(*store_, "alice", "qwen3-8b-q4km", tokens_for(1, 64 * 5), 8192);
    // A second prompt that shares alice's first 2 blocks, then branches.
    auto branch = tokens_for(1, 64 * 5);
    for (size_t i = 128; i < branch.size(); ++i) branch[i] = (branch[i] + 1) % 1000;
    insert_prompt(*store_, "alice", "qwen3-8b-q4km", branch, 8192);
    insert_prompt(*store_, "bob", "qwen3-8b-q4km", tokens_for(2, 64 * 2), 8192);
    ASSERT_TRUE(store_->flush().ok());
  }
  std::string store_arg() const { return "--store " + dir_.str(); }
  TempDir dir_;
  std::unique_ptr<Store> store_;
};

}  // namespace

TEST_F(KvCli, StatsWhileAWriterHoldsTheStore) {
  auto r = run_trove("kv " + store_arg() + " --json stats");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["blocks"], 10);  // 5 + 3 (branch) + 2
  EXPECT_EQ(j["block_tokens"], 64);
  auto human = run_trove("kv " + store_arg() + " stats");
  EXPECT_NE(human.out.find("blocks          10 (640 tokens)"), std::string::npos) << human.out;
}

TEST_F(KvCli, LsGroupsByNamespaceAndModel) {
  auto r = run_trove("kv " + store_arg() + " --json ls --sort largest");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["namespace"], "alice");
  EXPECT_EQ(j[0]["blocks"], 8);
  EXPECT_EQ(j[1]["namespace"], "bob");
  EXPECT_EQ(j[1]["tokens"], 128);
}

TEST_F(KvCli, TreeFoldsChainsAndShowsTheBranch) {
  auto r = run_trove("kv " + store_arg() + " --json tree --namespace alice");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out);
  ASSERT_EQ(j["roots"].size(), 1u);
  const auto& root = j["roots"][0];
  EXPECT_EQ(root["blocks"], 2);  // the shared prefix, folded into one node
  ASSERT_EQ(root["children"].size(), 2u);
  EXPECT_EQ(root["children"][0]["blocks"], 3);
  EXPECT_EQ(root["children"][1]["blocks"], 3);
  auto human = run_trove("kv " + store_arg() + " tree --namespace alice");
  EXPECT_NE(human.out.find("→ 2 branches"), std::string::npos) << human.out;
}

TEST_F(KvCli, TreeWritesJsonDotAndSvgFiles) {
  const std::string json_path = dir_.sub("tree.json"), dot_path = dir_.sub("tree.dot"), svg_path = dir_.sub("tree.svg");
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  ASSERT_EQ(run_trove("kv " + store_arg() + " tree -n alice --format json --out " + json_path).code, 0);
  auto j = json::parse(slurp(json_path));
  EXPECT_EQ(j["namespace"], "alice");
  EXPECT_EQ(j["blocks"], 8);
  EXPECT_EQ(j["nodes"], 3);
  ASSERT_EQ(j["roots"].size(), 1u);
  EXPECT_EQ(j["roots"][0]["blocks"], 2);
  EXPECT_EQ(j["roots"][0]["branches"], 2);
  EXPECT_EQ(j["roots"][0]["leaves"], 2);
  EXPECT_EQ(j["roots"][0]["children"][0]["start_tokens"], 128);
  // --json and --format json print the same document.
  auto printed = run_trove("kv " + store_arg() + " --json tree -n alice");
  ASSERT_EQ(printed.code, 0) << printed.out;
  auto p = json::parse(printed.out);
  p.erase("now");
  j.erase("now");
  EXPECT_EQ(p, j);

  ASSERT_EQ(run_trove("kv " + store_arg() + " tree -n alice --format dot -o " + dot_path).code, 0);
  const std::string dot = slurp(dot_path);
  EXPECT_NE(dot.find("digraph prefix_tree {"), std::string::npos) << dot;
  EXPECT_NE(dot.find("n0 -> n1;"), std::string::npos) << dot;
  EXPECT_NE(dot.find("n0 -> n2;"), std::string::npos) << dot;

  auto r = run_trove("kv " + store_arg() + " tree -n alice --format svg -o " + svg_path);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("wrote " + svg_path + " (svg, 3 of 3 nodes, 8 blocks)"), std::string::npos) << r.out;
  const std::string svg = slurp(svg_path);
  EXPECT_EQ(svg.rfind("<svg xmlns=", 0), 0u);
  EXPECT_NE(svg.find("prefix tree of namespace \"alice\""), std::string::npos);

  auto bad = run_trove("kv " + store_arg() + " tree --format png");
  EXPECT_NE(bad.code, 0);
  auto unwritable = run_trove("kv " + store_arg() + " tree -n alice --format svg -o /nonexistent/dir/t.svg");
  EXPECT_NE(unwritable.code, 0);
  EXPECT_NE(unwritable.out.find("cannot write /nonexistent/dir/t.svg"), std::string::npos) << unwritable.out;
}

TEST_F(KvCli, TreeMaxNodesSaysWhatIsLeftOut) {
  auto r = run_trove("kv " + store_arg() + " tree -n alice --max-nodes 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("→ 2 branches"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 more nodes (3 blocks) not shown"), std::string::npos) << r.out;
}

TEST_F(KvCli, TreeWithAModelShowsEachBranchsFirstWords) {
  // A real tokenizer: a synthetic model's GGUF carries the Qwen3 tokenizer.
  const std::string model = dir_.sub("tok.gguf");
  ASSERT_EQ(run_trove("mkmodel --preset tiny --type Q8_0 --layers 1 --out " + model).code, 0);
  // Tokens of a known text: "def main():\n    print(" and more, 64+ tokens.
  std::vector<int32_t> ids;
  {
    auto r = run_trove("tokenize -m " + model + " \"def main():\n    print('hello world, this is a prompt that the KV store keeps')" +
                       " and it goes on for quite a while so that it fills one whole block of sixty-four tokens" +
                       " at the very least, with some more words after that to be sure of it, yes indeed, and then a few more words again to pad it out past the end of the block\"");
    ASSERT_EQ(r.code, 0) << r.out;
    for (auto v : json::parse(r.out)) ids.push_back(v.get<int32_t>());
  }
  ASSERT_GE(ids.size(), 64u);
  ids.resize(64);
  insert_prompt(*store_, "carol", "fp", ids, 4096);
  ASSERT_TRUE(store_->flush().ok());
  auto r = run_trove("kv " + store_arg() + " --json tree --namespace carol --model " + model);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out);
  ASSERT_EQ(j["roots"].size(), 1u);
  EXPECT_EQ(j["roots"][0]["text"].get<std::string>().rfind("def main():", 0), 0u) << r.out;
}

TEST_F(KvCli, InspectShowsTheEntryAndVerifiesIt) {
  const auto key = chain_keys("bob", "qwen3-8b-q4km", tokens_for(2, 64 * 2), 64)[1];
  auto r = run_trove("kv " + store_arg() + " --json inspect " + key.hex());
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["key"], key.hex());
  EXPECT_EQ(j["namespace"], "bob");
  EXPECT_EQ(j["verified"], true);
  auto bad = run_trove("kv " + store_arg() + " inspect nothex");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("is not a block key"), std::string::npos) << bad.out;
}

TEST_F(KvCli, WriteCommandsNameTheProcessHoldingTheStore) {
  auto r = run_trove("kv " + store_arg() + " evict --namespace bob");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("pid " + std::to_string(getpid())), std::string::npos) << r.out;
  EXPECT_NE(run_trove("kv " + store_arg() + " gc").code, 0);
}

TEST_F(KvCli, EvictAndVerifyOnceTheWriterIsGone) {
  store_.reset();
  auto r = run_trove("kv " + store_arg() + " --json evict --namespace bob");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["evicted_blocks"], 2);
  auto to = run_trove("kv " + store_arg() + " evict --to 0");
  ASSERT_EQ(to.code, 0) << to.out;
  EXPECT_NE(to.out.find("0 blocks"), std::string::npos) << to.out;
  auto v = run_trove("kv " + store_arg() + " verify");
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_NE(run_trove("kv " + store_arg() + " evict --to 12parsecs").out.find("is not a size"), std::string::npos);
  EXPECT_NE(run_trove("kv " + store_arg() + " evict").out.find("exactly one of"), std::string::npos);
}

TEST_F(KvCli, VerifyFindsAFlippedByteAndRepairRemovesIt) {
  const auto key = chain_keys("bob", "qwen3-8b-q4km", tokens_for(2, 64 * 2), 64)[1];
  auto e = store_->entry(key);
  ASSERT_TRUE(e.ok());
  store_.reset();
  {
    std::fstream f(dir_.sub("segments") + "/" + fmt::format("seg-{:08d}.trv", e->ref.segment),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(e->ref.offset + 80));
    f.put('\x7f');
  }
  auto v = run_trove("kv " + store_arg() + " verify");
  EXPECT_EQ(v.code, 1) << v.out;
  EXPECT_NE(v.out.find(key.hex()), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("1 bad"), std::string::npos) << v.out;
  auto fix = run_trove("kv " + store_arg() + " verify --repair");
  EXPECT_EQ(fix.code, 1) << fix.out;  // it still reports what it found
  auto again = run_trove("kv " + store_arg() + " verify");
  EXPECT_EQ(again.code, 0) << again.out;
}

TEST(KvCliNoStore, ReadCommandsOnAMissingStoreSaySo) {
  auto r = run_trove("kv --store /nonexistent/trove-store stats");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no KV store"), std::string::npos) << r.out;
}
