// kvstore/prefix_tree.h — one namespace's prefix tree as a person looks at it, and three ways to write
// it down: JSON (GET /v1/trove/tree and `trove kv tree --format json`), Graphviz DOT and an SVG icicle.
//
// The store's index is a forest of blocks, each pointing at its parent. build_prefix_tree() folds it for
// reading: a chain of blocks that each have exactly one child becomes ONE node (an 11k-token system
// prompt is one node of 172 blocks, not 172 nodes), so a node ends where the prompts that went through
// it diverge (fan-out) or end. Each node carries its size (blocks, tokens, bytes), the store's hit
// counts (blocks served from the SSD since they were written), ages, and aggregates of its subtree
// (leaves: how many distinct prompt ends lie below it — twenty sessions that share one system prompt
// give a root with twenty leaves).
//
// Limits: a namespace can hold hundreds of thousands of blocks. max_nodes keeps the nodes with the
// largest subtrees (by blocks) and folds every left-out child into its parent's `omitted` counts, so
// the totals stay true; max_depth stops expanding below that many branch levels, the same way.
//
// The icicle layout (shared with the dashboard's tree, server/ui/dashboard.js, so both draw the same
// picture): x is the token position, a node spanning [start_tokens, start_tokens + tokens) of the
// deepest prompt; y splits each node's height among its children in proportion to their leaves.
//
// Contract: pure functions over a snapshot of index entries (Store::for_each_entry); no I/O, no locks.
// Children are ordered oldest first (creation time, then key), so a new branch appears at the bottom
// and the rest of the picture stays where it was.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvstore/store.h"

namespace trove::kv {

// What a node left out (children beyond max_nodes / max_depth), summed over those subtrees.
struct OmittedNodes {
  uint64_t nodes = 0;
  uint64_t blocks = 0;
  uint64_t tokens = 0;
  uint64_t leaves = 0;
};

struct PrefixTreeNode {
  BlockKey first;               // the chain's first block (identifies the node)
  BlockKey last;                // its last block (the parent of every child)
  std::string model;            // the blocks' model fingerprint
  uint64_t start_tokens = 0;    // tokens before this node: its depth in the prompt
  uint64_t blocks = 0;
  uint64_t tokens = 0;
  uint64_t stored_bytes = 0;    // record bytes on disk
  uint64_t raw_bytes = 0;       // KV payload bytes
  uint64_t hits = 0;            // store hits summed over the chain's blocks
  uint64_t first_hits = 0;      // hits of the first block: how often a restore went through this node
  int64_t created = 0;          // oldest block of the chain (unix seconds)
  int64_t last_access = 0;      // newest access of any block of the chain (unix seconds)
  uint64_t branches = 0;        // direct children (fan-out), shown or not
  // This node and everything below it, left-out parts included.
  uint64_t leaves = 0;
  uint64_t subtree_nodes = 0;
  uint64_t subtree_blocks = 0;
  uint64_t subtree_tokens = 0;  // tokens of every block below (shared tokens counted once)
  uint64_t subtree_bytes = 0;
  uint64_t depth_tokens = 0;    // start_tokens + tokens of the deepest prompt end below
  std::vector<size_t> children; // indices into PrefixTree::nodes, shown children only, oldest first
  OmittedNodes omitted;         // children not shown
  uint32_t level = 0;           // branch level (roots are 0)
  std::string text;             // empty unless a caller fills it (`trove kv tree --model`: first words)
};

struct PrefixTree {
  std::string name_space;
  uint32_t block_tokens = 0;
  std::vector<PrefixTreeNode> nodes;  // shown nodes only; roots[] and children[] index into it
  std::vector<size_t> roots;          // oldest first
  OmittedNodes omitted;               // roots not shown
  uint64_t blocks = 0;                // blocks of the namespace (all models, or `model` only)
  uint64_t stored_bytes = 0;
  uint64_t total_nodes = 0;           // folded nodes before the limits
  uint64_t depth_tokens = 0;          // the deepest prompt end
};

struct PrefixTreeOptions {
  size_t max_nodes = 0;   // 0: every node
  int max_depth = -1;     // branch levels below the roots that are expanded; -1: all
  std::string model;      // only blocks of this fingerprint; empty: every model
};

PrefixTree build_prefix_tree(std::span<const BlockEntry> entries, std::string_view name_space,
                             uint32_t block_tokens, const PrefixTreeOptions& options = {});

// The tree as JSON (schema in docs/api.md, GET /v1/trove/tree). `now` (unix seconds) is written as is,
// so a reader can turn created / last_access into ages. indent < 0: compact.
std::string prefix_tree_json(const PrefixTree& tree, int64_t now, int indent = -1);
// Graphviz: one box per node (first key, blocks, tokens, size, hits), edges parent → child, a dashed
// box for what was left out. `dot -Tsvg` draws it.
std::string prefix_tree_dot(const PrefixTree& tree, int64_t now);
// A self-contained SVG icicle (no scripts, no external fonts): the layout described above, colour by
// time since last access, a <title> per node that viewers show on hover.
std::string prefix_tree_svg(const PrefixTree& tree, int64_t now);

}  // namespace trove::kv
