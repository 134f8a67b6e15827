// trove's KV store: a content-addressed prefix tree of KV blocks on SSD.
//
// A prompt's tokens are cut into fixed blocks (Options::block_tokens, default 64). Each full block has a
// 128-bit key computed from its parent block's key, the model fingerprint, the cache namespace and the
// block's token ids (block_key(); exact encoding in docs/kv-store-format.md), so equal prefixes give
// equal keys whoever sent them, and a change anywhere changes every key after it. The value is the
// block's KV payload (opaque bytes to this module: the engine's K and V rows for every layer) stored
// as a checksummed, LZ4-compressed record in an append-only segment file; a RocksDB index maps
// key → location and bookkeeping.
//
// Thread-safety: a Store is safe to use from many threads at once. lookup() and read() run on the
// caller's thread (read() fans out internally); insert() only enqueues and never blocks on I/O.
//
// Durability: insert() is write-behind. A block is durable once a later flush() has returned OK: the
// writer appends records to a segment, fsyncs the segment, and only then writes the index entries
// (with a synced RocksDB write). A crash at any point leaves an index whose every entry points at
// fsynced, checksummed bytes; records written but not indexed are garbage that compaction reclaims.
//
// I/O errors while running (a full disk, EIO): a block that cannot be written is counted
// (failed_inserts) and the store goes on; the first failure of a run of them is logged, and so is the
// first success after it. A failed index write stops index writes until the writer has reopened the
// index (it tries before each later batch, at most once a second), so writing resumes by itself once
// the disk has room again. A read error is a miss (the block stays indexed: the error may pass).
//
// Opening: a MANIFEST and new segment files are fsynced with their directory before anything points
// at them, so a power cut cannot leave an index entry naming a file that is gone. An index that
// RocksDB cannot open or read (corrupt) is moved aside to index.corrupt-UNIXTIME (logged) and an
// empty one started: the store is a cache, so losing the index costs misses, never a refused start.
//
// Corruption: every read verifies the record's checksum. A block that fails is a miss: it is logged
// (trove::log::warn, component "kvstore"), removed from the index (when the store is writable) and
// never returned.
//
// Processes: one process opens a store for writing (a lock file names the holder); any number may open
// it read-only at the same time and see the index as of their open().
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace trove::kv {

struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  bool is_zero() const { return hi == 0 && lo == 0; }
  std::string hex() const;  // 32 lowercase hex digits, hi first
  static std::optional<BlockKey> from_hex(std::string_view hex);
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
};

struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// The key of one block. The root block's parent is the zero key.
BlockKey block_key(const BlockKey& parent, std::string_view fingerprint, std::string_view name_space,
                   std::span<const int32_t> tokens);

// Keys of every full block of `tokens` (tokens.size() / block_tokens of them), each chained to the one
// before.
std::vector<BlockKey> chain_keys(std::string_view name_space, std::string_view fingerprint,
                                 std::span<const int32_t> tokens, uint32_t block_tokens);

// What the payload bytes are; recorded in the header so tools can describe a block, and so a reader
// never mistakes one layout for another.
enum class PayloadDtype : uint8_t { kOpaque = 0, kF16 = 1, kBF16 = 2, kF32 = 3, kQ8_0 = 4 };

// Where a stored block lives, as the index says.
struct BlockRef {
  BlockKey key;
  BlockKey parent;
  uint32_t tokens = 0;
  uint64_t raw_size = 0;     // payload bytes after decompression
  uint32_t segment = 0;
  uint64_t offset = 0;
  uint64_t length = 0;       // bytes of the record on disk (header + compressed payload + padding)
  uint64_t checksum = 0;
};

struct PrefixMatch {
  std::vector<BlockRef> blocks;  // the longest chain of stored blocks from the start of the prompt
  size_t matched_tokens = 0;     // blocks.size() * block_tokens
};

// One index entry, as `trove kv` lists it.
struct BlockEntry {
  BlockRef ref;
  std::string name_space;
  std::string fingerprint;
  PayloadDtype dtype = PayloadDtype::kOpaque;
  uint16_t layers = 0;
  uint32_t children = 0;      // stored blocks whose parent this is
  int64_t created = 0;        // unix seconds
  int64_t last_access = 0;    // unix seconds
  uint64_t hits = 0;
};

struct Stats {
  uint64_t blocks = 0;
  uint64_t stored_bytes = 0;   // record bytes on disk for live blocks
  uint64_t logical_bytes = 0;  // payload bytes before compression
  uint64_t segment_bytes = 0;  // all segment files, live and dead
  uint64_t hits = 0;           // blocks returned by read() since open
  uint64_t misses = 0;         // blocks asked for by read() that were not returned
  uint64_t page_cache_reads = 0;  // blocks read buffered because the page cache held them (cold_reads_direct)
  uint64_t direct_reads = 0;      // blocks read O_DIRECT
  uint64_t lookups = 0;
  uint64_t inserts = 0;        // blocks made durable since open
  // The write-behind queue's tickets: every insert() that returned kQueued takes the next one
  // (enqueued), and the writer finishes them in that order (processed: durable or failed). So a block
  // queued while `enqueued` was N is durable — or counted in failed_inserts — once `processed` ≥ N.
  // The server shows both in /metrics; docs/reliability.md defines "acknowledged durable" with them.
  uint64_t enqueued = 0;
  uint64_t processed = 0;
  uint64_t duplicate_inserts = 0;
  uint64_t dropped_inserts = 0;  // the queue was full
  uint64_t failed_inserts = 0;   // I/O errors, e.g. disk full
  uint64_t index_reopens = 0;    // the index reopened after a failed write, so writing resumed
  uint64_t corrupt_blocks = 0;
  uint64_t evictions = 0;
  uint64_t compactions = 0;
  double compression_ratio() const {
    return stored_bytes ? static_cast<double>(logical_bytes) / static_cast<double>(stored_bytes) : 0.0;
  }
};

struct Options {
  enum class Io { kAuto, kIoUring, kPread };
  uint32_t block_tokens = 64;        // for a new store; an existing store keeps its own
  bool read_only = false;
  uint64_t byte_budget = 0;          // 0: unlimited; otherwise insert() triggers eviction above it
  // kAuto: O_DIRECT reads (direct_io, or cold blocks with cold_reads_direct) go through io_uring when
  // the kernel allows it; buffered reads are preads from worker_threads threads. (Measured in
  // bench/kvstore: buffered io_uring reads of 6 MiB records ran 5-15x slower than buffered preads on
  // Linux 6.x here, while O_DIRECT io_uring reads matched the disk — docs/performance.md.)
  Io io = Io::kAuto;
  uint32_t queue_depth = 64;         // io_uring reads in flight
  uint32_t worker_threads = 8;       // preads, decompression and verification in parallel
  size_t insert_queue_bytes = 512ull << 20;  // write-behind queue bound; beyond it inserts are dropped
  uint64_t segment_bytes = 1ull << 30;       // segment files roll at this size
  double compact_below_live_share = 0.5;     // compaction rewrites segments less live than this
  bool shuffle_f16 = true;           // byte-shuffle 16-bit payloads before LZ4 (see kv-store-format.md)
  // O_DIRECT reads skip the page cache: right for a store much larger than RAM, wrong when the store's
  // files are already cached (a restart on the same machine), where buffered reads run at memory
  // speed. direct_io reads every block O_DIRECT; bench/kvstore measures both ways.
  bool direct_io = false;
  // Without direct_io: each block whose pages are all in the page cache (mincore) is read buffered,
  // the others O_DIRECT (through io_uring where the kernel allows it) — the fast way for each, so a
  // restart on the same machine reads at memory speed and a cold disk at the disk's. false: every
  // read buffered. Filesystems that refuse O_DIRECT (tmpfs) are read buffered either way.
  bool cold_reads_direct = true;
};

enum class InsertResult { kQueued, kDuplicate, kDropped, kReadOnly };

class Store {
 public:
  // Opens or creates the store in `dir`. Errors: the lock is held by another writer (the message names
  // it), the manifest is from another format version, the directory cannot be created.
  static Result<std::unique_ptr<Store>> open(const std::string& dir, const Options& options);
  virtual ~Store() = default;

  virtual uint32_t block_tokens() const = 0;
  virtual bool using_io_uring() const = 0;
  virtual const std::string& dir() const = 0;

  // The longest chain of stored blocks for `tokens`, with batched index reads.
  virtual PrefixMatch lookup(std::string_view name_space, std::string_view fingerprint,
                             std::span<const int32_t> tokens) = 0;

  // Reads and verifies blocks into `out` (out[i] must hold blocks[i].raw_size bytes). Returns one Status
  // per block; a non-ok one is a miss (not found, corrupt, or I/O error) and its buffer is unspecified.
  virtual std::vector<Status> read(std::span<const BlockRef> blocks, std::span<const std::span<uint8_t>> out) = 0;
  // The same, asynchronously; buffers must stay alive until the future is ready.
  virtual std::future<std::vector<Status>> read_async(std::vector<BlockRef> blocks,
                                                      std::vector<std::span<uint8_t>> out) = 0;

  // Queues a block for writing. Never blocks on I/O. `payload` is moved from. `token_ids` (the
  // block's tokens, optional) are kept in the record so tools can show what a block holds.
  virtual InsertResult insert(const BlockKey& key, const BlockKey& parent, std::string_view name_space,
                              std::string_view fingerprint, uint32_t tokens, PayloadDtype dtype, uint16_t layers,
                              std::vector<uint8_t> payload, std::span<const int32_t> token_ids = {}) = 0;
  // Waits until an insert of `bytes` would fit the write-behind queue (true) or `timeout` passes
  // (false), for a producer that would rather wait for the disk than have blocks dropped (the engine's
  // write-behind worker). Never true for a read-only store or a payload larger than the whole queue.
  virtual bool wait_for_room(size_t bytes, std::chrono::milliseconds timeout) = 0;
  // Waits until every block queued before the call is durable (or failed and counted). The sync point.
  // Returns IoError when blocks failed to be stored since the previous flush() returned.
  virtual Status flush() = 0;

  // Evicts leaves, lowest score first, until stored bytes ≤ `bytes`. Score in kv-store-format.md.
  virtual Status evict_to(uint64_t bytes) = 0;
  // Evicts every block (leaves first, so children go before parents) for which `pick` is true.
  virtual Status evict_if(const std::function<bool(const BlockEntry&)>& pick) = 0;
  // Rewrites segments whose live share is below the threshold and deletes them.
  virtual Status compact() = 0;
  // Checks every stored block's checksum; calls `bad` for each failure (and removes it if writable).
  virtual Status verify(const std::function<void(const BlockEntry&, const Status&)>& bad) = 0;

  // True when `key` is stored or queued for storing (memory only, no I/O).
  virtual bool contains(const BlockKey& key) = 0;
  virtual Result<BlockEntry> entry(const BlockKey& key) = 0;
  // The token ids stored with a block (verified; empty when it was inserted without them).
  virtual Result<std::vector<int32_t>> token_ids(const BlockKey& key) = 0;
  virtual Status for_each_entry(const std::function<void(const BlockEntry&)>& fn) = 0;
  virtual Stats stats() = 0;
};

}  // namespace trove::kv
