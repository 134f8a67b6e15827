// The KV store tier of the prefix cache, for each synthetic model type (dense tiny in F32, MoE tiny-moe
// in Q4_K_M), on lavapipe: a prompt computed cold writes its completed blocks to
// the store (write-behind); a fresh engine in the same process (empty GPU cache, same Store) restores the
// prefix from the store and gets the cold logits within the precision bound, and generation then
// continues with the same greedy tokens; the same after a restart (the store closed and reopened from
// disk, a new engine); a corrupt block on disk ends the restored prefix there (counted, logged) and the
// answer is still the cold one. Through the server's scheduler, a request whose prefix is in the store
// (read in the background while another request runs) reports it as cached and answers as cold.
// ~75 s on 2 cores (each decode step computes a 152k-vocab logits row).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "engine/gguf/synthetic.h"
#include "engine/runtime/engine.h"
#include "kvstore/store.h"
#include "server/scheduler.h"
#include "tests/scoped_env.h"

using namespace trove;
using engine::StepInput;

namespace {

constexpr uint32_t kBlock = 16;
constexpr uint32_t kPrompt = 110;    // 6 full blocks + 14 tokens
constexpr uint32_t kGenerate = 4;    // crosses a block boundary: a block completed by generation is stored too
// Restored blocks are the cold run's bytes; only the batching of the suffix's prefill differs (the
// same bound as the GPU tier's test, test_prefix_cache).
constexpr float kLogitBound = 1e-3f;

const std::filesystem::path& work_dir() {
  static const auto dir =
      std::filesystem::temp_directory_path() / ("trove-test-kv-store-tier-" + std::to_string(::getpid()));
  return dir;
}

struct RemoveWorkDir : testing::Environment {
  void TearDown() override { std::filesystem::remove_all(work_dir()); }
};
[[maybe_unused]] testing::Environment* const kCleanup = testing::AddGlobalTestEnvironment(new RemoveWorkDir);

struct ModelCase {
  const char* preset;
  const char* type;
};

std::string make_model(const ModelCase& m) {
  std::filesystem::create_directories(work_dir());
  gguf::MkModelOptions o;
  o.preset = m.preset;
  o.type = m.type;
  o.out = (work_dir() / fmt::format("{}-{}.gguf", m.preset, m.type)).string();
  o.seed = 11;
  auto r = gguf::write_synthetic_model(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return o.out;
}

std::shared_ptr<kv::Store> open_store(const std::string& dir) {
  kv::Options o;
  o.block_tokens = kBlock;
  auto s = kv::Store::open(dir, o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::shared_ptr<kv::Store>(std::move(*s)) : nullptr;
}

std::unique_ptr<engine::Engine> load(const std::string& model, std::shared_ptr<kv::Store> store) {
  engine::EngineOptions o;
  o.model_path = model;
  o.n_ctx = 256;
  o.max_sequences = 2;
  o.max_batch_tokens = 64;
  o.block_tokens = kBlock;
  o.store = std::move(store);
  o.restore_group_blocks = 2;  // 6 stored prompt blocks = 3 groups through the two staging halves
  // A restored prompt's last rows go through a shorter step than the cold one's, so through another
  // kernel on a GPU (f16 matrix units against the q8 matvec: ~1e-2 apart, over kLogitBound); the f32
  // paths — lavapipe's anyway — keep the comparison about the store's bytes.
  tests::ScopedEnv matmul("TROVE_MATMUL", "tiled"), matvec("TROVE_MATVEC", "f32");
  auto e = engine::Engine::load(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

std::vector<int32_t> prompt() {
  std::vector<int32_t> v(kPrompt);
  for (uint32_t i = 0; i < kPrompt; ++i) v[i] = static_cast<int32_t>((i * 7919 + 104729) % 150000);
  return v;
}

// What one request does: attach the cached prefix (all but the last prompt token), prefill the rest in
// chunks of 64, keep the logits after the prompt, then generate greedily.
struct Request {
  uint32_t attached = 0;
  std::vector<float> logits;
  std::vector<int32_t> generated;
};

Request run(engine::Engine& e) {
  Request r;
  const auto p = prompt();
  const std::span<const int32_t> ps(p);
  auto seq = e.open_sequence();
  EXPECT_TRUE(seq.ok());
  if (!seq.ok()) return r;
  auto got = e.attach_prefix(*seq, ps.first(p.size() - 1), "test");
  EXPECT_TRUE(got.ok()) << got.status().ToString();
  r.attached = got.ok() ? *got : 0;
  int32_t next = -1;
  for (uint32_t at = r.attached; at < p.size();) {
    const uint32_t n = std::min<uint32_t>(64, static_cast<uint32_t>(p.size()) - at);
    StepInput in;
    in.seq = *seq;
    in.tokens = ps.subspan(at, n);
    in.sample = at + n == p.size();
    in.want_logits = in.sample;
    auto out = e.step(std::vector<StepInput>{in});
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return r;
    if (in.sample) {
      r.logits = (*out)[0].logits;
      next = (*out)[0].token;
    }
    at += n;
  }
  for (uint32_t i = 0; i < kGenerate; ++i) {
    r.generated.push_back(next);
    StepInput in;
    in.seq = *seq;
    in.tokens = std::span<const int32_t>(&r.generated.back(), 1);
    auto out = e.step(std::vector<StepInput>{in});
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return r;
    next = (*out)[0].token;
  }
  e.close_sequence(*seq);
  return r;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// The blocks the store holds for this model: (key, segment, offset) in chain order of the prompt.
std::vector<kv::BlockRef> stored_prompt_blocks(kv::Store& s, const std::string& fingerprint) {
  const auto p = prompt();
  return s.lookup("test", fingerprint, p).blocks;
}

class KvStoreTier : public testing::TestWithParam<ModelCase> {};

TEST_P(KvStoreTier, RestoredPrefixGivesTheColdLogitsInProcessAfterRestartAndPastACorruptBlock) {
  const std::string model = make_model(GetParam());
  const std::string dir = (work_dir() / fmt::format("store-{}-{}", GetParam().preset, GetParam().type)).string();
  const uint32_t full_prompt_blocks = (kPrompt - 1) / kBlock;  // what attach may take: 6 blocks = 96 tokens
  static_assert((kPrompt + kGenerate) / kBlock > kPrompt / kBlock);

  // Cold: nothing cached anywhere; completed blocks (prompt and generated) go to the store.
  auto store = open_store(dir);
  ASSERT_TRUE(store);
  std::string fingerprint;
  Request cold;
  {
    auto e = load(model, store);
    ASSERT_TRUE(e);
    fingerprint = e->fingerprint();
    cold = run(*e);
    ASSERT_EQ(cold.attached, 0u);
    ASSERT_EQ(cold.generated.size(), kGenerate);
    e->wait_for_store_writes();  // the write-behind worker queues the last step's blocks after it returned
    const auto cs = e->cache_stats();
    EXPECT_EQ(cs.store_blocks_queued, (kPrompt + kGenerate) / kBlock) << "every completed block is written once";
    EXPECT_EQ(cs.store_blocks_dropped, 0u);
  }  // the engine flushes the store when destroyed
  ASSERT_EQ(stored_prompt_blocks(*store, fingerprint).size(), kPrompt / kBlock);

  // Same process, a fresh engine (empty GPU cache) on the same store.
  {
    auto e = load(model, store);
    ASSERT_TRUE(e);
    const Request warm = run(*e);
    EXPECT_EQ(warm.attached, full_prompt_blocks * kBlock);
    const auto cs = e->cache_stats();
    EXPECT_EQ(cs.store_hit_tokens, full_prompt_blocks * kBlock);
    EXPECT_EQ(cs.gpu_hit_tokens, 0u);
    EXPECT_GT(cs.store_restored_bytes, 0u);
    // Each restored block was read once, from the page cache or the disk (which: up to the OS).
    EXPECT_EQ(cs.store_page_cache_reads + cs.store_direct_reads, full_prompt_blocks);
    EXPECT_LT(max_abs_diff(cold.logits, warm.logits), kLogitBound);
    EXPECT_EQ(warm.generated, cold.generated);
    // A second request in this engine finds the restored blocks on the GPU.
    const Request again = run(*e);
    EXPECT_EQ(again.attached, full_prompt_blocks * kBlock);
    EXPECT_EQ(e->cache_stats().gpu_hit_tokens, full_prompt_blocks * kBlock);
    EXPECT_EQ(again.generated, cold.generated);
  }

  // Restart: the store is closed and opened again from disk, and a new engine loads the model.
  store.reset();
  store = open_store(dir);
  ASSERT_TRUE(store);
  {
    auto e = load(model, store);
    ASSERT_TRUE(e);
    ASSERT_EQ(e->fingerprint(), fingerprint) << "the fingerprint is a function of the weights and the KV layout";
    const Request restarted = run(*e);
    EXPECT_EQ(restarted.attached, full_prompt_blocks * kBlock);
    EXPECT_EQ(e->cache_stats().store_hit_tokens, full_prompt_blocks * kBlock);
    EXPECT_LT(max_abs_diff(cold.logits, restarted.logits), kLogitBound);
    EXPECT_EQ(restarted.generated, cold.generated);
  }

  // A corrupt block: flip bytes inside the third block's record. The restore stops before it, the rest
  // is prefilled, and the answer is unchanged.
  const auto blocks = stored_prompt_blocks(*store, fingerprint);
  ASSERT_GE(blocks.size(), 3u);
  const kv::BlockRef third = blocks[2];
  store.reset();
  {
    const auto seg = std::filesystem::path(dir) / "segments" / fmt::format("seg-{:08d}.trv", third.segment);
    std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f) << seg;
    f.seekp(static_cast<std::streamoff>(third.offset + third.length / 2));
    const char junk[8] = {'c', 'o', 'r', 'r', 'u', 'p', 't', '!'};
    f.write(junk, sizeof junk);
  }
  store = open_store(dir);
  ASSERT_TRUE(store);
  {
    auto e = load(model, store);
    ASSERT_TRUE(e);
    const Request damaged = run(*e);
    EXPECT_EQ(damaged.attached, 2 * kBlock) << "the blocks before the corrupt one are restored";
    EXPECT_EQ(e->cache_stats().store_read_failures, 1u);
    EXPECT_LT(max_abs_diff(cold.logits, damaged.logits), kLogitBound);
    EXPECT_EQ(damaged.generated, cold.generated);
  }
}

// One request through the scheduler; returns its result and text.
server::GenerationResult complete(server::Scheduler& sched, std::vector<int32_t> p, std::string* text) {
  server::GenerationRequest r;
  r.prompt = std::move(p);
  r.max_tokens = 3;
  r.use_cache = true;
  r.cache_namespace = "test";
  auto stream = sched.submit(std::move(r));
  for (;;) {
    std::vector<server::GenerationEvent> evs;
    stream->wait(evs, std::chrono::milliseconds(200));
    for (auto& ev : evs) {
      if (ev.kind == server::GenerationEvent::Kind::kDone) return ev.result;
      *text += ev.text;
    }
  }
}

TEST(KvStoreTierScheduler, ARequestRestoredInTheBackgroundReportsItsCachedTokensAndAnswersAsCold) {
  const std::string model = make_model({"tiny", "F32"});
  const std::string dir = (work_dir() / "store-scheduler").string();
  auto store = open_store(dir);
  ASSERT_TRUE(store);
  std::string cold_text;
  {
    auto e = load(model, store);
    ASSERT_TRUE(e);
    server::Scheduler sched(*e);
    const auto r = complete(sched, prompt(), &cold_text);
    ASSERT_NE(r.finish, server::FinishReason::kError) << r.error;
    EXPECT_EQ(r.cached_tokens, 0u);
    // The request's end was held until the write-behind worker had queued every block it completed
    // (docs/reliability.md, "acknowledged durable"): read as soon as the end arrived.
    const uint64_t enqueued = store->stats().enqueued;
    EXPECT_EQ(enqueued, e->store_write_progress().handed);
    EXPECT_GE(enqueued, kPrompt / kBlock);
  }
  auto e = load(model, store);  // a restart: empty GPU cache, the store on disk
  ASSERT_TRUE(e);
  server::Scheduler sched(*e);
  std::vector<int32_t> other(70);
  for (size_t i = 0; i < other.size(); ++i) other[i] = static_cast<int32_t>(1000 + 13 * i);
  std::string warm_text, other_text;
  server::GenerationResult warm, unrelated;
  std::thread t([&] { unrelated = complete(sched, other, &other_text); });
  warm = complete(sched, prompt(), &warm_text);
  t.join();
  ASSERT_NE(warm.finish, server::FinishReason::kError) << warm.error;
  ASSERT_NE(unrelated.finish, server::FinishReason::kError) << unrelated.error;
  EXPECT_EQ(warm.cached_tokens, (kPrompt - 1) / kBlock * kBlock) << "restored from the store";
  EXPECT_EQ(e->cache_stats().store_hit_tokens, (kPrompt - 1) / kBlock * kBlock);
  EXPECT_EQ(warm_text, cold_text);
  EXPECT_EQ(unrelated.cached_tokens, 0u);
}

INSTANTIATE_TEST_SUITE_P(SyntheticModels, KvStoreTier,
                         testing::Values(ModelCase{"tiny", "F32"}, ModelCase{"tiny-moe", "Q4_K_M"}),
                         [](const testing::TestParamInfo<ModelCase>& i) {
                           return fmt::format("{}_{}", i.param.preset == std::string("tiny") ? "dense" : "moe",
                                              i.param.type);
                         });

}  // namespace
