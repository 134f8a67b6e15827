// The KV store's write-behind worker (engine/runtime/block_export.h) against a real store in a temporary
// directory: slots cycle through the worker and every block handed over reaches the store with its
// bytes (read back after a flush); a full store queue is waited for, not dropped into; acquire()
// waits while the worker holds every slot; destroying the
// exporter hands over what it still holds; released slots are free again. No GPU: the "staging buffer"
// is host memory that the test fills the way the engine's GPU copies would.
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <numeric>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "engine/runtime/block_export.h"
#include "kvstore/store.h"

using namespace trove;
using engine::BlockExporter;

namespace {

constexpr uint32_t kBlockTokens = 4;
constexpr uint64_t kSlotBytes = 4096;
const std::string kFingerprint = "test-fingerprint";
const std::string kNamespace = "ns";

struct Fixture {
  std::filesystem::path dir;
  std::shared_ptr<kv::Store> store;
  std::vector<int32_t> tokens;        // the prompt whose chain of blocks the tests export
  std::vector<kv::BlockKey> keys;     // its block keys
  std::vector<uint8_t> host;          // the staging "buffer"

  Fixture(const std::string& name, uint32_t blocks, uint32_t slots, size_t queue_bytes = 0) {
    dir = std::filesystem::temp_directory_path() / fmt_dir(name);
    std::filesystem::remove_all(dir);
    kv::Options o;
    o.block_tokens = kBlockTokens;
    if (queue_bytes) o.insert_queue_bytes = queue_bytes;
    auto s = kv::Store::open(dir.string(), o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (s.ok()) store = std::move(*s);
    tokens.resize(size_t{blocks} * kBlockTokens);
    std::iota(tokens.begin(), tokens.end(), 1000);
    keys = kv::chain_keys(kNamespace, kFingerprint, tokens, kBlockTokens);
    host.assign(size_t{slots} * kSlotBytes, 0);
  }
  ~Fixture() {
    store.reset();
    std::filesystem::remove_all(dir);
  }
  static std::string fmt_dir(const std::string& name) {
    return "trove-test-block-export-" + name + "-" + std::to_string(::getpid());
  }
  // What the GPU copy of block i would have put into a slot.
  static uint8_t byte(size_t block, size_t at) { return static_cast<uint8_t>(block * 31 + at * 7 + 1); }
  BlockExporter::Block fill(BlockExporter& x, uint32_t slot, size_t i) {
    uint8_t* p = x.slot_bytes_at(slot);
    for (size_t a = 0; a < kSlotBytes; ++a) p[a] = byte(i, a);
    BlockExporter::Block b;
    b.slot = slot;
    b.key = keys[i];
    b.parent = i == 0 ? kv::BlockKey{} : keys[i - 1];
    b.name_space = kNamespace;
    b.tokens.assign(tokens.begin() + i * kBlockTokens, tokens.begin() + (i + 1) * kBlockTokens);
    return b;
  }
  std::unique_ptr<BlockExporter> exporter(uint32_t slots) {
    return std::make_unique<BlockExporter>(store, BlockExporter::Format{kFingerprint, kBlockTokens, 3}, host.data(),
                                           kSlotBytes, slots);
  }
  // The stored chain of the prompt, each block's bytes checked.
  size_t stored_and_intact() {
    EXPECT_TRUE(store->flush().ok());
    const kv::PrefixMatch m = store->lookup(kNamespace, kFingerprint, tokens);
    std::vector<std::vector<uint8_t>> bufs(m.blocks.size(), std::vector<uint8_t>(kSlotBytes));
    std::vector<std::span<uint8_t>> out(bufs.begin(), bufs.end());
    const std::vector<Status> st = store->read(m.blocks, out);
    for (size_t i = 0; i < m.blocks.size(); ++i) {
      EXPECT_TRUE(st[i].ok()) << "block " << i << ": " << st[i].ToString();
      EXPECT_EQ(m.blocks[i].raw_size, kSlotBytes);
      for (size_t a = 0; a < kSlotBytes; ++a) {
        if (bufs[i][a] != byte(i, a)) {
          ADD_FAILURE() << "block " << i << " differs at byte " << a;
          break;
        }
      }
    }
    return m.blocks.size();
  }
};

TEST(BlockExport, SlotsCycleThroughTheWorkerAndEveryBlockReachesTheStore) {
  constexpr uint32_t kBlocks = 40, kSlots = 3;
  Fixture f("cycle", kBlocks, kSlots);
  ASSERT_TRUE(f.store);
  auto x = f.exporter(kSlots);
  // As the engine does: ask for every block still to go, get what is free, hand those over.
  for (size_t next = 0; next < kBlocks;) {
    const std::vector<uint32_t> slots = x->acquire(kBlocks - next);
    ASSERT_FALSE(slots.empty());
    ASSERT_LE(slots.size(), kSlots);
    std::vector<BlockExporter::Block> blocks;
    for (uint32_t s : slots) blocks.push_back(f.fill(*x, s, next++));
    x->hand_over(std::move(blocks));
  }
  x->drain();
  const BlockExporter::Counters c = x->counters();
  EXPECT_EQ(c.queued, kBlocks);
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(x->acquire(kSlots).size(), kSlots) << "after drain() every slot is free";
  EXPECT_EQ(f.stored_and_intact(), kBlocks);
}

// A store whose write queue holds two blocks: the worker waits for the writer instead of having
// blocks dropped, so all 60 reach the disk (without the wait most would be refused).
TEST(BlockExport, AFullStoreQueueIsWaitedForNotDropped) {
  constexpr uint32_t kBlocks = 60, kSlots = 8;
  Fixture f("full-queue", kBlocks, kSlots, 2 * kSlotBytes);
  ASSERT_TRUE(f.store);
  EXPECT_FALSE(f.store->wait_for_room(3 * kSlotBytes, std::chrono::milliseconds(1)))
      << "a payload larger than the whole queue never fits";
  auto x = f.exporter(kSlots);
  for (size_t next = 0; next < kBlocks;) {
    const std::vector<uint32_t> slots = x->acquire(kBlocks - next);
    std::vector<BlockExporter::Block> blocks;
    for (uint32_t s : slots) blocks.push_back(f.fill(*x, s, next++));
    x->hand_over(std::move(blocks));
  }
  x->drain();
  const BlockExporter::Counters c = x->counters();
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(c.queued, kBlocks);
  EXPECT_EQ(f.stored_and_intact(), kBlocks);
}

TEST(BlockExport, AcquireWaitsWhileTheWorkerHoldsEverySlot) {
  Fixture f("wait", 2, 1);
  ASSERT_TRUE(f.store);
  auto x = f.exporter(1);
  const std::vector<uint32_t> first = x->acquire(5);
  ASSERT_EQ(first.size(), 1u);
  auto second = std::async(std::launch::async, [&] { return x->acquire(1); });
  EXPECT_EQ(second.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
      << "the only slot is taken: acquire() must wait";
  std::vector<BlockExporter::Block> blocks;
  blocks.push_back(f.fill(*x, first[0], 0));
  x->hand_over(std::move(blocks));
  ASSERT_EQ(second.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the worker frees the slot once the block is in the store's queue";
  const std::vector<uint32_t> again = second.get();
  ASSERT_EQ(again, first);
  // A slot given back unused (its GPU copy failed) is free again at once.
  x->release(again);
  EXPECT_EQ(x->acquire(1), first);
}

TEST(BlockExport, DestroyingTheExporterHandsOverWhatItHolds) {
  constexpr uint32_t kBlocks = 6;
  Fixture f("destroy", kBlocks, kBlocks);
  ASSERT_TRUE(f.store);
  {
    auto x = f.exporter(kBlocks);
    const std::vector<uint32_t> slots = x->acquire(kBlocks);
    ASSERT_EQ(slots.size(), kBlocks);
    std::vector<BlockExporter::Block> blocks;
    for (size_t i = 0; i < kBlocks; ++i) blocks.push_back(f.fill(*x, slots[i], i));
    x->hand_over(std::move(blocks));
  }  // no drain(): the destructor must finish the work
  EXPECT_EQ(f.stored_and_intact(), kBlocks);
}

}  // namespace
