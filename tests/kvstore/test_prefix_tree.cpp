// kvstore/prefix_tree.h: folding a namespace's index entries into nodes, fan-out and leaf counts, the
// node limit that keeps totals true, and the JSON / DOT / SVG documents. Entries are made by hand (no
// store), so every number below is known exactly.
#include "kvstore/prefix_tree.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <regex>

using namespace trove::kv;
using json = nlohmann::json;

namespace {

constexpr uint32_t kBlock = 64;

// A chain of `n` blocks under `parent` (zero: a root), keys numbered from `id`.
struct Forest {
  std::vector<BlockEntry> entries;
  BlockKey chain(BlockKey parent, uint64_t id, int n, std::string ns = "agents", std::string model = "fp",
                 int64_t created = 1000, uint64_t hits = 0) {
    for (int i = 0; i < n; ++i) {
      BlockEntry e;
      e.ref.key = {id + static_cast<uint64_t>(i), 7};
      e.ref.parent = parent;
      e.ref.tokens = kBlock;
      e.ref.length = 1000;
      e.ref.raw_size = 4000;
      e.name_space = ns;
      e.fingerprint = model;
      e.created = created + i;
      e.last_access = created + 100 + i;
      e.hits = hits;
      entries.push_back(e);
      parent = e.ref.key;
    }
    return parent;
  }
};

// Twenty sessions share one system prompt of 10 blocks; each adds 3 blocks of its own.
Forest twenty_sessions() {
  Forest f;
  const BlockKey system = f.chain({}, 1, 10, "agents", "fp", 1000, 5);
  for (int s = 0; s < 20; ++s) f.chain(system, 100 + 10 * s, 3, "agents", "fp", 2000 + s);
  f.chain({}, 900, 4, "other");  // another namespace: not in the tree
  return f;
}

}  // namespace

TEST(PrefixTree, TwentySessionsShowOneSharedRootWithTwentyBranches) {
  const Forest f = twenty_sessions();
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock);
  EXPECT_EQ(t.blocks, 10u + 20 * 3);
  EXPECT_EQ(t.total_nodes, 21u);
  ASSERT_EQ(t.roots.size(), 1u);
  const auto& root = t.nodes[t.roots[0]];
  EXPECT_EQ(root.blocks, 10u);
  EXPECT_EQ(root.tokens, 640u);
  EXPECT_EQ(root.start_tokens, 0u);
  EXPECT_EQ(root.branches, 20u);
  EXPECT_EQ(root.leaves, 20u);
  EXPECT_EQ(root.hits, 50u);       // 5 per block
  EXPECT_EQ(root.first_hits, 5u);
  EXPECT_EQ(root.subtree_blocks, 70u);
  EXPECT_EQ(root.depth_tokens, 13u * 64);
  EXPECT_EQ(root.created, 1000);
  EXPECT_EQ(root.last_access, 1109);
  EXPECT_EQ(root.first, (BlockKey{1, 7}));
  EXPECT_EQ(root.last, (BlockKey{10, 7}));
  ASSERT_EQ(root.children.size(), 20u);
  for (size_t i = 0; i < 20; ++i) {
    const auto& c = t.nodes[root.children[i]];
    EXPECT_EQ(c.start_tokens, 640u);
    EXPECT_EQ(c.blocks, 3u);
    EXPECT_EQ(c.leaves, 1u);
    EXPECT_EQ(c.level, 1u);
    EXPECT_EQ(c.first, (BlockKey{100 + 10 * i, 7})) << "children are ordered oldest first";
  }
}

TEST(PrefixTree, ABlockWhoseParentIsMissingIsARoot) {
  Forest f;
  f.chain({999, 999}, 1, 2);  // the parent was evicted (or belongs to another model)
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock);
  ASSERT_EQ(t.roots.size(), 1u);
  EXPECT_EQ(t.nodes[t.roots[0]].blocks, 2u);
}

TEST(PrefixTree, AModelFilterKeepsOnlyThatFingerprint) {
  Forest f;
  f.chain({}, 1, 2, "agents", "model-a");
  f.chain({}, 10, 5, "agents", "model-b");
  PrefixTreeOptions o;
  o.model = "model-b";
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock, o);
  EXPECT_EQ(t.blocks, 5u);
  ASSERT_EQ(t.roots.size(), 1u);
  EXPECT_EQ(t.nodes[t.roots[0]].model, "model-b");
}

TEST(PrefixTree, TheNodeLimitKeepsTheLargestSubtreesAndCountsTheRest) {
  Forest f;
  const BlockKey sys = f.chain({}, 1, 10);
  f.chain(sys, 100, 8);  // the largest branch
  f.chain(sys, 200, 1);
  f.chain(sys, 300, 2);
  PrefixTreeOptions o;
  o.max_nodes = 2;
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock, o);
  EXPECT_EQ(t.total_nodes, 4u);
  ASSERT_EQ(t.nodes.size(), 2u);
  const auto& root = t.nodes[t.roots[0]];
  ASSERT_EQ(root.children.size(), 1u);
  EXPECT_EQ(t.nodes[root.children[0]].blocks, 8u);
  EXPECT_EQ(root.branches, 3u);
  EXPECT_EQ(root.omitted.nodes, 2u);
  EXPECT_EQ(root.omitted.blocks, 3u);
  EXPECT_EQ(root.omitted.leaves, 2u);
  EXPECT_EQ(root.leaves, 3u) << "aggregates include what is not shown";
}

TEST(PrefixTree, TheDepthLimitStopsExpandingBelowThatLevel) {
  Forest f;
  const BlockKey a = f.chain({}, 1, 1);
  const BlockKey b = f.chain(a, 10, 1);
  f.chain(a, 20, 1);
  f.chain(b, 30, 1);
  f.chain(b, 40, 1);
  PrefixTreeOptions o;
  o.max_depth = 1;
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock, o);
  EXPECT_EQ(t.nodes.size(), 3u);  // root and its two children
  const auto& root = t.nodes[t.roots[0]];
  const auto& first_child = t.nodes[root.children[0]];
  EXPECT_TRUE(first_child.children.empty());
  EXPECT_EQ(first_child.branches, 2u);
  EXPECT_EQ(first_child.omitted.nodes, 2u);
}

TEST(PrefixTree, JsonCarriesTheDocumentedFields) {
  const Forest f = twenty_sessions();
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock);
  const json j = json::parse(prefix_tree_json(t, 5000));
  EXPECT_EQ(j["namespace"], "agents");
  EXPECT_EQ(j["block_tokens"], 64);
  EXPECT_EQ(j["now"], 5000);
  EXPECT_EQ(j["blocks"], 70);
  EXPECT_EQ(j["nodes"], 21);
  EXPECT_EQ(j["shown_nodes"], 21);
  EXPECT_EQ(j["depth_tokens"], 13 * 64);
  EXPECT_EQ(j["omitted"]["nodes"], 0);
  ASSERT_EQ(j["roots"].size(), 1u);
  const json& r = j["roots"][0];
  EXPECT_EQ(r["first"], (BlockKey{1, 7}).hex());
  EXPECT_EQ(r["last"], (BlockKey{10, 7}).hex());
  EXPECT_EQ(r["blocks"], 10);
  EXPECT_EQ(r["tokens"], 640);
  EXPECT_EQ(r["stored_bytes"], 10000);
  EXPECT_EQ(r["raw_bytes"], 40000);
  EXPECT_EQ(r["hits"], 50);
  EXPECT_EQ(r["branches"], 20);
  EXPECT_EQ(r["leaves"], 20);
  EXPECT_EQ(r["subtree_blocks"], 70);
  EXPECT_EQ(r["children"].size(), 20u);
  EXPECT_EQ(r["children"][3]["start_tokens"], 640);
  EXPECT_FALSE(r.contains("omitted"));
  EXPECT_FALSE(r.contains("text"));
}

TEST(PrefixTree, DotHasOneBoxPerNodeAndOneEdgePerChild) {
  const Forest f = twenty_sessions();
  const PrefixTree t = build_prefix_tree(f.entries, "agents", kBlock);
  const std::string dot = prefix_tree_dot(t, 5000);
  EXPECT_NE(dot.find("digraph prefix_tree {"), std::string::npos);
  const auto count = [&](const std::regex& re) {
    return std::distance(std::sregex_iterator(dot.begin(), dot.end(), re), std::sregex_iterator());
  };
  EXPECT_EQ(count(std::regex(R"(\n  n\d+ \[label=)")), 21);
  EXPECT_EQ(count(std::regex(R"(\n  n\d+ -> n\d+;)")), 20);
  EXPECT_NE(dot.find("10 blocks · 640 tokens (from 0)"), std::string::npos) << dot;
  EXPECT_EQ(dot.back(), '\n');
}

TEST(PrefixTree, SvgIsAnIcicleWithARectanglePerNodeAndEscapedText) {
  Forest f = twenty_sessions();
  for (auto& e : f.entries) e.name_space = e.name_space == "agents" ? "a<b>&\"c\"" : e.name_space;
  PrefixTree t = build_prefix_tree(f.entries, "a<b>&\"c\"", kBlock);
  t.nodes[t.roots[0]].text = "You are <an> agent & more";
  const std::string svg = prefix_tree_svg(t, 5000);
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(svg.find("<script"), std::string::npos);
  EXPECT_EQ(svg.find("a<b>"), std::string::npos) << "the namespace is escaped";
  EXPECT_NE(svg.find("a&lt;b&gt;&amp;&quot;c&quot;"), std::string::npos);
  EXPECT_NE(svg.find("You are &lt;an&gt; agent &amp; more"), std::string::npos);
  const std::regex node_rect(R"(<g><title>)");
  EXPECT_EQ(std::distance(std::sregex_iterator(svg.begin(), svg.end(), node_rect), std::sregex_iterator()), 21);
  // The root spans the whole icicle height (all 20 leaves), from x = 16 over 10 of 13 blocks' width.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex(R"re(<rect x="16.0" y="58.0" width="([0-9.]+)" height="([0-9.]+)")re")));
  EXPECT_NEAR(std::stod(m[1]), (1200 - 32) * 10.0 / 13.0, 0.1);
  EXPECT_NEAR(std::stod(m[2]), 22 * 20 - 1, 0.1);
}

TEST(PrefixTree, AnEmptyNamespaceGivesAnEmptyTree) {
  const Forest f = twenty_sessions();
  const PrefixTree t = build_prefix_tree(f.entries, "nobody", kBlock);
  EXPECT_EQ(t.blocks, 0u);
  EXPECT_TRUE(t.roots.empty());
  EXPECT_EQ(json::parse(prefix_tree_json(t, 0))["roots"].size(), 0u);
  EXPECT_NE(prefix_tree_svg(t, 0).find("no blocks stored"), std::string::npos);
}
