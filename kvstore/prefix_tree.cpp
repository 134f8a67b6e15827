#include "kvstore/prefix_tree.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <queue>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace trove::kv {
namespace {

using Json = nlohmann::ordered_json;

// The folded tree before the limits: every node, with subtree aggregates.
struct FullTree {
  std::vector<PrefixTreeNode> nodes;   // children[] index into nodes (all children)
  std::vector<size_t> roots;
};

bool older(const PrefixTreeNode& a, const PrefixTreeNode& b) {
  if (a.created != b.created) return a.created < b.created;
  return a.first.hi != b.first.hi ? a.first.hi < b.first.hi : a.first.lo < b.first.lo;
}

FullTree fold(std::span<const BlockEntry> entries, std::string_view name_space, const std::string& model,
              uint64_t block_tokens, PrefixTree& out) {
  std::vector<const BlockEntry*> mine;
  std::unordered_map<BlockKey, size_t, BlockKeyHash> index;
  for (const auto& e : entries) {
    if (e.name_space != name_space || (!model.empty() && e.fingerprint != model)) continue;
    index.emplace(e.ref.key, mine.size());
    mine.push_back(&e);
    out.blocks += 1;
    out.stored_bytes += e.ref.length;
  }
  // Child lists by entry; an entry whose parent is not here (the zero key, another model, or evicted
  // out from under it) is a root.
  std::vector<std::vector<size_t>> kids(mine.size());
  std::vector<size_t> root_entries;
  for (size_t i = 0; i < mine.size(); ++i) {
    const auto p = index.find(mine[i]->ref.parent);
    if (mine[i]->ref.parent.is_zero() || p == index.end()) root_entries.push_back(i);
    else kids[p->second].push_back(i);
  }
  FullTree t;
  // Depth-first with an explicit stack: a chain of turns can nest hundreds of branch levels.
  struct Work {
    size_t entry;
    size_t parent_node;  // SIZE_MAX for a root
    uint64_t start_tokens;
    uint32_t level;
  };
  std::vector<Work> stack;
  for (auto it = root_entries.rbegin(); it != root_entries.rend(); ++it) stack.push_back({*it, SIZE_MAX, 0, 0});
  while (!stack.empty()) {
    const Work w = stack.back();
    stack.pop_back();
    PrefixTreeNode n;
    const BlockEntry* e = mine[w.entry];
    n.first = e->ref.key;
    n.model = e->fingerprint;
    n.start_tokens = w.start_tokens;
    n.level = w.level;
    n.first_hits = e->hits;
    n.created = e->created;
    size_t cur = w.entry;
    while (true) {
      const BlockEntry* b = mine[cur];
      n.last = b->ref.key;
      n.blocks += 1;
      n.tokens += b->ref.tokens ? b->ref.tokens : block_tokens;
      n.stored_bytes += b->ref.length;
      n.raw_bytes += b->ref.raw_size;
      n.hits += b->hits;
      n.created = std::min(n.created, b->created);
      n.last_access = std::max(n.last_access, b->last_access);
      if (kids[cur].size() != 1) break;
      cur = kids[cur][0];
    }
    const size_t id = t.nodes.size();
    if (w.parent_node == SIZE_MAX) t.roots.push_back(id);
    else t.nodes[w.parent_node].children.push_back(id);
    t.nodes.push_back(std::move(n));
    const auto& next = kids[cur];
    for (auto it = next.rbegin(); it != next.rend(); ++it) {
      stack.push_back({*it, id, t.nodes[id].start_tokens + t.nodes[id].tokens, w.level + 1});
    }
  }
  // Children were pushed in index order; every node's children come after it, so a reverse sweep
  // sees children before parents.
  for (size_t i = t.nodes.size(); i-- > 0;) {
    auto& n = t.nodes[i];
    n.subtree_nodes = 1;
    n.subtree_blocks = n.blocks;
    n.subtree_tokens = n.tokens;
    n.subtree_bytes = n.stored_bytes;
    n.depth_tokens = n.start_tokens + n.tokens;
    n.leaves = n.children.empty() ? 1 : 0;
    n.branches = n.children.size();
    for (size_t c : n.children) {
      const auto& k = t.nodes[c];
      n.subtree_nodes += k.subtree_nodes;
      n.subtree_blocks += k.subtree_blocks;
      n.subtree_tokens += k.subtree_tokens;
      n.subtree_bytes += k.subtree_bytes;
      n.leaves += k.leaves;
      n.depth_tokens = std::max(n.depth_tokens, k.depth_tokens);
    }
    std::sort(n.children.begin(), n.children.end(), [&](size_t a, size_t b) { return older(t.nodes[a], t.nodes[b]); });
  }
  std::sort(t.roots.begin(), t.roots.end(), [&](size_t a, size_t b) { return older(t.nodes[a], t.nodes[b]); });
  return t;
}

void add_omitted(OmittedNodes& o, const PrefixTreeNode& n) {
  o.nodes += n.subtree_nodes;
  o.blocks += n.subtree_blocks;
  o.tokens += n.subtree_tokens;
  o.leaves += n.leaves;
}

std::string bytes_text(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

std::string age_text(int64_t now, int64_t then) {
  if (then <= 0) return "never";
  const int64_t s = std::max<int64_t>(0, now - then);
  if (s < 120) return fmt::format("{} s ago", s);
  if (s < 7200) return fmt::format("{} min ago", s / 60);
  if (s < 2 * 86400) return fmt::format("{} h ago", s / 3600);
  return fmt::format("{} d ago", s / 86400);
}

std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string dot_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
  }
  return out;
}

Json omitted_json(const OmittedNodes& o) {
  return {{"nodes", o.nodes}, {"blocks", o.blocks}, {"tokens", o.tokens}, {"leaves", o.leaves}};
}

// Colour of a node by the time since its last access: amber (just now) → slate blue (a week or more),
// on a log scale. The dashboard uses the same ramp (server/ui/dashboard.js: ageColour).
std::string age_colour(int64_t now, int64_t last_access) {
  const double age = last_access > 0 ? static_cast<double>(std::max<int64_t>(0, now - last_access)) : 7 * 86400.0;
  const double t = std::clamp(std::log10(age + 1) / std::log10(7 * 86400.0 + 1), 0.0, 1.0);
  const double hue = 35 + t * (215 - 35), sat = 90 - t * 60, light = 55 + t * 5;
  return fmt::format("hsl({:.0f},{:.0f}%,{:.0f}%)", hue, sat, light);
}

}  // namespace

PrefixTree build_prefix_tree(std::span<const BlockEntry> entries, std::string_view name_space, uint32_t block_tokens,
                             const PrefixTreeOptions& options) {
  PrefixTree tree;
  tree.name_space = std::string(name_space);
  tree.block_tokens = block_tokens;
  FullTree full = fold(entries, name_space, options.model, block_tokens, tree);
  tree.total_nodes = full.nodes.size();
  for (size_t r : full.roots) tree.depth_tokens = std::max(tree.depth_tokens, full.nodes[r].depth_tokens);

  // Which nodes are shown: the largest subtrees first, breadth growing from the roots, until the
  // limit; a node is shown only when its parent is.
  const bool everything = options.max_nodes == 0 && options.max_depth < 0;
  std::vector<bool> shown(full.nodes.size(), everything);
  if (!everything) {
    auto smaller = [&](size_t a, size_t b) {
      const auto &x = full.nodes[a], &y = full.nodes[b];
      if (x.subtree_blocks != y.subtree_blocks) return x.subtree_blocks < y.subtree_blocks;
      return older(y, x);
    };
    std::priority_queue<size_t, std::vector<size_t>, decltype(smaller)> next(smaller);
    for (size_t r : full.roots) next.push(r);
    size_t taken = 0;
    while (!next.empty() && (options.max_nodes == 0 || taken < options.max_nodes)) {
      const size_t i = next.top();
      next.pop();
      shown[i] = true;
      ++taken;
      if (options.max_depth >= 0 && static_cast<int>(full.nodes[i].level) >= options.max_depth) continue;
      for (size_t c : full.nodes[i].children) next.push(c);
    }
  }

  // Copy the shown nodes in depth-first order; fold the rest into their parent's `omitted`.
  std::function<size_t(size_t)> copy = [&](size_t i) -> size_t {
    PrefixTreeNode n = full.nodes[i];
    n.children.clear();
    const size_t id = tree.nodes.size();
    tree.nodes.push_back(std::move(n));
    for (size_t c : full.nodes[i].children) {
      if (shown[c]) {
        const size_t cid = copy(c);
        tree.nodes[id].children.push_back(cid);
      } else {
        add_omitted(tree.nodes[id].omitted, full.nodes[c]);
      }
    }
    return id;
  };
  for (size_t r : full.roots) {
    if (shown[r]) tree.roots.push_back(copy(r));
    else add_omitted(tree.omitted, full.nodes[r]);
  }
  return tree;
}

std::string prefix_tree_json(const PrefixTree& tree, int64_t now, int indent) {
  std::function<Json(size_t)> node = [&](size_t i) {
    const auto& n = tree.nodes[i];
    Json j = {{"first", n.first.hex()},
              {"last", n.last.hex()},
              {"model", n.model},
              {"start_tokens", n.start_tokens},
              {"blocks", n.blocks},
              {"tokens", n.tokens},
              {"stored_bytes", n.stored_bytes},
              {"raw_bytes", n.raw_bytes},
              {"hits", n.hits},
              {"first_hits", n.first_hits},
              {"created", n.created},
              {"last_access", n.last_access},
              {"branches", n.branches},
              {"leaves", n.leaves},
              {"subtree_nodes", n.subtree_nodes},
              {"subtree_blocks", n.subtree_blocks},
              {"subtree_tokens", n.subtree_tokens},
              {"subtree_bytes", n.subtree_bytes},
              {"depth_tokens", n.depth_tokens}};
    if (!n.text.empty()) j["text"] = n.text;
    Json kids = Json::array();
    for (size_t c : n.children) kids.push_back(node(c));
    j["children"] = std::move(kids);
    if (n.omitted.nodes) j["omitted"] = omitted_json(n.omitted);
    return j;
  };
  Json roots = Json::array();
  for (size_t r : tree.roots) roots.push_back(node(r));
  Json j = {{"namespace", tree.name_space},
            {"block_tokens", tree.block_tokens},
            {"now", now},
            {"blocks", tree.blocks},
            {"stored_bytes", tree.stored_bytes},
            {"nodes", tree.total_nodes},
            {"shown_nodes", tree.nodes.size()},
            {"depth_tokens", tree.depth_tokens},
            {"omitted", omitted_json(tree.omitted)},
            {"roots", std::move(roots)}};
  // Text from the caller (first words of a prompt) may hold broken UTF-8 at a cut: replace, not throw.
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

std::string prefix_tree_dot(const PrefixTree& tree, int64_t now) {
  std::string out = fmt::format(
      "// trove kv tree --format dot: namespace \"{}\", {} blocks in {} nodes ({} shown). Draw with: dot -Tsvg\n"
      "digraph prefix_tree {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n"
      "  label=\"prefix tree of namespace {}: {} blocks, {}\";\n  labelloc=t;\n",
      dot_escape(tree.name_space), tree.blocks, tree.total_nodes, tree.nodes.size(), dot_escape(tree.name_space),
      tree.blocks, bytes_text(tree.stored_bytes));
  auto more = [&](const std::string& from, const OmittedNodes& o, const std::string& id) {
    out += fmt::format("  {} [label=\"+{} more nodes\\n{} blocks, {} leaves\", style=dashed];\n", id, o.nodes, o.blocks,
                       o.leaves);
    if (!from.empty()) out += fmt::format("  {} -> {} [style=dashed];\n", from, id);
  };
  for (size_t i = 0; i < tree.nodes.size(); ++i) {
    const auto& n = tree.nodes[i];
    std::string label = fmt::format("{}…\\n{} block{} · {} tokens (from {})\\n{} · {} hits · {} leaves\\nlast used {}",
                                    n.first.hex().substr(0, 12), n.blocks, n.blocks == 1 ? "" : "s", n.tokens,
                                    n.start_tokens, bytes_text(n.stored_bytes), n.hits, n.leaves,
                                    age_text(now, n.last_access));
    if (!n.text.empty()) label += "\\n\\\"" + dot_escape(n.text) + "…\\\"";
    out += fmt::format("  n{} [label=\"{}\", style=filled, fillcolor=\"{}\"];\n", i, label, age_colour(now, n.last_access));
    for (size_t c : n.children) out += fmt::format("  n{} -> n{};\n", i, c);
    if (n.omitted.nodes) more(fmt::format("n{}", i), n.omitted, fmt::format("n{}_more", i));
  }
  if (tree.omitted.nodes) more("", tree.omitted, "roots_more");
  out += "}\n";
  return out;
}

std::string prefix_tree_svg(const PrefixTree& tree, int64_t now) {
  constexpr double kWidth = 1200, kMargin = 16, kHeader = 58, kFooter = 26;
  uint64_t leaves = tree.omitted.leaves;
  for (size_t r : tree.roots) leaves += tree.nodes[r].leaves;
  const double height = std::clamp(22.0 * static_cast<double>(leaves), 120.0, 720.0);
  const double total_h = kHeader + height + kFooter;
  const double span = static_cast<double>(std::max<uint64_t>(tree.depth_tokens, 1));
  const double sx = (kWidth - 2 * kMargin) / span;
  std::string body;
  auto omitted_band = [&](double x, double y, double h, const OmittedNodes& o) {
    if (h < 0.5) return;
    body += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" class=\"more\"><title>{} more nodes left "
        "out: {} blocks, {} tokens, {} leaves</title></rect>\n",
        x, y, std::max(4.0, kWidth - kMargin - x), h, o.nodes, o.blocks, o.tokens, o.leaves);
  };
  std::function<void(size_t, double, double)> draw = [&](size_t i, double y, double h) {
    const auto& n = tree.nodes[i];
    const double x = kMargin + static_cast<double>(n.start_tokens) * sx;
    const double w = std::max(1.0, static_cast<double>(n.tokens) * sx);
    std::string title = fmt::format(
        "{} ({} block{}, tokens {}–{})\n{} on disk, {} of KV\n{} store hits ({} through its first block)\n{} "
        "leaves below, {} blocks in the subtree\ncreated {}, last used {}\nmodel {}",
        n.first.hex(), n.blocks, n.blocks == 1 ? "" : "s", n.start_tokens, n.start_tokens + n.tokens,
        bytes_text(n.stored_bytes), bytes_text(n.raw_bytes), n.hits, n.first_hits, n.leaves, n.subtree_blocks,
        age_text(now, n.created), age_text(now, n.last_access), n.model);
    if (!n.text.empty()) title += "\n\"" + n.text + "…\"";
    body += fmt::format("<g><title>{}</title><rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
                        "fill=\"{}\"/>",
                        xml_escape(title), x, y, w, std::max(0.5, h - 1), age_colour(now, n.last_access));
    if (w > 70 && h >= 14) {
      const std::string label = n.text.empty() ? fmt::format("{} tok · {} blk", n.tokens, n.blocks)
                                               : fmt::format("{} tok · {}", n.tokens, n.text);
      const size_t fit = static_cast<size_t>((w - 8) / 6.6);
      std::string shown = label.size() > fit ? label.substr(0, fit > 1 ? fit - 1 : 0) + "…" : label;
      body += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>", x + 4, y + std::min(h, 22.0) / 2 + 4,
                          xml_escape(shown));
    }
    body += "</g>\n";
    const double total = static_cast<double>(std::max<uint64_t>(n.leaves, 1));
    double cy = y;
    for (size_t c : n.children) {
      const double ch = h * static_cast<double>(tree.nodes[c].leaves) / total;
      draw(c, cy, ch);
      cy += ch;
    }
    if (n.omitted.nodes) omitted_band(x + w, cy, h * static_cast<double>(n.omitted.leaves) / total, n.omitted);
  };
  double y = kHeader;
  const double all = static_cast<double>(std::max<uint64_t>(leaves, 1));
  for (size_t r : tree.roots) {
    const double h = height * static_cast<double>(tree.nodes[r].leaves) / all;
    draw(r, y, h);
    y += h;
  }
  if (tree.omitted.nodes) omitted_band(kMargin, y, height * static_cast<double>(tree.omitted.leaves) / all, tree.omitted);

  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" viewBox=\"0 0 {:.0f} {:.0f}\" "
      "font-family=\"ui-monospace, DejaVu Sans Mono, monospace\" font-size=\"11\">\n"
      "<style>text{{fill:#0f172a;pointer-events:none}} .more{{fill:#cbd5e1;stroke:#94a3b8;stroke-dasharray:3 2}} "
      ".h{{font-size:14px;font-weight:bold}} .s{{fill:#475569}}</style>\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
      "<text class=\"h\" x=\"{:.0f}\" y=\"22\">prefix tree of namespace \"{}\"</text>\n"
      "<text class=\"s\" x=\"{:.0f}\" y=\"42\">{} blocks ({}) in {} nodes, {} shown · {} prompt ends · deepest {} tokens · "
      "x: token position, height: prompt ends below, colour: last use (amber: now, blue: a week)</text>\n",
      kWidth, total_h, kWidth, total_h, kMargin, xml_escape(tree.name_space), kMargin, tree.blocks,
      bytes_text(tree.stored_bytes), tree.total_nodes, tree.nodes.size(), leaves, tree.depth_tokens);
  out += body;
  // Token axis.
  const double axis_y = kHeader + height + 14;
  for (int k = 0; k <= 4; ++k) {
    const double tok = span * k / 4;
    out += fmt::format("<text class=\"s\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{:.0f}</text>\n",
                       kMargin + tok * sx, axis_y, k == 0 ? "start" : k == 4 ? "end" : "middle", tok);
  }
  if (tree.nodes.empty() && !tree.omitted.nodes) {
    out += fmt::format("<text class=\"s\" x=\"{:.0f}\" y=\"{:.0f}\">no blocks stored in this namespace</text>\n",
                       kMargin, kHeader + 30);
  }
  out += "</svg>\n";
  return out;
}

}  // namespace trove::kv
