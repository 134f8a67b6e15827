// The KV store under faults: crashes at random points, a full disk, and readers, writers, eviction
// and compaction at once. This binary runs under ASan + UBSan.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "kvstore/store.h"
#include "tests/kvstore/store_test_util.h"

using namespace trove::kv;
using trove::kv::testing::insert_prompt;
using trove::kv::testing::kv_like_payload;
using trove::kv::testing::TempDir;
using trove::kv::testing::tokens_for;

namespace {

constexpr size_t kPayload = 48 * 1024;

// The child: inserts prompts forever; after each flush() that succeeds, appends the keys it made
// durable to `acked` (and fsyncs that file), so the parent knows what must survive a SIGKILL.
// After each acknowledged round it writes one byte to `progress` so the parent can pick a kill point
// that is random but never before the child got going (a loaded CI machine is slow to start it).
[[noreturn]] void crash_child(const std::string& dir, const std::string& acked, uint64_t seed, int progress) {
  auto s = Store::open(dir, Options{});
  if (!s.ok()) {
    std::fprintf(stderr, "child: open failed: %s\n", s.status().ToString().c_str());
    _exit(3);
  }
  FILE* f = std::fopen(acked.c_str(), "a");
  for (uint64_t round = 0;; ++round) {
    const auto tokens = tokens_for(seed * 1000 + round, 64 * 3);
    insert_prompt(**s, "ns", "fp", tokens, kPayload);
    if (!(*s)->flush().ok()) _exit(4);
    for (const auto& k : chain_keys("ns", "fp", tokens, 64)) std::fprintf(f, "%s\n", k.hex().c_str());
    std::fflush(f);
    fsync(fileno(f));
    if (::write(progress, "x", 1) != 1) _exit(5);
  }
}

}  // namespace

TEST(StoreCrash, EveryReopenSucceedsAndEveryAcknowledgedBlockSurvivesSigkill) {
  TempDir dir;
  const std::string store = dir.sub("store");
  const std::string acked = dir.sub("acked.txt");
  std::mt19937 rng(12345);
  int kills = 0;
  for (int i = 0; i < 24; ++i) {
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(pipefd[0]);
      crash_child(store, acked, static_cast<uint64_t>(i), pipefd[1]);
    }
    ::close(pipefd[1]);
    // Let the child acknowledge 0 to 3 rounds, then kill it at a random moment within the next
    // round (mid-write, mid-fsync, mid-index-write or between).
    const unsigned rounds = rng() % 4;
    char c;
    for (unsigned r = 0; r < rounds; ++r) ASSERT_EQ(::read(pipefd[0], &c, 1), 1) << "the child died";
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40000));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    ::close(pipefd[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the child exited by itself with " << WEXITSTATUS(status);
    ++kills;

    auto s = Store::open(store, Options{});
    ASSERT_TRUE(s.ok()) << "reopen after kill " << i << ": " << s.status().ToString();
    int bad = 0;
    ASSERT_TRUE((*s)->verify([&](const BlockEntry& e, const trove::Status& st) {
                  ADD_FAILURE() << "block " << e.ref.key.hex() << " in the index does not verify: " << st.ToString();
                  ++bad;
                }).ok());
    // A kill can land inside the child's append of its acknowledgement lines (a write that crosses a
    // page boundary stops between pages when SIGKILL is pending): an unterminated last line was never
    // acknowledged. Cut it off, so that the next child's lines start on a line of their own.
    {
      std::ifstream raw(acked, std::ios::binary);
      const std::string text((std::istreambuf_iterator<char>(raw)), std::istreambuf_iterator<char>());
      if (!text.empty() && text.back() != '\n') std::filesystem::resize_file(acked, text.rfind('\n') + 1);
    }
    std::ifstream in(acked);
    std::string hex;
    size_t n = 0;
    while (in >> hex) {
      auto key = BlockKey::from_hex(hex);
      ASSERT_TRUE(key.has_value());
      ASSERT_TRUE((*s)->entry(*key).ok()) << "acknowledged block " << hex << " is missing after kill " << i;
      ++n;
    }
    EXPECT_EQ(bad, 0);
    if (i == 23) {
      EXPECT_GT(n, 0u) << "no block was ever acknowledged: the test did not exercise anything";
      // And the acknowledged blocks read back with the right bytes.
      auto keys_seen = (*s)->stats().blocks;
      EXPECT_GE(keys_seen, n);
    }
  }
  EXPECT_EQ(kills, 24);
}

namespace {

// A small filesystem for the disk-full test: a tmpfs when this process may mount (root, as in CI);
// otherwise the per-file size limit RLIMIT_FSIZE stands in for a full disk (writes past it fail with
// EFBIG, as writes to a full disk fail with ENOSPC).
class SmallDisk {
 public:
  SmallDisk(const std::string& path, size_t bytes) : path_(path) {
    std::filesystem::create_directories(path);
    const std::string opts = "size=" + std::to_string(bytes) + ",mode=0700";
    mounted_ = mount("tmpfs", path.c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!mounted_) {
      getrlimit(RLIMIT_FSIZE, &saved_);
      signal(SIGXFSZ, SIG_IGN);
      rlimit r = saved_;
      r.rlim_cur = bytes;
      setrlimit(RLIMIT_FSIZE, &r);
    }
  }
  ~SmallDisk() {
    if (mounted_) umount2(path_.c_str(), MNT_DETACH);
    else setrlimit(RLIMIT_FSIZE, &saved_);
  }
  bool mounted() const { return mounted_; }

 private:
  std::string path_;
  bool mounted_ = false;
  rlimit saved_{};
};

}  // namespace

TEST(StoreDiskFull, InsertsFailSoftlyReadsKeepWorkingReopenIsClean) {
  TempDir dir;
  const std::string mnt = dir.sub("small");
  const auto first = tokens_for(50, 64 * 2);
  Options o;
  o.segment_bytes = 64ull << 20;  // one segment: fills the small disk
  {
    SmallDisk disk(mnt, 3 << 20);
    std::printf("small disk: %s\n", disk.mounted() ? "tmpfs of 3 MiB" : "RLIMIT_FSIZE of 3 MiB");
    {
      auto s = Store::open(mnt + "/store", o);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      insert_prompt(**s, "ns", "fp", first, kPayload);
      ASSERT_TRUE((*s)->flush().ok());
      // Now fill the disk: 100 blocks of 48 KiB is 4.8 MB > 3 MiB.
      insert_prompt(**s, "ns", "fp", tokens_for(51, 64 * 100), kPayload);
      auto st = (*s)->flush();
      EXPECT_FALSE(st.ok()) << "a full disk should make flush() report failed blocks";
      EXPECT_GT((*s)->stats().failed_inserts, 0u);
      // Blocks stored before the disk filled still read back.
      auto m = (*s)->lookup("ns", "fp", first);
      ASSERT_EQ(m.matched_tokens, 128u);
      std::vector<std::vector<uint8_t>> bufs(2, std::vector<uint8_t>(kPayload));
      std::vector<std::span<uint8_t>> spans(bufs.begin(), bufs.end());
      for (const auto& r : (*s)->read(m.blocks, spans)) EXPECT_TRUE(r.ok()) << r.ToString();
      EXPECT_EQ(bufs[0], kv_like_payload(m.blocks[0].key.lo, kPayload));
    }
    // Reopen on the still-full disk: clean, and the early blocks are there.
    auto s = Store::open(mnt + "/store", o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->lookup("ns", "fp", first).matched_tokens, 128u);
    int bad = 0;
    ASSERT_TRUE((*s)->verify([&](const BlockEntry&, const trove::Status&) { ++bad; }).ok());
    EXPECT_EQ(bad, 0);
  }
}

TEST(StoreConcurrency, ReadersWritersEvictionAndCompactionAtOnce) {
  TempDir dir;
  Options o;
  o.segment_bytes = 512 * 1024;
  auto opened = Store::open(dir.str(), o);
  ASSERT_TRUE(opened.ok());
  Store& s = **opened;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> good_reads{0}, wrong_bytes{0};
  std::vector<std::thread> threads;
  threads.emplace_back([&] {  // writer
    for (uint64_t r = 0; !stop; ++r) {
      insert_prompt(s, "ns", "fp", tokens_for(r % 40, 64 * 4), 16 * 1024);
      if (r % 8 == 0) (void)s.flush();
    }
  });
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {  // readers
      for (uint64_t r = t; !stop; r += 3) {
        auto m = s.lookup("ns", "fp", tokens_for(r % 40, 64 * 4));
        std::vector<std::vector<uint8_t>> bufs(m.blocks.size(), std::vector<uint8_t>(16 * 1024));
        std::vector<std::span<uint8_t>> spans(bufs.begin(), bufs.end());
        auto st = s.read(m.blocks, spans);
        for (size_t i = 0; i < st.size(); ++i) {
          if (!st[i].ok()) continue;  // evicted in between: a miss is fine
          ++good_reads;
          if (bufs[i] != kv_like_payload(m.blocks[i].key.lo, 16 * 1024)) ++wrong_bytes;
        }
      }
    });
  }
  threads.emplace_back([&] {  // eviction + compaction
    while (!stop) {
      (void)s.evict_to(1 << 20);
      (void)s.compact();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_GT(good_reads.load(), 0u);
  EXPECT_EQ(wrong_bytes.load(), 0u) << "a read returned another block's bytes";
  EXPECT_EQ(s.stats().corrupt_blocks, 0u);
  int bad = 0;
  ASSERT_TRUE(s.verify([&](const BlockEntry&, const trove::Status&) { ++bad; }).ok());
  EXPECT_EQ(bad, 0);
}
