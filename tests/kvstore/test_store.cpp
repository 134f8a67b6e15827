// The KV store: keys, records, and the Store API as the engine and the CLI use it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/log.h"
#include "kvstore/detail/record.h"
#include "kvstore/store.h"
#include "tests/kvstore/store_test_util.h"

using namespace trove::kv;
using trove::StatusCode;
using trove::kv::testing::insert_prompt;
using trove::kv::testing::kv_like_payload;
using trove::kv::testing::TempDir;
using trove::kv::testing::tokens_for;

namespace {

std::unique_ptr<Store> open_store(const std::string& dir, Options o = {}) {
  auto s = Store::open(dir, o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

// Reads every block of a match and returns the statuses; payloads are checked against the generator.
std::vector<trove::Status> read_and_check(Store& s, const PrefixMatch& m, size_t payload_bytes) {
  std::vector<std::vector<uint8_t>> bufs(m.blocks.size(), std::vector<uint8_t>(payload_bytes));
  std::vector<std::span<uint8_t>> spans(bufs.begin(), bufs.end());
  auto st = s.read(m.blocks, spans);
  for (size_t i = 0; i < st.size(); ++i) {
    if (st[i].ok()) EXPECT_EQ(bufs[i], kv_like_payload(m.blocks[i].key.lo, payload_bytes)) << "block " << i;
  }
  return st;
}

}  // namespace

// Test vectors of the key format: docs/kv-store-format.md lists the same values. A change here is a
// change of the on-disk format.
TEST(BlockKeyFormat, TestVectors) {
  const int32_t t0[] = {9707, 11, 1879, 0};
  const BlockKey k0 = block_key(BlockKey{}, "fp", "default", t0);
  EXPECT_EQ(k0.hex(), "db29edc10aee087db6fe195a654395d0");
  const int32_t t1[] = {1, 2, 3};
  EXPECT_EQ(block_key(k0, "fp", "default", t1).hex(), "d4f396e630e62cbb5f6e0566258211b1");
}

TEST(BlockKeyFormat, EveryFieldChangesTheKey) {
  const auto tokens = tokens_for(1, 64);
  const BlockKey base = block_key(BlockKey{}, "model-a", "ns", tokens);
  auto other_tokens = tokens;
  other_tokens[63] += 1;
  EXPECT_NE(block_key(BlockKey{}, "model-b", "ns", tokens), base);
  EXPECT_NE(block_key(BlockKey{}, "model-a", "ns2", tokens), base);
  EXPECT_NE(block_key(BlockKey{}, "model-a", "ns", other_tokens), base);
  EXPECT_NE(block_key(BlockKey{1, 0}, "model-a", "ns", tokens), base);
  // Field boundaries are unambiguous: moving a byte between fingerprint and namespace changes the key.
  EXPECT_NE(block_key(BlockKey{}, "ab", "c", tokens), block_key(BlockKey{}, "a", "bc", tokens));
}

TEST(BlockKeyFormat, ChainedKeysDivergeAfterAChangeAndOnlyAfter) {
  auto a = tokens_for(2, 64 * 5 + 10);
  auto b = a;
  b[64 * 2 + 5] ^= 1;  // inside block 2
  const auto ka = chain_keys("ns", "fp", a, 64);
  const auto kb = chain_keys("ns", "fp", b, 64);
  ASSERT_EQ(ka.size(), 5u);  // partial last block is not a block
  EXPECT_EQ(ka[0], kb[0]);
  EXPECT_EQ(ka[1], kb[1]);
  for (size_t i = 2; i < 5; ++i) EXPECT_NE(ka[i], kb[i]);
}

TEST(BlockKeyFormat, HexRoundTrip) {
  const BlockKey k{0x0123456789abcdefull, 0xfedcba9876543210ull};
  EXPECT_EQ(k.hex(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(BlockKey::from_hex(k.hex()), k);
  EXPECT_FALSE(BlockKey::from_hex("xyz").has_value());
}

TEST(Record, RoundTripWithAndWithoutShuffle) {
  const auto payload = kv_like_payload(3, 96 * 1024);
  for (bool shuffle : {false, true}) {
    const BlockKey key{1, 2};
    auto rec = detail::encode_record(key, PayloadDtype::kF16, 48, 64, payload, shuffle);
    EXPECT_EQ(rec.bytes.size() % detail::kRecordAlign, 0u);
    EXPECT_EQ(std::memcmp(rec.bytes.data(), "TRVKVBLK", 8), 0);
    std::vector<uint8_t> out(payload.size());
    ASSERT_TRUE(detail::decode_record(rec.bytes, key, rec.header.checksum, out).ok());
    EXPECT_EQ(out, payload);
  }
}

TEST(Record, AnyFlippedByteIsCorruption) {
  const auto payload = kv_like_payload(4, 8192);
  const BlockKey key{5, 6};
  auto rec = detail::encode_record(key, PayloadDtype::kF16, 1, 64, payload, true);
  const size_t used = detail::kRecordHeaderBytes + rec.header.stored_size;
  std::vector<uint8_t> out(payload.size());
  for (size_t at = 0; at < used; at += 97) {
    auto bad = rec.bytes;
    bad[at] ^= 0x40;
    auto st = detail::decode_record(bad, key, rec.header.checksum, out);
    EXPECT_FALSE(st.ok()) << "flip at " << at;
  }
  EXPECT_FALSE(detail::decode_record(rec.bytes, BlockKey{5, 7}, rec.header.checksum, out).ok());  // wrong key
}

// Backends: buffered preads, io_uring with buffered fds, io_uring + O_DIRECT with registered buffers,
// and the default (page-cache-resident blocks buffered, the others O_DIRECT through io_uring).
enum class Backend { kPread, kIoUring, kIoUringDirect, kDefault };

class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  Options opts() const {
    Options o;
    if (GetParam() == Backend::kDefault) return o;
    o.io = GetParam() == Backend::kPread ? Options::Io::kPread : Options::Io::kIoUring;
    o.direct_io = GetParam() == Backend::kIoUringDirect;
    o.cold_reads_direct = false;
    return o;
  }
  TempDir dir_;
};

TEST_P(StoreTest, InsertFlushLookupReadAndReopen) {
  const auto tokens = tokens_for(10, 64 * 8 + 17);
  {
    auto s = open_store(dir_.str(), opts());
    EXPECT_EQ(s->using_io_uring(), GetParam() != Backend::kPread);
    EXPECT_EQ(s->lookup("ns", "fp", tokens).matched_tokens, 0u);
    insert_prompt(*s, "ns", "fp", tokens, 256 * 1024);
    ASSERT_TRUE(s->flush().ok());
    auto m = s->lookup("ns", "fp", tokens);
    EXPECT_EQ(m.matched_tokens, 64u * 8);
    for (const auto& st : read_and_check(*s, m, 256 * 1024)) EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(s->stats().blocks, 8u);
    EXPECT_EQ(s->stats().hits, 8u);
  }
  auto s = open_store(dir_.str(), opts());  // after a restart
  auto m = s->lookup("ns", "fp", tokens);
  EXPECT_EQ(m.matched_tokens, 64u * 8);
  for (const auto& st : read_and_check(*s, m, 256 * 1024)) EXPECT_TRUE(st.ok()) << st.ToString();
  // Another namespace or model sees nothing.
  EXPECT_EQ(s->lookup("other", "fp", tokens).matched_tokens, 0u);
  EXPECT_EQ(s->lookup("ns", "fp2", tokens).matched_tokens, 0u);
}

TEST_P(StoreTest, LookupStopsAtTheFirstDifferingBlock) {
  auto s = open_store(dir_.str(), opts());
  auto a = tokens_for(11, 64 * 6);
  insert_prompt(*s, "ns", "fp", a, 4096);
  ASSERT_TRUE(s->flush().ok());
  auto b = a;
  b[64 * 3 + 1] += 1;
  EXPECT_EQ(s->lookup("ns", "fp", b).matched_tokens, 64u * 3);
  b.resize(64 * 2 + 30);
  EXPECT_EQ(s->lookup("ns", "fp", b).matched_tokens, 64u * 2);
}

TEST_P(StoreTest, DuplicatesAreDedupedAndAFullQueueDropsAndCounts) {
  Options o = opts();
  o.insert_queue_bytes = 1 << 20;  // 1 MiB
  auto s = open_store(dir_.str(), o);
  const auto keys = chain_keys("ns", "fp", tokens_for(12, 64), 64);
  EXPECT_EQ(s->insert(keys[0], {}, "ns", "fp", 64, PayloadDtype::kF16, 1, kv_like_payload(1, 4096)), InsertResult::kQueued);
  EXPECT_EQ(s->insert(keys[0], {}, "ns", "fp", 64, PayloadDtype::kF16, 1, kv_like_payload(1, 4096)), InsertResult::kDuplicate);
  ASSERT_TRUE(s->flush().ok());
  EXPECT_EQ(s->insert(keys[0], {}, "ns", "fp", 64, PayloadDtype::kF16, 1, kv_like_payload(1, 4096)), InsertResult::kDuplicate);
  // A payload larger than the whole queue bound can never be queued: dropped, counted, never blocks.
  EXPECT_EQ(s->insert(BlockKey{9, 9}, {}, "ns", "fp", 64, PayloadDtype::kF16, 1, std::vector<uint8_t>(2 << 20)),
            InsertResult::kDropped);
  EXPECT_EQ(s->stats().dropped_inserts, 1u);
  EXPECT_EQ(s->stats().duplicate_inserts, 2u);
}

TEST_P(StoreTest, ACorruptBlockIsAMissWithALogLineAndLeavesTheIndex) {
  const auto tokens = tokens_for(13, 64 * 4);
  auto s = open_store(dir_.str(), opts());
  insert_prompt(*s, "ns", "fp", tokens, 16 * 1024);
  ASSERT_TRUE(s->flush().ok());
  auto m = s->lookup("ns", "fp", tokens);
  ASSERT_EQ(m.blocks.size(), 4u);
  // Flip a payload byte of block 2 on disk.
  const BlockRef victim = m.blocks[2];
  const auto seg = dir_.sub("segments") + "/" + fmt::format("seg-{:08d}.trv", victim.segment);
  {
    std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(victim.offset + 100));
    char c;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(static_cast<std::streamoff>(victim.offset + 100));
    f.write(&c, 1);
  }
  trove::log::ScopedLogCapture logs;
  auto st = read_and_check(*s, m, 16 * 1024);
  EXPECT_TRUE(st[0].ok());
  EXPECT_TRUE(st[1].ok());
  EXPECT_EQ(st[2].code(), StatusCode::kCorruption);
  EXPECT_TRUE(st[3].ok());
  EXPECT_TRUE(logs.contains(victim.key.hex())) << "no log line names the corrupt block";
  EXPECT_TRUE(logs.contains("failed verification"));
  EXPECT_EQ(s->stats().corrupt_blocks, 1u);
  EXPECT_FALSE(s->entry(victim.key).ok());               // gone from the index
  EXPECT_EQ(s->lookup("ns", "fp", tokens).matched_tokens, 64u * 2);  // the chain now stops before it
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(Backend::kPread, Backend::kIoUring, Backend::kIoUringDirect, Backend::kDefault),
                         [](const auto& info) {
                           switch (info.param) {
                             case Backend::kPread: return "pread";
                             case Backend::kIoUring: return "io_uring";
                             case Backend::kDefault: return "default_cached_buffered_cold_direct";
                             default: return "io_uring_direct_registered";
                           }
                         });

// The default read path asks the page cache which blocks it holds: those are read buffered, the rest
// O_DIRECT. Dropping a segment from the page cache (posix_fadvise) must send its blocks to O_DIRECT
// reads, reading the file buffered must bring them back — with the same bytes either way.
TEST(Store, ReadsCachedBlocksBufferedAndColdBlocksDirect) {
  TempDir dir;
  const auto tokens = tokens_for(31, 64 * 6);
  auto s = open_store(dir.str());
  insert_prompt(*s, "ns", "fp", tokens, 256 * 1024);
  ASSERT_TRUE(s->flush().ok());  // fsync'ed: the pages are clean and can be dropped
  auto m = s->lookup("ns", "fp", tokens);
  ASSERT_EQ(m.blocks.size(), 6u);
  std::vector<std::string> segments;
  for (const auto& e : std::filesystem::directory_iterator(dir.sub("segments"))) segments.push_back(e.path());
  ASSERT_FALSE(segments.empty());
  // Whether this filesystem takes O_DIRECT at all (tmpfs does not: then every read is buffered).
  int probe = ::open(segments[0].c_str(), O_RDONLY | O_DIRECT);
  const bool fs_direct = probe >= 0;
  if (probe >= 0) ::close(probe);

  // Just written: in the page cache.
  for (const auto& st : read_and_check(*s, m, 256 * 1024)) EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(s->stats().page_cache_reads, 6u);
  EXPECT_EQ(s->stats().direct_reads, 0u);

  // Dropped from the page cache: O_DIRECT.
  for (const auto& p : segments) {
    int fd = ::open(p.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ::close(fd);
  }
  for (const auto& st : read_and_check(*s, m, 256 * 1024)) EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(s->stats().direct_reads, fs_direct ? 6u : 0u);
  EXPECT_EQ(s->stats().page_cache_reads, fs_direct ? 6u : 12u);

  // Read buffered again (as `cat` would): back in the page cache, buffered reads.
  for (const auto& p : segments) {
    std::ifstream f(p, std::ios::binary);
    std::vector<char> all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ASSERT_FALSE(all.empty());
  }
  for (const auto& st : read_and_check(*s, m, 256 * 1024)) EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(s->stats().direct_reads, fs_direct ? 6u : 0u);
  EXPECT_EQ(s->stats().page_cache_reads, fs_direct ? 12u : 18u);
  EXPECT_EQ(s->stats().hits, 18u);
}

TEST(Store, CompressiblePayloadsAreStoredCompressed) {
  TempDir dir;
  auto s = open_store(dir.str());
  // Half the 16-bit values are zero (as in padded or sparse KV): LZ4 must shrink it.
  auto payload = kv_like_payload(30, 256 * 1024);
  for (size_t i = 0; i < payload.size(); i += 4) payload[i] = payload[i + 1] = 0;
  const BlockKey key = chain_keys("ns", "fp", tokens_for(30, 64), 64)[0];
  ASSERT_EQ(s->insert(key, {}, "ns", "fp", 64, PayloadDtype::kF16, 1, payload), InsertResult::kQueued);
  ASSERT_TRUE(s->flush().ok());
  EXPECT_GT(s->stats().compression_ratio(), 1.1);  // measured 1.14 (LZ4 has no entropy coder)
  std::vector<uint8_t> out(payload.size());
  std::vector<std::span<uint8_t>> spans{out};
  auto e = s->entry(key);
  ASSERT_TRUE(e.ok());
  std::vector<BlockRef> refs{e->ref};
  ASSERT_TRUE(s->read(refs, spans)[0].ok());
  EXPECT_EQ(out, payload);
}

TEST(Store, ASecondWriterIsRefusedWithTheHolderNamed) {
  TempDir dir;
  auto first = open_store(dir.str());
  auto second = Store::open(dir.str(), Options{});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(getpid())), std::string::npos)
      << second.status().message();
  EXPECT_NE(second.status().message().find("read-only"), std::string::npos);
}

TEST(Store, ReadOnlyOpenersWorkWhileTheWriterRuns) {
  TempDir dir;
  const auto tokens = tokens_for(14, 64 * 3);
  auto writer = open_store(dir.str());
  insert_prompt(*writer, "ns", "fp", tokens, 8192);
  ASSERT_TRUE(writer->flush().ok());
  Options ro;
  ro.read_only = true;
  auto reader = open_store(dir.str(), ro);
  auto m = reader->lookup("ns", "fp", tokens);
  EXPECT_EQ(m.matched_tokens, 64u * 3);
  for (const auto& st : read_and_check(*reader, m, 8192)) EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(reader->insert(BlockKey{1, 1}, {}, "ns", "fp", 64, PayloadDtype::kF16, 1, {}), InsertResult::kReadOnly);
  EXPECT_EQ(reader->evict_to(0).code(), StatusCode::kFailedPrecondition);
}

TEST(Store, ReadOnlyOpenOfAMissingStoreSaysSo) {
  TempDir dir;
  Options ro;
  ro.read_only = true;
  auto s = Store::open(dir.sub("nothing-here"), ro);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("no KV store"), std::string::npos);
}

TEST(Store, EvictionTakesLeavesFirstAndReachesTheBudget) {
  TempDir dir;
  auto s = open_store(dir.str());
  const auto a = tokens_for(15, 64 * 6);
  insert_prompt(*s, "ns", "fp", a, 8192);
  ASSERT_TRUE(s->flush().ok());
  const uint64_t per_block = s->stats().stored_bytes / 6;
  ASSERT_TRUE(s->evict_to(per_block * 4).ok());
  EXPECT_LE(s->stats().stored_bytes, per_block * 4);
  EXPECT_EQ(s->stats().evictions, 2u);
  // The last blocks went first: the remaining chain is a prefix, with no orphans.
  EXPECT_EQ(s->lookup("ns", "fp", a).matched_tokens, 64u * 4);
  uint64_t orphans = 0;
  ASSERT_TRUE(s->for_each_entry([&](const BlockEntry& e) {
                 if (!e.ref.parent.is_zero() && !s->entry(e.ref.parent).ok()) ++orphans;
               }).ok());
  EXPECT_EQ(orphans, 0u);
}

TEST(Store, EvictionPrefersColdBranches) {
  TempDir dir;
  auto s = open_store(dir.str());
  // Two prompts share 2 blocks and then branch into 2 blocks each; branch A is read (hit) often.
  auto a = tokens_for(16, 64 * 4);
  auto b = a;
  for (size_t i = 128; i < b.size(); ++i) b[i] = (b[i] + 7) % 1000;
  insert_prompt(*s, "ns", "fp", a, 4096);
  insert_prompt(*s, "ns", "fp", b, 4096);
  ASSERT_TRUE(s->flush().ok());
  for (int i = 0; i < 5; ++i) read_and_check(*s, s->lookup("ns", "fp", a), 4096);
  const uint64_t per_block = s->stats().stored_bytes / 6;
  ASSERT_TRUE(s->evict_to(per_block * 4).ok());
  EXPECT_EQ(s->lookup("ns", "fp", a).matched_tokens, 64u * 4);
  EXPECT_EQ(s->lookup("ns", "fp", b).matched_tokens, 64u * 2);
}

TEST(Store, EvictByNamespaceRemovesOnlyThatNamespace) {
  TempDir dir;
  auto s = open_store(dir.str());
  const auto t = tokens_for(17, 64 * 3);
  insert_prompt(*s, "alice", "fp", t, 4096);
  insert_prompt(*s, "bob", "fp", t, 4096);
  ASSERT_TRUE(s->flush().ok());
  ASSERT_TRUE(s->evict_if([](const BlockEntry& e) { return e.name_space == "alice"; }).ok());
  EXPECT_EQ(s->lookup("alice", "fp", t).matched_tokens, 0u);
  EXPECT_EQ(s->lookup("bob", "fp", t).matched_tokens, 64u * 3);
}

TEST(Store, CompactionReclaimsDeadSegmentsAndKeepsLiveBlocksReadable) {
  TempDir dir;
  Options o;
  o.segment_bytes = 64 * 1024;  // small segments so there are several
  auto s = open_store(dir.str(), o);
  const auto keep = tokens_for(18, 64 * 4);
  const auto drop = tokens_for(19, 64 * 8);
  // The blocks to drop go first, so they sit in older segments rather than in the current one
  // (which compaction never rewrites while it is being appended to).
  insert_prompt(*s, "drop", "fp", drop, 16 * 1024);
  ASSERT_TRUE(s->flush().ok());
  insert_prompt(*s, "keep", "fp", keep, 16 * 1024);
  ASSERT_TRUE(s->flush().ok());
  const uint64_t before = s->stats().segment_bytes;
  ASSERT_TRUE(s->evict_if([](const BlockEntry& e) { return e.name_space == "drop"; }).ok());
  EXPECT_GT(s->stats().compactions, 0u);
  EXPECT_LT(s->stats().segment_bytes, before);
  auto m = s->lookup("keep", "fp", keep);
  ASSERT_EQ(m.matched_tokens, 64u * 4);
  for (const auto& st : read_and_check(*s, m, 16 * 1024)) EXPECT_TRUE(st.ok()) << st.ToString();
  s.reset();
  auto again = open_store(dir.str(), o);  // and after a restart
  for (const auto& st : read_and_check(*again, again->lookup("keep", "fp", keep), 16 * 1024)) EXPECT_TRUE(st.ok());
}

// The writer takes whatever is queued as one batch; a batch that fills a segment rolls to the next
// in the middle. Both segments must be accounted: stats().segment_bytes equals the files' sizes, and
// once every block is evicted compaction removes every full segment (it once saw the rolled-from
// segment as empty and its blocks as the new segment's, so "reclaimed" it without freeing a byte).
TEST(Store, SegmentAccountingHoldsWhenABatchRollsToANewSegment) {
  TempDir dir;
  Options o;
  o.segment_bytes = 16 * 1024;
  auto s = open_store(dir.str(), o);
  insert_prompt(*s, "ns", "fp", tokens_for(32, 64 * 64), 4096);  // 64 inserts queue faster than one fsync
  ASSERT_TRUE(s->flush().ok());
  auto file_bytes = [&] {
    uint64_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.sub("segments"))) n += e.file_size();
    return n;
  };
  EXPECT_EQ(s->stats().blocks, 64u);
  EXPECT_EQ(s->stats().segment_bytes, file_bytes());
  EXPECT_EQ(s->stats().stored_bytes, file_bytes());  // every byte written belongs to a live block
  ASSERT_TRUE(s->evict_if([](const BlockEntry&) { return true; }).ok());
  EXPECT_EQ(s->stats().segment_bytes, file_bytes());
  EXPECT_LE(s->stats().segment_bytes, o.segment_bytes);  // only the current segment is left
}

TEST(Store, VerifyReportsEveryBadBlock) {
  TempDir dir;
  auto s = open_store(dir.str());
  insert_prompt(*s, "ns", "fp", tokens_for(20, 64 * 3), 4096);
  ASSERT_TRUE(s->flush().ok());
  int bad = 0;
  ASSERT_TRUE(s->verify([&](const BlockEntry&, const trove::Status&) { ++bad; }).ok());
  EXPECT_EQ(bad, 0);
}

TEST(Store, ByteBudgetIsEnforcedByTheWriter) {
  TempDir dir;
  Options o;
  o.byte_budget = 6 * 8192;
  auto s = open_store(dir.str(), o);
  insert_prompt(*s, "ns", "fp", tokens_for(21, 64 * 20), 8000);
  ASSERT_TRUE(s->flush().ok());
  // The writer evicts after the batch; flush() returns once the batch (and its eviction) is done.
  EXPECT_LE(s->stats().stored_bytes, o.byte_budget);
  EXPECT_GT(s->stats().evictions, 0u);
}

TEST(Store, StoreFilesArePrivate) {
  TempDir dir;
  auto s = open_store(dir.str());
  insert_prompt(*s, "ns", "fp", tokens_for(22, 64), 4096);
  ASSERT_TRUE(s->flush().ok());
  for (const auto& f : std::filesystem::directory_iterator(dir.sub("segments"))) {
    const auto perms = f.status().permissions();
    EXPECT_EQ(perms & (std::filesystem::perms::group_all | std::filesystem::perms::others_all),
              std::filesystem::perms::none)
        << f.path();
  }
}
