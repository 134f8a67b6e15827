// `trove kv`: inspect and maintain the KV store. Read commands (stats, ls, tree, inspect, verify)
// open the store read-only, so they are safe while a server writes it; evict and gc need the writer
// lock and say who holds it when they cannot get it.
#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvstore/prefix_tree.h"
#include "kvstore/store.h"
#include "tools/command.h"
#include "tools/paths.h"
#include "tools/sizes.h"

namespace {

using trove::kv::BlockEntry;
using trove::kv::BlockKey;
using trove::kv::Store;
using json = nlohmann::json;
using trove::cli::human_bytes;
using trove::cli::parse_size;

std::string human_time(int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  std::time_t t = unix_seconds;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

// "30s", "15m", "12h", "7d".
std::optional<int64_t> parse_age(const std::string& s) {
  if (s.size() < 2) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0 || std::string(end).size() != 1) return std::nullopt;
  switch (*end) {
    case 's': return static_cast<int64_t>(v);
    case 'm': return static_cast<int64_t>(v * 60);
    case 'h': return static_cast<int64_t>(v * 3600);
    case 'd': return static_cast<int64_t>(v * 86400);
    default: return std::nullopt;
  }
}

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct KvArgs {
  std::string store = trove::cli::default_store_dir();
  bool json = false;
};

std::unique_ptr<Store> open_store(const KvArgs& a, bool writable) {
  trove::kv::Options o;
  o.read_only = !writable;
  auto s = Store::open(a.store, o);
  if (!s.ok()) trove::cli::fail(s.status().message());
  return std::move(*s);
}

std::vector<BlockEntry> all_entries(Store& s) {
  std::vector<BlockEntry> v;
  (void)s.for_each_entry([&](const BlockEntry& e) { v.push_back(e); });
  return v;
}

void print_json(const json& j) { std::printf("%s\n", j.dump(2).c_str()); }

json entry_json(const BlockEntry& e) {
  return {{"key", e.ref.key.hex()},         {"parent", e.ref.parent.is_zero() ? "" : e.ref.parent.hex()},
          {"namespace", e.name_space},      {"model", e.fingerprint},
          {"tokens", e.ref.tokens},         {"raw_bytes", e.ref.raw_size},
          {"stored_bytes", e.ref.length},   {"segment", e.ref.segment},
          {"offset", e.ref.offset},         {"checksum", fmt::format("{:016x}", e.ref.checksum)},
          {"layers", e.layers},             {"dtype", static_cast<int>(e.dtype)},
          {"children", e.children},         {"created", e.created},
          {"last_access", e.last_access},   {"hits", e.hits}};
}

void cmd_stats(const KvArgs& a) {
  auto s = open_store(a, false);
  const auto st = s->stats();
  std::map<std::pair<std::string, std::string>, std::pair<uint64_t, uint64_t>> groups;
  for (const auto& e : all_entries(*s)) {
    auto& g = groups[{e.name_space, e.fingerprint}];
    g.first += 1;
    g.second += e.ref.length;
  }
  if (a.json) {
    json j = {{"store", a.store},
              {"block_tokens", s->block_tokens()},
              {"blocks", st.blocks},
              {"stored_bytes", st.stored_bytes},
              {"logical_bytes", st.logical_bytes},
              {"segment_bytes", st.segment_bytes},
              {"compression_ratio", st.compression_ratio()},
              {"groups", json::array()}};
    for (const auto& [k, v] : groups) {
      j["groups"].push_back({{"namespace", k.first}, {"model", k.second}, {"blocks", v.first}, {"stored_bytes", v.second}});
    }
    print_json(j);
    return;
  }
  std::printf("store           %s (%u tokens per block)\n", a.store.c_str(), s->block_tokens());
  std::printf("blocks          %llu (%llu tokens)\n", static_cast<unsigned long long>(st.blocks),
              static_cast<unsigned long long>(st.blocks * s->block_tokens()));
  std::printf("stored          %s on disk for %s of KV (compression %.2fx)\n", human_bytes(st.stored_bytes).c_str(),
              human_bytes(st.logical_bytes).c_str(), st.compression_ratio());
  std::printf("segment files   %s (live share %.0f%%)\n", human_bytes(st.segment_bytes).c_str(),
              st.segment_bytes ? 100.0 * st.stored_bytes / st.segment_bytes : 0.0);
  std::printf("namespaces × models: %zu\n", groups.size());
}

void cmd_ls(const KvArgs& a, const std::string& sort) {
  auto s = open_store(a, false);
  struct Group {
    std::string ns, model;
    uint64_t blocks = 0, tokens = 0, bytes = 0, hits = 0;
    int64_t newest = 0, last_access = 0;
  };
  std::map<std::pair<std::string, std::string>, Group> groups;
  for (const auto& e : all_entries(*s)) {
    auto& g = groups[{e.name_space, e.fingerprint}];
    g.ns = e.name_space;
    g.model = e.fingerprint;
    g.blocks += 1;
    g.tokens += e.ref.tokens;
    g.bytes += e.ref.length;
    g.hits += e.hits;
    g.newest = std::max(g.newest, e.created);
    g.last_access = std::max(g.last_access, e.last_access);
  }
  std::vector<Group> rows;
  for (auto& [k, g] : groups) rows.push_back(g);
  if (sort == "largest") {
    std::sort(rows.begin(), rows.end(), [](const Group& x, const Group& y) { return x.bytes > y.bytes; });
  } else {
    std::sort(rows.begin(), rows.end(), [](const Group& x, const Group& y) { return x.newest > y.newest; });
  }
  if (a.json) {
    json j = json::array();
    for (const auto& g : rows) {
      j.push_back({{"namespace", g.ns}, {"model", g.model}, {"blocks", g.blocks}, {"tokens", g.tokens},
                   {"stored_bytes", g.bytes}, {"hits", g.hits}, {"newest", g.newest}, {"last_access", g.last_access}});
    }
    print_json(j);
    return;
  }
  std::printf("%-20s %-24s %8s %10s %11s %8s  %-16s\n", "NAMESPACE", "MODEL", "BLOCKS", "TOKENS", "SIZE", "HITS",
              "NEWEST (UTC)");
  for (const auto& g : rows) {
    std::printf("%-20s %-24s %8llu %10llu %11s %8llu  %-16s\n", g.ns.c_str(), g.model.substr(0, 24).c_str(),
                static_cast<unsigned long long>(g.blocks), static_cast<unsigned long long>(g.tokens),
                human_bytes(g.bytes).c_str(), static_cast<unsigned long long>(g.hits), human_time(g.newest).c_str());
  }
}

// The first words of a block, from the token ids its record carries, for `tree --model`.
std::string first_words(Store& s, const trove::tokenizer::Tokenizer* tok, const BlockKey& key) {
  if (!tok) return "";
  auto ids = s.token_ids(key);
  if (!ids.ok() || ids->empty()) return "";
  const size_t n = std::min<size_t>(ids->size(), 12);
  auto text = tok->decode(std::span<const int32_t>(ids->data(), n));
  if (!text.ok()) return "";
  std::string out;
  for (char c : *text) out += (c == '\n' ? std::string("\\n") : c == '\t' ? std::string(" ") : std::string(1, c));
  return out;
}

struct TreeArgs {
  std::string name_space = "default";
  int depth = 16;
  std::string model;       // GGUF whose tokenizer shows each node's first words
  std::string format;      // text, json, dot, svg (empty: text, or json with --json)
  std::string out;         // write to this file instead of stdout
  size_t max_nodes = 0;    // 0: every node
};

// `trove kv tree`: the namespace's prefix tree (kvstore/prefix_tree.h folds chains of single children
// into one node), as text, JSON (the same document as GET /v1/trove/tree), Graphviz DOT or an SVG icicle.
void cmd_tree(const KvArgs& a, const TreeArgs& t) {
  const std::string format = !t.format.empty() ? t.format : a.json ? "json" : "text";
  std::unique_ptr<trove::gguf::GgufFile> gguf;
  std::unique_ptr<trove::tokenizer::Tokenizer> tok;
  if (!t.model.empty()) {
    auto f = trove::gguf::GgufFile::open(t.model);
    if (!f.ok()) trove::cli::fail(f.status().message());
    auto k = trove::tokenizer::Tokenizer::from_gguf(**f);
    if (!k.ok()) trove::cli::fail(k.status().message());
    gguf = std::move(*f);
    tok = std::move(*k);
  }
  auto s = open_store(a, false);
  const auto entries = all_entries(*s);
  trove::kv::PrefixTreeOptions o;
  o.max_depth = t.depth;
  o.max_nodes = t.max_nodes;
  trove::kv::PrefixTree tree = trove::kv::build_prefix_tree(entries, t.name_space, s->block_tokens(), o);
  if (tok) {
    for (auto& n : tree.nodes) n.text = first_words(*s, tok.get(), n.first);
  }
  const int64_t now = now_seconds();
  std::string doc;
  if (format == "json") {
    doc = trove::kv::prefix_tree_json(tree, now, 2) + "\n";
  } else if (format == "dot") {
    doc = trove::kv::prefix_tree_dot(tree, now);
  } else if (format == "svg") {
    doc = trove::kv::prefix_tree_svg(tree, now);
  } else {
    doc = fmt::format("namespace {}: {} root{}\n", t.name_space, tree.roots.size() + tree.omitted.nodes,
                      tree.roots.size() + tree.omitted.nodes == 1 ? "" : "s");
    std::function<void(size_t, const std::string&)> walk = [&](size_t i, const std::string& indent) {
      const auto& n = tree.nodes[i];
      doc += fmt::format("{}{}… {} block{}, {} tokens, {}, {} hits{}{}\n", indent, n.first.hex().substr(0, 12), n.blocks,
                         n.blocks == 1 ? "" : "s", n.tokens, human_bytes(n.stored_bytes), n.hits,
                         n.branches ? fmt::format(" → {} branches", n.branches) : "",
                         tok ? fmt::format("  \"{}…\"", n.text) : "");
      for (size_t c : n.children) walk(c, indent + "  ");
      if (n.omitted.nodes && n.children.size() < n.branches) {
        doc += fmt::format("{}  … {} more nodes ({} blocks) not shown\n", indent, n.omitted.nodes, n.omitted.blocks);
      }
    };
    for (size_t r : tree.roots) walk(r, "  ");
    if (tree.omitted.nodes) {
      doc += fmt::format("  … {} more nodes ({} blocks) not shown (--max-nodes)\n", tree.omitted.nodes, tree.omitted.blocks);
    }
  }
  if (t.out.empty()) {
    std::fwrite(doc.data(), 1, doc.size(), stdout);
    return;
  }
  FILE* f = std::fopen(t.out.c_str(), "wb");
  if (!f) trove::cli::fail(fmt::format("cannot write {}: {}; pick another --out path", t.out, std::strerror(errno)));
  const bool ok = std::fwrite(doc.data(), 1, doc.size(), f) == doc.size();
  if (std::fclose(f) != 0 || !ok) {
    trove::cli::fail(fmt::format("writing {} failed: {} (disk full?)", t.out, std::strerror(errno)));
  }
  std::fprintf(stderr, "wrote %s (%s, %zu of %llu nodes, %llu blocks)\n", t.out.c_str(), format.c_str(),
               tree.nodes.size(), static_cast<unsigned long long>(tree.total_nodes),
               static_cast<unsigned long long>(tree.blocks));
}

void cmd_inspect(const KvArgs& a, const std::string& hex) {
  auto key = BlockKey::from_hex(hex);
  if (!key) trove::cli::fail(fmt::format("'{}' is not a block key (32 hex digits, as `trove kv tree` prints)", hex));
  auto s = open_store(a, false);
  auto e = s->entry(*key);
  if (!e.ok()) trove::cli::fail(e.status().message());
  std::vector<uint8_t> buf(e->ref.raw_size);
  std::vector<std::span<uint8_t>> spans{buf};
  std::vector<trove::kv::BlockRef> refs{e->ref};
  const auto st = s->read(refs, spans)[0];
  if (a.json) {
    json j = entry_json(*e);
    j["verified"] = st.ok();
    if (!st.ok()) j["error"] = st.message();
    print_json(j);
  } else {
    std::printf("key         %s\nparent      %s\nnamespace   %s\nmodel       %s\n", e->ref.key.hex().c_str(),
                e->ref.parent.is_zero() ? "(root)" : e->ref.parent.hex().c_str(), e->name_space.c_str(),
                e->fingerprint.c_str());
    std::printf("tokens      %u\nlayers      %u\npayload     %s (stored %s)\n", e->ref.tokens, e->layers,
                human_bytes(e->ref.raw_size).c_str(), human_bytes(e->ref.length).c_str());
    std::printf("location    segments/seg-%08u.trv offset %llu (xxd -s %llu -l 64 shows its header)\n", e->ref.segment,
                static_cast<unsigned long long>(e->ref.offset), static_cast<unsigned long long>(e->ref.offset));
    std::printf("children    %u\ncreated     %s\nlast access %s\nhits        %llu\nchecksum    %016llx %s\n",
                e->children, human_time(e->created).c_str(), human_time(e->last_access).c_str(),
                static_cast<unsigned long long>(e->hits), static_cast<unsigned long long>(e->ref.checksum),
                st.ok() ? "(verified)" : ("FAILED: " + st.message()).c_str());
  }
  if (!st.ok()) trove::cli::exit_with(1);
}

void cmd_verify(const KvArgs& a, bool repair) {
  auto s = open_store(a, repair);
  uint64_t bad = 0;
  json failures = json::array();
  const auto st = s->verify([&](const BlockEntry& e, const trove::Status& why) {
    ++bad;
    failures.push_back({{"key", e.ref.key.hex()}, {"error", why.message()}});
    if (!a.json) std::printf("BAD  %s  %s\n", e.ref.key.hex().c_str(), why.message().c_str());
  });
  if (!st.ok()) trove::cli::fail(st.message());
  const auto blocks = s->stats().blocks + (repair ? bad : 0);
  if (a.json) {
    print_json({{"blocks", blocks}, {"bad", bad}, {"repaired", repair}, {"failures", failures}});
  } else {
    std::printf("%llu blocks checked, %llu bad%s\n", static_cast<unsigned long long>(blocks),
                static_cast<unsigned long long>(bad),
                bad == 0 ? "" : repair ? " (removed from the index)" : " (run `trove kv verify --repair` to remove them)");
  }
  if (bad) trove::cli::exit_with(1);
}

void add_kv(CLI::App& kv) {
  auto a = std::make_shared<KvArgs>();
  kv.add_option("--store", a->store, "KV store directory")->default_str(a->store);
  kv.add_flag("--json", a->json, "Print JSON");
  kv.require_subcommand(1);

  kv.add_subcommand("stats", "Size, blocks and compression of the store")->callback([a] { cmd_stats(*a); });

  auto ls = kv.add_subcommand("ls", "Blocks by namespace and model");
  auto sort = std::make_shared<std::string>("newest");
  ls->add_option("--sort", *sort, "newest or largest")->check(CLI::IsMember({"newest", "largest"}));
  ls->callback([a, sort] { cmd_ls(*a, *sort); });

  auto tree = kv.add_subcommand("tree", "A namespace's prefix tree (chains of single children folded) as text, JSON, DOT or SVG");
  auto t = std::make_shared<TreeArgs>();
  tree->add_option("--namespace,-n", t->name_space, "Namespace")->default_str("default");
  tree->add_option("--depth", t->depth, "Deepest branch level to expand")->capture_default_str();
  tree->add_option("--model,-m", t->model, "GGUF model whose tokenizer shows each branch's first words");
  tree->add_option("--format,-f", t->format, "text, json (as GET /v1/trove/tree), dot (Graphviz) or svg (an icicle picture)")
      ->check(CLI::IsMember({"text", "json", "dot", "svg"}));
  tree->add_option("--out,-o", t->out, "Write to this file instead of stdout");
  tree->add_option("--max-nodes", t->max_nodes, "Show at most this many nodes, the largest subtrees first (0: all)");
  tree->callback([a, t] { cmd_tree(*a, *t); });

  auto inspect = kv.add_subcommand("inspect", "One block: index entry, location, checksum");
  auto key = std::make_shared<std::string>();
  inspect->add_option("key", *key, "Block key (32 hex digits)")->required();
  inspect->callback([a, key] { cmd_inspect(*a, *key); });

  auto evict = kv.add_subcommand("evict", "Remove blocks (leaves first, never orphaning a child)");
  auto to = std::make_shared<std::string>();
  auto older = std::make_shared<std::string>();
  auto ens = std::make_shared<std::string>();
  evict->add_option("--to", *to, "Evict down to this size (e.g. 20G)");
  evict->add_option("--older-than", *older, "Evict blocks not used for this long (e.g. 7d, 12h)");
  evict->add_option("--namespace", *ens, "Evict every block of this namespace");
  evict->callback([a, to, older, ens] {
    const int given = !to->empty() + !older->empty() + !ens->empty();
    if (given != 1) trove::cli::fail("say exactly one of --to SIZE, --older-than AGE, --namespace NS");
    auto s = open_store(*a, true);
    const auto before = s->stats();
    trove::Status st;
    if (!to->empty()) {
      auto bytes = parse_size(*to);
      if (!bytes) trove::cli::fail(fmt::format("'{}' is not a size (e.g. 500M, 20G)", *to));
      st = s->evict_to(*bytes);
    } else if (!older->empty()) {
      auto age = parse_age(*older);
      if (!age) trove::cli::fail(fmt::format("'{}' is not an age (e.g. 30m, 12h, 7d)", *older));
      const int64_t cutoff = now_seconds() - *age;
      st = s->evict_if([cutoff](const BlockEntry& e) { return e.last_access < cutoff; });
    } else {
      const std::string name = *ens;
      st = s->evict_if([name](const BlockEntry& e) { return e.name_space == name; });
    }
    if (!st.ok()) trove::cli::fail(st.message());
    const auto after = s->stats();
    if (a->json) {
      print_json({{"evicted_blocks", before.blocks - after.blocks},
                  {"freed_bytes", before.stored_bytes - after.stored_bytes},
                  {"blocks", after.blocks},
                  {"stored_bytes", after.stored_bytes}});
    } else {
      std::printf("evicted %llu blocks (%s); %llu blocks, %s remain\n",
                  static_cast<unsigned long long>(before.blocks - after.blocks),
                  human_bytes(before.stored_bytes - after.stored_bytes).c_str(),
                  static_cast<unsigned long long>(after.blocks), human_bytes(after.stored_bytes).c_str());
    }
  });

  kv.add_subcommand("gc", "Compact segment files whose live share is low")->callback([a] {
    auto s = open_store(*a, true);
    const auto before = s->stats().segment_bytes;
    if (auto st = s->compact(); !st.ok()) trove::cli::fail(st.message());
    const auto after = s->stats().segment_bytes;
    if (a->json) print_json({{"segment_bytes_before", before}, {"segment_bytes_after", after}});
    else std::printf("segment files: %s → %s\n", human_bytes(before).c_str(), human_bytes(after).c_str());
  });

  auto verify = kv.add_subcommand("verify", "Check every block's checksum");
  auto repair = std::make_shared<bool>(false);
  verify->add_flag("--repair", *repair, "Remove bad blocks from the index (needs the writer lock)");
  verify->callback([a, repair] { cmd_verify(*a, *repair); });
}

trove::cli::CommandRegistration reg{"kv", "Inspect and maintain the KV store", add_kv};

}  // namespace
