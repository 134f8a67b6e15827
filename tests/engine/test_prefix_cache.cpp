// The engine's GPU-resident prefix cache on lavapipe with the tiny synthetic model (F32): logits after
// a prompt computed cold equal those computed after attaching its cached prefix (only the suffix is
// prefilled), a block rewritten after truncate() is copied first so the cache stays intact, unreferenced
// cached blocks are evicted least recently used first under pool pressure, and another namespace or a
// sequence that never attached shares nothing; through the server's scheduler a repeated request
// reports its cached tokens exactly. ~10 s on 2 cores (a few 152k-vocab logits rows).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "engine/gguf/synthetic.h"
#include "engine/runtime/engine.h"
#include "server/scheduler.h"

using namespace trove;
using engine::StepInput;

namespace {

constexpr uint32_t kBlock = 16;

const std::filesystem::path& work_dir() {
  static const auto dir =
      std::filesystem::temp_directory_path() / ("trove-test-prefix-cache-" + std::to_string(::getpid()));
  return dir;
}

struct RemoveWorkDir : testing::Environment {
  void TearDown() override { std::filesystem::remove_all(work_dir()); }
};
[[maybe_unused]] testing::Environment* const kCleanup = testing::AddGlobalTestEnvironment(new RemoveWorkDir);

std::string model_path() {
  static const std::string path = [] {
    std::filesystem::create_directories(work_dir());
    gguf::MkModelOptions o;
    o.preset = "tiny";
    o.type = "F32";
    o.out = (work_dir() / "tiny.gguf").string();
    o.seed = 5;
    auto r = gguf::write_synthetic_model(o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return o.out;
  }();
  return path;
}

std::unique_ptr<engine::Engine> load(uint64_t pool_bytes = 0, uint32_t block_tokens = kBlock) {
  engine::EngineOptions o;
  o.model_path = model_path();
  o.n_ctx = 128;
  o.max_sequences = 3;
  o.kv_pool_bytes = pool_bytes;
  o.max_batch_tokens = 64;
  o.block_tokens = block_tokens;
  auto e = engine::Engine::load(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

std::vector<int32_t> prompt(uint32_t n, int32_t salt) {
  std::vector<int32_t> v(n);
  for (uint32_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 7919 + salt * 104729) % 150000);
  return v;
}

StepInput fill(engine::SeqId seq, std::span<const int32_t> toks, bool logits) {
  StepInput in;
  in.seq = seq;
  in.tokens = toks;
  in.sample = false;
  in.want_logits = logits;
  return in;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST(PrefixCache, AttachedPrefixGivesTheColdLogitsAndPrefillsOnlyTheSuffix) {
  auto e = load();
  ASSERT_TRUE(e);
  const auto p = prompt(50, 1);  // 3 full blocks of 16 + 2 tokens
  const std::span<const int32_t> ps(p);

  auto a = e->open_sequence();
  ASSERT_TRUE(a.ok());
  auto miss = e->attach_prefix(*a, ps.first(p.size() - 1), "ns");
  ASSERT_TRUE(miss.ok()) << miss.status().ToString();
  EXPECT_EQ(*miss, 0u);
  auto cold = e->step(std::vector<StepInput>{fill(*a, ps, true)});
  ASSERT_TRUE(cold.ok()) << cold.status().ToString();
  e->close_sequence(*a);
  EXPECT_EQ(e->pool_stats().cached_blocks, 3u) << "closing keeps the 3 completed blocks resident";
  EXPECT_EQ(e->pool_stats().used_blocks, 0u);

  auto b = e->open_sequence();
  ASSERT_TRUE(b.ok());
  auto hit = e->attach_prefix(*b, ps.first(p.size() - 1), "ns");
  ASSERT_TRUE(hit.ok());
  ASSERT_EQ(*hit, 48u);
  EXPECT_EQ(e->length(*b), 48u);
  EXPECT_EQ(e->tokens(*b), std::vector<int32_t>(p.begin(), p.begin() + 48));
  EXPECT_EQ(e->pool_stats().cached_blocks, 0u) << "attached blocks are referenced again";
  auto warm = e->step(std::vector<StepInput>{fill(*b, ps.subspan(48), true)});  // the 2-token suffix only
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_LT(max_abs_diff((*cold)[0].logits, (*warm)[0].logits), 1e-3f);

  // Rewriting inside a registered block (truncate then other tokens) must copy it first: a later
  // attach still finds the original content.
  ASSERT_TRUE(e->truncate(*b, 40).ok());
  const auto other = prompt(10, 7);
  ASSERT_TRUE(e->step(std::vector<StepInput>{fill(*b, other, false)}).ok());
  auto c = e->open_sequence();
  ASSERT_TRUE(c.ok());
  auto again = e->attach_prefix(*c, ps.first(p.size() - 1), "ns");
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(*again, 48u);
  auto warm2 = e->step(std::vector<StepInput>{fill(*c, ps.subspan(48), true)});
  ASSERT_TRUE(warm2.ok()) << warm2.status().ToString();
  EXPECT_LT(max_abs_diff((*cold)[0].logits, (*warm2)[0].logits), 1e-3f);

  // Attaching to a sequence that already holds tokens is refused.
  auto busy = e->attach_prefix(*c, ps, "ns");
  EXPECT_FALSE(busy.ok());
}

TEST(PrefixCache, NamespacesAndUnattachedSequencesShareNothing) {
  auto e = load();
  ASSERT_TRUE(e);
  EXPECT_NE(e->fingerprint().find("/bt16/"), std::string::npos) << e->fingerprint();
  const auto p = prompt(40, 2);
  auto a = e->open_sequence();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(e->attach_prefix(*a, p, "alice").ok());
  ASSERT_TRUE(e->step(std::vector<StepInput>{fill(*a, p, false)}).ok());
  e->close_sequence(*a);

  auto b = e->open_sequence();
  ASSERT_TRUE(b.ok());
  auto other_ns = e->attach_prefix(*b, p, "bob");
  ASSERT_TRUE(other_ns.ok());
  EXPECT_EQ(*other_ns, 0u) << "another namespace must not see alice's blocks";
  e->close_sequence(*b);
  auto c = e->open_sequence();
  ASSERT_TRUE(c.ok());
  auto same_ns = e->attach_prefix(*c, p, "alice");
  ASSERT_TRUE(same_ns.ok());
  EXPECT_EQ(*same_ns, 32u);
  e->close_sequence(*c);

  // A sequence that never attached (the opt-out) registers nothing.
  const auto q = prompt(40, 3);
  auto d = e->open_sequence();
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(e->step(std::vector<StepInput>{fill(*d, q, false)}).ok());
  e->close_sequence(*d);
  auto f = e->open_sequence();
  ASSERT_TRUE(f.ok());
  auto opted_out = e->attach_prefix(*f, q, "alice");
  ASSERT_TRUE(opted_out.ok());
  EXPECT_EQ(*opted_out, 0u);

  // Another block size is another KV layout, hence another fingerprint.
  auto e32 = load(0, 32);
  ASSERT_TRUE(e32);
  EXPECT_NE(e->fingerprint(), e32->fingerprint());
}

TEST(PrefixCache, PoolPressureEvictsLeastRecentlyUsedCachedBlocks) {
  uint64_t block_bytes = 0;
  {
    auto probe = load();
    ASSERT_TRUE(probe);
    const auto st = probe->pool_stats();
    block_bytes = st.bytes / st.total_blocks;
  }
  auto e = load(8 * block_bytes);  // 8 blocks of 16 tokens
  ASSERT_TRUE(e);
  ASSERT_EQ(e->pool_stats().total_blocks, 8u);
  const auto pa = prompt(48, 11), pb = prompt(48, 12), pc = prompt(64, 13);
  auto run = [&](const std::vector<int32_t>& p) {
    auto s = e->open_sequence();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(e->attach_prefix(*s, p, "ns").ok());
    ASSERT_TRUE(e->step(std::vector<StepInput>{fill(*s, p, false)}).ok());
    e->close_sequence(*s);
  };
  run(pa);  // 3 cached
  run(pb);  // 6 cached, 2 free
  EXPECT_EQ(e->pool_stats().cached_blocks, 6u);
  EXPECT_EQ(e->pool_stats().evictions, 0u);
  run(pc);  // needs 4: 2 free + the 2 least recently released (pa's first two blocks)
  EXPECT_EQ(e->pool_stats().evictions, 2u);
  EXPECT_EQ(e->pool_stats().cached_blocks, 8u);

  auto s = e->open_sequence();
  ASSERT_TRUE(s.ok());
  auto a = e->attach_prefix(*s, pa, "ns");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 0u) << "pa's root block was evicted, so its chain is gone";
  e->close_sequence(*s);
  s = e->open_sequence();
  ASSERT_TRUE(s.ok());
  auto b = e->attach_prefix(*s, pb, "ns");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, 48u) << "pb was released later and survives";
  e->close_sequence(*s);
  s = e->open_sequence();
  ASSERT_TRUE(s.ok());
  auto c = e->attach_prefix(*s, pc, "ns");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, 64u);
}

namespace {

server::GenerationResult run_request(server::Scheduler& sched, const std::vector<int32_t>& p, bool use_cache,
                                     const std::string& ns, std::vector<std::string>* text = nullptr) {
  server::GenerationRequest r;
  r.prompt = p;
  r.max_tokens = 2;
  r.use_cache = use_cache;
  r.cache_namespace = ns;
  auto stream = sched.submit(std::move(r));
  for (;;) {
    std::vector<server::GenerationEvent> evs;
    stream->wait(evs, std::chrono::milliseconds(200));
    for (auto& ev : evs) {
      if (ev.kind == server::GenerationEvent::Kind::kDone) return ev.result;
      if (text) text->push_back(ev.text);
    }
  }
}

}  // namespace

TEST(PrefixCache, SchedulerReportsCachedTokensOfARepeatedRequest) {
  auto e = load();
  ASSERT_TRUE(e);
  server::Scheduler sched(*e);
  const auto p = prompt(50, 21);
  std::vector<std::string> t1, t2;
  const auto first = run_request(sched, p, true, "default", &t1);
  ASSERT_EQ(first.finish == server::FinishReason::kError, false) << first.error;
  EXPECT_EQ(first.cached_tokens, 0u);
  EXPECT_EQ(first.prompt_tokens, 50u);
  const auto second = run_request(sched, p, true, "default", &t2);
  EXPECT_EQ(second.cached_tokens, 48u) << "3 full blocks of 16; the last 2 prompt tokens are prefilled";
  EXPECT_EQ(t1, t2) << "greedy output after a cached prefix equals the cold one";
  EXPECT_EQ(second.generated_tokens, first.generated_tokens);
  EXPECT_EQ(run_request(sched, p, false, "default").cached_tokens, 0u) << "opt-out";
  EXPECT_EQ(run_request(sched, p, true, "tenant-b").cached_tokens, 0u) << "another namespace";
}

TEST(PrefixCache, RequestsArrivingTogetherWithASharedPrefixComputeItOnce) {
  auto e = load();  // 3 slots, steps of at most 64 tokens: the shared 96 tokens take two steps
  ASSERT_TRUE(e);
  server::Scheduler sched(*e);
  const auto shared = prompt(96, 31);
  std::vector<std::shared_ptr<server::GenerationStream>> streams;
  for (int i = 0; i < 3; ++i) {
    server::GenerationRequest r;
    r.prompt = shared;
    const auto own = prompt(10, 40 + i);
    r.prompt.insert(r.prompt.end(), own.begin(), own.end());
    r.max_tokens = 1;
    r.use_cache = true;
    r.cache_namespace = "default";
    streams.push_back(sched.submit(std::move(r)));  // all three before any is admitted or prefilled
  }
  std::vector<uint32_t> cached;
  for (auto& s : streams) {
    for (bool done = false; !done;) {
      std::vector<server::GenerationEvent> evs;
      s->wait(evs, std::chrono::milliseconds(200));
      for (auto& ev : evs) {
        if (ev.kind != server::GenerationEvent::Kind::kDone) continue;
        EXPECT_NE(ev.result.finish, server::FinishReason::kError) << ev.result.error;
        cached.push_back(ev.result.cached_tokens);
        done = true;
      }
    }
  }
  EXPECT_EQ(cached, (std::vector<uint32_t>{0, 96, 96}))
      << "the first computes the 6 shared blocks; the others wait for them and attach them";
}
