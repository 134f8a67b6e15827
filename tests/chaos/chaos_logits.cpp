// tests/chaos/chaos_logits.cpp — after a crash, do blocks restored from the KV store give the logits a
// cold recompute gives? (issue 21, item 1: "no block served whose bytes differ from what was computed".)
//
//   chaos_logits --model GGUF --store DIR [--samples N] [--seed S] [--ctx N]
//
// Opens the store read-only (a server may hold it for writing), loads the model with it, and picks N
// random stored chains of this model (a block and its ancestors; the token ids come from the records).
// For each: sequence A attaches the chain from the store (every block must be restored) and computes
// the logits after one more token; sequence B computes the same tokens cold (no cache). The largest
// absolute logit difference must stay within 1e-3 (the batching of the two differs; a wrong block
// differs by orders more). Prints one JSON line {samples, blocks, max_diff, failures}; exit 1 on a
// failure, 0 otherwise (also when the store holds no chain of this model: samples 0).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "engine/runtime/engine.h"
#include "kvstore/store.h"

using namespace trove;

int main(int argc, char** argv) {
  std::string model, store_dir;
  int samples = 3;
  uint32_t seed = 1, ctx = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") model = v;
    else if (a == "--store") store_dir = v;
    else if (a == "--samples") samples = std::atoi(v.c_str());
    else if (a == "--seed") seed = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (a == "--ctx") ctx = static_cast<uint32_t>(std::atoi(v.c_str()));
  }
  if (model.empty() || store_dir.empty()) {
    std::fprintf(stderr, "usage: chaos_logits --model GGUF --store DIR [--samples N] [--seed S] [--ctx N]\n");
    return 2;
  }
  kv::Options ko;
  ko.read_only = true;
  auto opened = kv::Store::open(store_dir, ko);
  if (!opened.ok()) {
    std::fprintf(stderr, "chaos_logits: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<kv::Store> store = std::move(*opened);
  engine::EngineOptions eo;
  eo.model_path = model;
  eo.n_ctx = ctx;
  eo.max_sequences = 2;
  eo.block_tokens = store->block_tokens();
  eo.store = store;
  auto loaded = engine::Engine::load(eo);
  if (!loaded.ok()) {
    std::fprintf(stderr, "chaos_logits: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  engine::Engine& e = **loaded;
  const std::string fp = e.fingerprint();
  std::unordered_map<kv::BlockKey, kv::BlockEntry, kv::BlockKeyHash> mine;
  (void)store->for_each_entry([&](const kv::BlockEntry& b) {
    if (b.fingerprint == fp) mine.emplace(b.ref.key, b);
  });
  std::vector<kv::BlockKey> keys;
  for (const auto& [k, b] : mine) keys.push_back(k);
  std::sort(keys.begin(), keys.end(), [](const kv::BlockKey& a, const kv::BlockKey& b) {
    return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo;
  });
  std::mt19937 rng(seed);
  std::shuffle(keys.begin(), keys.end(), rng);
  const uint32_t bt = store->block_tokens();
  int done = 0, failures = 0;
  size_t blocks = 0;
  float worst = 0;
  for (const auto& leaf : keys) {
    if (done >= samples) break;
    // The chain root → leaf, with its token ids.
    std::vector<kv::BlockKey> chain{leaf};
    bool whole = true;
    while (!mine.at(chain.back()).ref.parent.is_zero()) {
      const auto p = mine.at(chain.back()).ref.parent;
      if (!mine.count(p)) {
        whole = false;  // an orphan: `trove kv verify` would not flag it, but it cannot be attached
        break;
      }
      chain.push_back(p);
    }
    if (!whole) continue;
    std::reverse(chain.begin(), chain.end());
    std::vector<int32_t> tokens;
    for (const auto& k : chain) {
      auto ids = store->token_ids(k);
      if (!ids.ok() || ids->size() != bt) {
        whole = false;
        break;
      }
      tokens.insert(tokens.end(), ids->begin(), ids->end());
    }
    if (!whole || tokens.size() + 1 > e.n_ctx()) continue;
    const std::string ns = mine.at(leaf).name_space;
    tokens.push_back(tokens.back());  // one more token: its logits see every restored block
    const std::span<const int32_t> all(tokens);
    auto a = e.open_sequence();
    auto b = e.open_sequence();
    if (!a.ok() || !b.ok()) return 1;
    auto got = e.attach_prefix(*a, all.first(all.size() - 1), ns);
    std::vector<float> la, lb;
    std::string why;
    if (!got.ok() || *got != all.size() - 1) {
      why = fmt::format("attached {} of {} stored tokens", got.ok() ? *got : 0, all.size() - 1);
    } else {
      engine::StepInput in;
      in.seq = *a;
      in.tokens = all.last(1);
      in.sample = false;
      in.want_logits = true;
      auto out = e.step(std::vector<engine::StepInput>{in});
      if (out.ok()) la = (*out)[0].logits;
      for (size_t at = 0; at < all.size() && why.empty();) {
        const size_t n = std::min<size_t>(e.max_batch_tokens(), all.size() - at);
        engine::StepInput c;
        c.seq = *b;
        c.tokens = all.subspan(at, n);
        c.sample = false;
        c.want_logits = at + n == all.size();
        auto o = e.step(std::vector<engine::StepInput>{c});
        if (!o.ok()) why = o.status().ToString();
        else if (c.want_logits) lb = (*o)[0].logits;
        at += n;
      }
    }
    float diff = 0;
    if (why.empty() && (la.empty() || la.size() != lb.size())) why = "no logits";
    for (size_t i = 0; why.empty() && i < la.size(); ++i) diff = std::max(diff, std::fabs(la[i] - lb[i]));
    if (why.empty() && !(diff <= 1e-3f)) why = fmt::format("restored logits differ from the cold ones by {}", diff);
    if (!why.empty()) {
      ++failures;
      std::fprintf(stderr, "chaos_logits: chain ending in %s (%zu blocks, namespace %s): %s\n", leaf.hex().c_str(),
                   chain.size(), ns.c_str(), why.c_str());
    }
    worst = std::max(worst, diff);
    blocks += chain.size();
    ++done;
    e.close_sequence(*a);
    e.close_sequence(*b);
  }
  std::printf("{\"samples\": %d, \"blocks\": %zu, \"max_diff\": %g, \"failures\": %d}\n", done, blocks, worst, failures);
  return failures ? 1 : 0;
}
