// The Store implementation. Design notes (the "why"), in the order a block travels:
//
// * The whole index is also held in memory (map_): a 128k-token prompt is 2,000 block keys, and
//   lookup() must answer in well under 2 ms. Entries are ~150 bytes, so even a million blocks (6 TB of
//   KV at 6 MiB a block) is ~150 MB. RocksDB is the durable copy, loaded at open.
// * insert() only checks for duplicates and enqueues: the engine's hot path never waits for a disk.
//   One writer thread encodes records (shuffle + LZ4 + checksum), appends them to the current
//   segment, fsyncs it, and only then writes the index entries with a synced RocksDB batch. That
//   order is the crash-safety argument: an index entry never points at bytes that are not durable.
// * Records are 4 KiB aligned so reads can use O_DIRECT (no page-cache copy, and io_uring reads of
//   6 MiB blocks run at the device's speed). Where O_DIRECT is refused (tmpfs), reads are buffered.
// * read() submits every block to io_uring (queue_depth in flight) and hands each completion to a
//   worker pool that verifies the checksum and decompresses into the caller's buffer, so decode of
//   block i overlaps the I/O of block i+1. Without io_uring, the workers pread.
// * Access metadata (last access, hits) changes in memory on every hit and reaches RocksDB in
//   batches from the writer thread (at most once a second, and at flush/close) — never a write per read.
// * Eviction and compaction take write_mu_, the same lock the writer holds for a batch, so index
//   mutations are serial; readers only take map_mu_ briefly and keep segment fds alive through
//   shared_ptrs, so a segment unlinked by compaction still serves reads that already resolved it.
#include <fcntl.h>
#include <liburing.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "common/log.h"
#include "kvstore/detail/index_codec.h"
#include "kvstore/detail/record.h"
#include "kvstore/store.h"

namespace trove::kv {
namespace {

namespace fs = std::filesystem;
using detail::kRecordAlign;

constexpr int kFormatVersion = 1;
constexpr char kComponent[] = "kvstore";

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string errno_text() { return std::strerror(errno); }

// fsyncs a directory, so the names created or renamed in it survive a power cut.
bool sync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1, bool direct = false) : fd_(fd), direct_(direct) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool direct() const { return direct_; }

 private:
  int fd_;
  bool direct_;
};

// A page-aligned heap buffer (O_DIRECT needs aligned memory).
struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : size(n), data(static_cast<uint8_t*>(std::aligned_alloc(kRecordAlign, n))) {}
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  size_t size;
  uint8_t* data;
};

// A fixed pool of worker threads running queued tasks.
class WorkerPool {
 public:
  explicit WorkerPool(unsigned n) {
    for (unsigned i = 0; i < std::max(1u, n); ++i) threads_.emplace_back([this] { run(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void post(std::function<void()> task) {
    {
      std::lock_guard l(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock l(mu_);
        cv_.wait(l, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Counts outstanding tasks; wait() returns when all are done.
class Latch {
 public:
  explicit Latch(size_t n) : n_(n) {}
  void done() {
    std::lock_guard l(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  void wait() {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return n_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t n_;
};

// Reusable page-aligned read buffers: a 6 MiB block read into fresh memory would spend as long
// faulting pages in as reading them from an NVMe drive. Buffers come back to the pool after use;
// the pool keeps at most kMaxPooledBytes.
class BufferPool {
 public:
  std::unique_ptr<AlignedBuffer> take(size_t n) {
    {
      std::lock_guard l(mu_);
      for (size_t i = 0; i < free_.size(); ++i) {
        if (free_[i]->size >= n) {
          auto b = std::move(free_[i]);
          free_.erase(free_.begin() + static_cast<long>(i));
          pooled_ -= b->size;
          return b;
        }
      }
    }
    return std::make_unique<AlignedBuffer>(detail::align_up(n, 1 << 20));
  }
  void give(std::unique_ptr<AlignedBuffer> b) {
    if (!b) return;
    std::lock_guard l(mu_);
    if (pooled_ + b->size > kMaxPooledBytes) return;
    pooled_ += b->size;
    free_.push_back(std::move(b));
  }

 private:
  static constexpr size_t kMaxPooledBytes = 512ull << 20;
  std::mutex mu_;
  std::vector<std::unique_ptr<AlignedBuffer>> free_;
  size_t pooled_ = 0;
};

// One io_uring ring per store with registered (pinned, pre-mapped) read buffers, reused by every
// read(): the kernel maps a registered buffer once instead of pinning user pages on each 6 MiB read.
// One read() at a time uses it (each read() already keeps queue_depth reads in flight).
struct FixedRing {
  std::mutex mu;
  bool ready = false;
  bool registered = false;
  io_uring ring{};
  size_t slot_bytes = 0;
  std::vector<std::unique_ptr<AlignedBuffer>> slots;
};

struct Segment {
  std::string path;
  uint64_t total_bytes = 0;  // bytes in the file
  uint64_t live_bytes = 0;   // bytes of indexed records
  std::shared_ptr<Fd> read_fd;    // buffered
  std::shared_ptr<Fd> direct_fd;  // O_DIRECT where the filesystem allows it
};

struct Pending {
  BlockEntry entry;
  std::vector<uint8_t> payload;
  std::vector<int32_t> token_ids;
};

// Eviction value: more recent and more used blocks are worth more. Each doubling of hits counts as
// much as one hour of recency.
double eviction_score(const BlockEntry& e) {
  return static_cast<double>(e.last_access) + 3600.0 * std::log2(1.0 + static_cast<double>(e.hits));
}

// RocksDB's own log goes to trove's log (warnings and errors only) instead of a LOG file in the
// index directory: fewer files, and no log file writer to trip over once the disk is full.
class RocksLogger final : public rocksdb::Logger {
 public:
  RocksLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char buf[1024];
    std::vsnprintf(buf, sizeof buf, format, ap);
    // Creating a store, RocksDB reports the index directory it is about to create as missing.
    if (std::strstr(buf, "Error when reading") && std::strstr(buf, "dir NotFound")) return;
    log::warn("rocksdb", "{}", buf);
  }
};

std::string segment_name(uint32_t id) { return fmt::format("seg-{:08d}.trv", id); }

class StoreImpl final : public Store {
 public:
  StoreImpl(std::string dir, Options opt) : dir_(std::move(dir)), opt_(opt), pool_(opt.worker_threads) {}
  ~StoreImpl() override;

  Status open();

  uint32_t block_tokens() const override { return block_tokens_; }
  bool using_io_uring() const override { return uring_; }
  const std::string& dir() const override { return dir_; }
  PrefixMatch lookup(std::string_view ns, std::string_view fp, std::span<const int32_t> tokens) override;
  std::vector<Status> read(std::span<const BlockRef> blocks, std::span<const std::span<uint8_t>> out) override;
  std::future<std::vector<Status>> read_async(std::vector<BlockRef> blocks,
                                              std::vector<std::span<uint8_t>> out) override;
  InsertResult insert(const BlockKey& key, const BlockKey& parent, std::string_view ns, std::string_view fp,
                      uint32_t tokens, PayloadDtype dtype, uint16_t layers, std::vector<uint8_t> payload,
                      std::span<const int32_t> token_ids) override;
  bool wait_for_room(size_t bytes, std::chrono::milliseconds timeout) override;
  Status flush() override;
  Status evict_to(uint64_t bytes) override;
  Status evict_if(const std::function<bool(const BlockEntry&)>& pick) override;
  Status compact() override;
  Status verify(const std::function<void(const BlockEntry&, const Status&)>& bad) override;
  bool contains(const BlockKey& key) override;
  Result<BlockEntry> entry(const BlockKey& key) override;
  Result<std::vector<int32_t>> token_ids(const BlockKey& key) override;
  Status for_each_entry(const std::function<void(const BlockEntry&)>& fn) override;
  Stats stats() override;

 private:
  Status take_lock();
  Status load_manifest();
  rocksdb::Options rocks_options() const;
  Status open_index();
  Status load_index();
  bool reopen_index_locked();
  void note_write_failure(uint64_t blocks, const std::string& what);
  void note_write_success();
  Status scan_segments();
  Status start_segment();
  // The segment's read fd, O_DIRECT when `direct` and the filesystem allows it (one of each, opened once).
  std::shared_ptr<Fd> segment_fd(uint32_t id, bool direct);
  void writer_loop();
  void write_batch(std::vector<Pending>& batch);
  void persist_access_locked();
  Status delete_entries_locked(const std::vector<BlockKey>& keys);
  Status evict_to_locked(uint64_t bytes);
  Status compact_locked();
  void drop_corrupt(const BlockRef& ref, const Status& why);

  const std::string dir_;
  const Options opt_;
  uint32_t block_tokens_ = 64;
  bool uring_ = false;
  int lock_fd_ = -1;
  std::unique_ptr<rocksdb::DB> db_;

  std::shared_mutex map_mu_;  // guards map_, segments_, dirty_
  std::unordered_map<BlockKey, BlockEntry, BlockKeyHash> map_;
  std::unordered_map<uint32_t, Segment> segments_;
  std::unordered_set<BlockKey, BlockKeyHash> dirty_;
  uint64_t stored_bytes_ = 0, logical_bytes_ = 0;

  std::mutex write_mu_;  // serialises index mutations (writer batches, eviction, compaction)
  // Set after the first failed index write (e.g. the disk filled). RocksDB must not be written again
  // in this process after a write error (its WAL is in an unknown state); inserts then fail softly and
  // reads go on from the in-memory index. The next open() recovers the WAL.
  bool index_failed_ = false;
  std::chrono::steady_clock::time_point last_reopen_try_{};
  bool reopen_failure_logged_ = false;
  bool write_failing_ = false;     // in a run of failed writes (logged at its start and end)
  uint64_t failed_in_run_ = 0;
  uint32_t cur_seg_ = 0;
  int cur_fd_ = -1;
  uint64_t cur_off_ = 0;
  std::chrono::steady_clock::time_point last_persist_ = std::chrono::steady_clock::now();

  std::mutex q_mu_;
  std::condition_variable q_cv_, done_cv_;
  std::deque<Pending> queue_;
  std::unordered_set<BlockKey, BlockKeyHash> queued_keys_;
  size_t queue_bytes_ = 0;
  uint64_t enqueued_ = 0, processed_ = 0;
  bool stop_ = false;
  std::thread writer_;

  WorkerPool pool_;
  BufferPool buffers_;
  FixedRing fixed_;
  std::atomic<uint64_t> failed_reported_{0};  // failed_ as of the last flush()
  std::atomic<uint64_t> page_cache_reads_{0}, direct_reads_{0};
  std::atomic<uint64_t> hits_{0}, misses_{0}, lookups_{0}, inserts_{0}, dups_{0}, dropped_{0}, failed_{0},
      corrupt_{0}, evictions_{0}, compactions_{0}, index_reopens_{0};
};

StoreImpl::~StoreImpl() {
  if (writer_.joinable()) {
    {
      std::lock_guard l(q_mu_);
      stop_ = true;
    }
    q_cv_.notify_all();
    writer_.join();
  }
  if (db_ && !opt_.read_only) {
    std::lock_guard w(write_mu_);
    persist_access_locked();
  }
  if (cur_fd_ >= 0) ::close(cur_fd_);
  if (fixed_.ready) io_uring_queue_exit(&fixed_.ring);
  db_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

Status StoreImpl::take_lock() {
  const std::string path = dir_ + "/LOCK";
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return Status::IoError(fmt::format("cannot open lock file '{}': {}", path, errno_text()));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char holder[256] = {};
    const ssize_t n = pread(lock_fd_, holder, sizeof holder - 1, 0);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string("another process");
    while (!who.empty() && (who.back() == '\n' || who.back() == '\0')) who.pop_back();
    ::close(lock_fd_);
    lock_fd_ = -1;
    return Status::FailedPrecondition(fmt::format(
        "KV store '{}' is open for writing by {}; only one process may write it. Open it read-only "
        "(e.g. `trove kv stats`), or stop that process first",
        dir_, who));
  }
  char host[128] = {};
  gethostname(host, sizeof host - 1);
  const std::string me = fmt::format("pid {} on {} since {}\n", getpid(), host, now_seconds());
  if (ftruncate(lock_fd_, 0) != 0 || pwrite(lock_fd_, me.data(), me.size(), 0) < 0) {
    return Status::IoError(fmt::format("cannot write lock file '{}': {}", path, errno_text()));
  }
  return Status::Ok();
}

Status StoreImpl::load_manifest() {
  const std::string path = dir_ + "/MANIFEST";
  std::ifstream in(path);
  if (!in) {
    if (opt_.read_only) {
      return Status::NotFound(fmt::format("no KV store in '{}' (no MANIFEST); a server creates it on first use", dir_));
    }
    block_tokens_ = opt_.block_tokens;
    if (block_tokens_ == 0) return Status::InvalidArgument("block_tokens must be positive");
    // Written, fsynced, renamed, and the directory fsynced: after a power cut the MANIFEST is either
    // absent (a new store is made) or whole, never an empty file that refuses every later open.
    const std::string tmp = path + ".tmp";
    const std::string text = fmt::format("trove kv store\nformat {}\nblock_tokens {}\n", kFormatVersion, block_tokens_);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    if (!ok) return Status::IoError(fmt::format("cannot write '{}': {}", tmp, errno_text()));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return Status::IoError(fmt::format("cannot create '{}': {}", path, errno_text()));
    }
    sync_dir(dir_);
    return Status::Ok();
  }
  std::string title, key;
  int format = 0;
  std::getline(in, title);
  if (title != "trove kv store") {
    return Status::Corruption(fmt::format("'{}' is not a trove KV store manifest", path));
  }
  while (in >> key) {
    if (key == "format") in >> format;
    else if (key == "block_tokens") in >> block_tokens_;
    else in.ignore(1 << 20, '\n');
  }
  if (format != kFormatVersion) {
    return Status::Unsupported(fmt::format(
        "KV store '{}' has format version {}, this trove reads version {}; move the store aside (it is a cache)",
        dir_, format, kFormatVersion));
  }
  if (block_tokens_ == 0) return Status::Corruption(fmt::format("'{}' has no block_tokens", path));
  return Status::Ok();
}

rocksdb::Options StoreImpl::rocks_options() const {
  rocksdb::Options ro;
  ro.create_if_missing = !opt_.read_only;
  ro.max_open_files = 256;
  ro.keep_log_file_num = 2;
  ro.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  ro.info_log = std::make_shared<RocksLogger>();
  // Replaying the WAL without flushing it needs no new SST file, so a store on a full disk reopens.
  ro.avoid_flush_during_recovery = true;
  return ro;
}

Status StoreImpl::open_index() {
  rocksdb::DB* db = nullptr;
  const rocksdb::Options ro = rocks_options();
  rocksdb::Status s = opt_.read_only ? rocksdb::DB::OpenForReadOnly(ro, dir_ + "/index", &db)
                                     : rocksdb::DB::Open(ro, dir_ + "/index", &db);
  if (!s.ok()) {
    const std::string m = fmt::format("cannot open the index of KV store '{}': {}", dir_, s.ToString());
    return s.IsCorruption() ? Status::Corruption(m) : Status::IoError(m);
  }
  db_.reset(db);
  return Status::Ok();
}

// After a failed index write: reopen RocksDB (its recovery replays the WAL) and take the durable index
// as the truth again, so writing resumes once the cause (a full disk) is gone. At most once a second.
bool StoreImpl::reopen_index_locked() {
  if (!index_failed_) return true;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_reopen_try_ < std::chrono::seconds(1)) return false;
  last_reopen_try_ = now;
  db_.reset();
  if (Status st = open_index(); !st.ok()) {
    if (!reopen_failure_logged_) {
      log::warn(kComponent, "{}; index writes stay off, retrying every second", st.message());
      reopen_failure_logged_ = true;
    }
    return false;
  }
  std::unordered_map<BlockKey, BlockEntry, BlockKeyHash> fresh;
  uint64_t stored = 0, logical = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("b"); it->Valid() && it->key().starts_with("b"); it->Next()) {
    auto key = detail::parse_index_key(it->key().ToStringView());
    if (!key) continue;
    auto e = detail::decode_entry(*key, it->value().ToStringView());
    if (!e) continue;
    stored += e->ref.length;
    logical += e->ref.raw_size;
    fresh.emplace(*key, std::move(*e));
  }
  if (!it->status().ok()) {
    it.reset();
    db_.reset();
    return false;
  }
  it.reset();
  {
    std::unique_lock l(map_mu_);
    // Access counts kept in memory survive; the durable index decides which blocks exist.
    for (auto& [k, e] : fresh) {
      if (auto old = map_.find(k); old != map_.end()) {
        e.last_access = std::max(e.last_access, old->second.last_access);
        e.hits = std::max(e.hits, old->second.hits);
      }
    }
    map_ = std::move(fresh);
    stored_bytes_ = stored;
    logical_bytes_ = logical;
    for (auto& [id, seg] : segments_) seg.live_bytes = 0;
    for (const auto& [k, e] : map_) {
      if (auto sg = segments_.find(e.ref.segment); sg != segments_.end()) sg->second.live_bytes += e.ref.length;
    }
  }
  index_failed_ = false;
  reopen_failure_logged_ = false;
  ++index_reopens_;
  log::info(kComponent, "reopened the index of '{}' after a failed write; writing resumes", dir_);
  return true;
}

void StoreImpl::note_write_failure(uint64_t blocks, const std::string& what) {
  failed_ += blocks;
  failed_in_run_ += blocks;
  if (write_failing_) return;
  write_failing_ = true;
  log::warn(kComponent, "{}; {} blocks not stored (the disk may be full). Further write failures are counted "
            "(trove_store_write_failures_total) and not logged until a write succeeds", what, blocks);
}

void StoreImpl::note_write_success() {
  if (!write_failing_) return;
  log::info(kComponent, "writing to '{}' resumed; {} blocks were not stored meanwhile", dir_, failed_in_run_);
  write_failing_ = false;
  failed_in_run_ = 0;
}

Status StoreImpl::load_index() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("b"); it->Valid() && it->key().starts_with("b"); it->Next()) {
    auto key = detail::parse_index_key(it->key().ToStringView());
    if (!key) continue;
    auto e = detail::decode_entry(*key, it->value().ToStringView());
    if (!e) {
      log::warn(kComponent, "index entry {} does not decode; ignoring it", key->hex());
      continue;
    }
    stored_bytes_ += e->ref.length;
    logical_bytes_ += e->ref.raw_size;
    map_.emplace(*key, std::move(*e));
  }
  if (!it->status().ok()) {
    const std::string m = fmt::format("reading the index of '{}': {}", dir_, it->status().ToString());
    return it->status().IsCorruption() ? Status::Corruption(m) : Status::IoError(m);
  }
  return Status::Ok();
}

Status StoreImpl::scan_segments() {
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(dir_ + "/segments", ec)) {
    const std::string name = f.path().filename().string();
    unsigned id = 0;
    if (std::sscanf(name.c_str(), "seg-%u.trv", &id) != 1) continue;
    Segment s;
    s.path = f.path().string();
    s.total_bytes = f.file_size(ec);
    segments_[id] = std::move(s);
    cur_seg_ = std::max(cur_seg_, static_cast<uint32_t>(id));
  }
  if (ec) return Status::IoError(fmt::format("cannot list '{}/segments': {}", dir_, ec.message()));
  for (const auto& [key, e] : map_) {
    auto it = segments_.find(e.ref.segment);
    if (it != segments_.end()) it->second.live_bytes += e.ref.length;
  }
  return Status::Ok();
}

Status StoreImpl::start_segment() {
  if (cur_fd_ >= 0) {
    if (::fdatasync(cur_fd_) != 0) return Status::IoError(fmt::format("fsync of a segment failed: {}", errno_text()));
    ::close(cur_fd_);
    // The segment is complete: its size is final (a batch that rolled mid-way wrote into it too).
    std::unique_lock l(map_mu_);
    if (auto it = segments_.find(cur_seg_); it != segments_.end()) it->second.total_bytes = cur_off_;
  }
  ++cur_seg_;
  const std::string path = fmt::format("{}/segments/{}", dir_, segment_name(cur_seg_));
  cur_fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (cur_fd_ < 0) return Status::IoError(fmt::format("cannot create segment '{}': {}", path, errno_text()));
  // The new name must be durable before an index entry can point into the file.
  if (!sync_dir(dir_ + "/segments")) {
    const std::string why = errno_text();
    ::close(cur_fd_);
    cur_fd_ = -1;
    ::unlink(path.c_str());
    return Status::IoError(fmt::format("cannot fsync '{}/segments' after creating a segment: {}", dir_, why));
  }
  cur_off_ = 0;
  std::unique_lock l(map_mu_);
  segments_[cur_seg_] = Segment{path, 0, 0, nullptr, nullptr};
  return Status::Ok();
}

// Whether every page of [offset, offset + length) of the file is in the page cache. Maps the range
// (no I/O) and asks mincore(); an error counts as "not resident".
bool pages_resident(int fd, uint64_t offset, uint64_t length) {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  const uint64_t len = offset + length - start;
  void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) return false;
  std::vector<unsigned char> vec((len + page - 1) / page);
  const bool ok = ::mincore(p, len, vec.data()) == 0;
  ::munmap(p, len);
  return ok && std::all_of(vec.begin(), vec.end(), [](unsigned char v) { return (v & 1) != 0; });
}

std::shared_ptr<Fd> StoreImpl::segment_fd(uint32_t id, bool direct) {
  std::unique_lock l(map_mu_);
  auto it = segments_.find(id);
  if (it == segments_.end()) return nullptr;
  std::shared_ptr<Fd>& slot = direct ? it->second.direct_fd : it->second.read_fd;
  if (!slot) {
    int fd = direct ? ::open(it->second.path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT) : -1;
    const bool is_direct = fd >= 0;
    if (fd < 0) fd = ::open(it->second.path.c_str(), O_RDONLY | O_CLOEXEC);  // e.g. tmpfs refuses O_DIRECT
    if (fd < 0) return nullptr;
    slot = std::make_shared<Fd>(fd, is_direct);
  }
  return slot;
}

Status StoreImpl::open() {
  std::error_code ec;
  fs::create_directories(dir_ + "/segments", ec);
  if (ec && !opt_.read_only) return Status::IoError(fmt::format("cannot create '{}': {}", dir_, ec.message()));
  ::chmod(dir_.c_str(), 0700);
  if (!opt_.read_only) TROVE_RETURN_IF_ERROR(take_lock());
  TROVE_RETURN_IF_ERROR(load_manifest());

  Status st = open_index();
  if (st.ok()) st = load_index();
  if (!st.ok() && st.code() == StatusCode::kCorruption && !opt_.read_only) {
    // The store is a cache: a damaged index costs its blocks (misses), not the server's start.
    db_.reset();
    map_.clear();
    stored_bytes_ = logical_bytes_ = 0;
    const std::string aside = fmt::format("{}/index.corrupt-{}", dir_, now_seconds());
    if (::rename((dir_ + "/index").c_str(), aside.c_str()) != 0) {
      return Status::IoError(fmt::format("the index of KV store '{}' is corrupt ({}) and cannot be moved aside: {}; "
                                         "move the store aside (it is a cache)", dir_, st.message(), errno_text()));
    }
    log::warn(kComponent, "the index of '{}' is corrupt ({}); moved it to '{}' and starting an empty one (its blocks "
              "are misses; their segments are reclaimed by compaction)", dir_, st.message(), aside);
    st = open_index();
    if (st.ok()) st = load_index();
  }
  TROVE_RETURN_IF_ERROR(st);
  TROVE_RETURN_IF_ERROR(scan_segments());

  if (opt_.io == Options::Io::kIoUring ||
      (opt_.io == Options::Io::kAuto && (opt_.direct_io || opt_.cold_reads_direct))) {
    io_uring ring;
    if (io_uring_queue_init(4, &ring, 0) == 0) {
      uring_ = true;
      io_uring_queue_exit(&ring);
    } else if (opt_.io == Options::Io::kIoUring) {
      return Status::Unsupported("io_uring is not available on this kernel (or is disabled); use the pread backend");
    } else {
      log::info(kComponent, "io_uring unavailable; reading with pread");
    }
  }
  if (!opt_.read_only) {
    TROVE_RETURN_IF_ERROR(start_segment());
    writer_ = std::thread([this] { writer_loop(); });
  }
  return Status::Ok();
}

PrefixMatch StoreImpl::lookup(std::string_view ns, std::string_view fp, std::span<const int32_t> tokens) {
  ++lookups_;
  PrefixMatch m;
  const size_t n = tokens.size() / block_tokens_;
  BlockKey parent;
  std::shared_lock l(map_mu_);
  for (size_t i = 0; i < n; ++i) {
    const BlockKey k = block_key(parent, fp, ns, tokens.subspan(i * block_tokens_, block_tokens_));
    auto it = map_.find(k);
    if (it == map_.end()) break;
    m.blocks.push_back(it->second.ref);
    parent = k;
  }
  m.matched_tokens = m.blocks.size() * block_tokens_;
  return m;
}

void StoreImpl::drop_corrupt(const BlockRef& ref, const Status& why) {
  ++corrupt_;
  log::warn(kComponent, "block {} (segment {}, offset {}) failed verification: {}; treated as a miss{}", ref.key.hex(),
            ref.segment, ref.offset, why.message(), opt_.read_only ? "" : " and removed from the index");
  if (opt_.read_only) return;
  std::lock_guard w(write_mu_);
  {
    std::shared_lock l(map_mu_);
    if (!map_.count(ref.key)) return;
  }
  (void)delete_entries_locked({ref.key});
}

std::vector<Status> StoreImpl::read(std::span<const BlockRef> blocks, std::span<const std::span<uint8_t>> out) {
  TROVE_CHECK(blocks.size() == out.size());
  const size_t n = blocks.size();
  std::vector<Status> result(n);
  // Resolve each block's current location (compaction may have moved it since lookup()).
  struct Job {
    BlockRef ref;
    std::shared_ptr<Fd> fd;
    std::unique_ptr<AlignedBuffer> buf;  // pread path and unregistered io_uring reads
    int slot = -1;                       // registered io_uring buffer
    const uint8_t* data() const { return buf ? buf->data : nullptr; }
  };
  std::vector<Job> jobs(n);
  std::vector<size_t> todo;
  {
    std::shared_lock l(map_mu_);
    for (size_t i = 0; i < n; ++i) {
      auto it = map_.find(blocks[i].key);
      if (it == map_.end()) {
        result[i] = Status::NotFound(fmt::format("block {} is not in the store", blocks[i].key.hex()));
        continue;
      }
      jobs[i].ref = it->second.ref;
      if (out[i].size() != jobs[i].ref.raw_size) {
        result[i] = Status::InvalidArgument(
            fmt::format("buffer of {} bytes for block {} of {} bytes", out[i].size(), blocks[i].key.hex(), jobs[i].ref.raw_size));
        continue;
      }
      todo.push_back(i);
    }
  }
  // Buffers are taken only when a read is issued, so at most queue_depth of them are live and the
  // pool recycles them (already faulted-in) for the next reads.
  for (size_t i : todo) jobs[i].fd = segment_fd(jobs[i].ref.segment, opt_.direct_io);
  // Which reads go through the ring and which to the workers' preads. With cold_reads_direct a block
  // the page cache holds is read buffered by a worker (memory speed), the others O_DIRECT.
  std::vector<size_t> ring_todo, pool_todo;
  if (!opt_.direct_io && opt_.cold_reads_direct) {
    for (size_t i : todo) {
      Job& j = jobs[i];
      if (j.fd && !pages_resident(j.fd->get(), j.ref.offset, j.ref.length)) {
        if (auto d = segment_fd(j.ref.segment, true)) j.fd = std::move(d);
      }
      const bool direct = j.fd && j.fd->direct();
      if (j.fd) ++(direct ? direct_reads_ : page_cache_reads_);
      (direct && uring_ ? ring_todo : pool_todo).push_back(i);
    }
  } else {
    for (size_t i : todo) direct_reads_ += jobs[i].fd && jobs[i].fd->direct();
    (uring_ ? ring_todo : pool_todo) = todo;
  }
  Latch latch(todo.size());
  // Free registered slots, returned by decode tasks on the worker threads.
  std::mutex slot_mu;
  std::condition_variable slot_cv;
  std::vector<int> free_slots;
  auto release_slot = [&](int slot) {
    if (slot < 0) return;
    {
      std::lock_guard l(slot_mu);
      free_slots.push_back(slot);
    }
    slot_cv.notify_one();
  };
  auto decode = [&](size_t i) {
    const uint8_t* data = jobs[i].slot >= 0 ? fixed_.slots[static_cast<size_t>(jobs[i].slot)]->data : jobs[i].data();
    result[i] = detail::decode_record(std::span<const uint8_t>(data, jobs[i].ref.length), jobs[i].ref.key,
                                      jobs[i].ref.checksum, out[i]);
    buffers_.give(std::move(jobs[i].buf));
    release_slot(std::exchange(jobs[i].slot, -1));
    latch.done();
  };
  auto fail = [&](size_t i, Status st) {
    result[i] = std::move(st);
    buffers_.give(std::move(jobs[i].buf));
    release_slot(std::exchange(jobs[i].slot, -1));
    latch.done();
  };
  auto pread_job = [&](size_t i) {
    Job& j = jobs[i];
    if (!j.fd) return fail(i, Status::NotFound(fmt::format("segment {} is gone", j.ref.segment)));
    if (!j.buf) j.buf = buffers_.take(j.ref.length);
    uint64_t got = 0;
    while (got < j.ref.length) {
      const ssize_t r = ::pread(j.fd->get(), j.buf->data + got, j.ref.length - got, static_cast<off_t>(j.ref.offset + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        return fail(i, r == 0 ? Status::Corruption("record runs past the end of its segment")
                              : Status::IoError(fmt::format("read failed: {}", errno_text())));
      }
      got += static_cast<uint64_t>(r);
    }
    decode(i);
  };

  for (size_t i : pool_todo) pool_.post([&, i] { pread_job(i); });
  bool submitted_with_uring = false;
  std::unique_lock<std::mutex> ring_lock;
  if (!ring_todo.empty()) {
    ring_lock = std::unique_lock(fixed_.mu);
    const unsigned depth = std::max(1u, opt_.queue_depth);
    if (!fixed_.ready) fixed_.ready = io_uring_queue_init(depth, &fixed_.ring, 0) == 0;
    if (fixed_.ready) {
      // (Re)register slots large enough for the largest record of this request.
      uint64_t max_len = 0;
      for (size_t i : ring_todo) max_len = std::max(max_len, jobs[i].ref.length);
      if (max_len > fixed_.slot_bytes) {
        if (fixed_.registered) io_uring_unregister_buffers(&fixed_.ring);
        fixed_.registered = false;
        fixed_.slot_bytes = detail::align_up(max_len, 1 << 20);
        fixed_.slots.clear();
        std::vector<iovec> iov;
        // 16 slots of ~6-9 MiB keep the disk busy; registration pins (and faults in) their pages once.
        for (unsigned k = 0; k < std::min(depth, 16u); ++k) {
          fixed_.slots.push_back(std::make_unique<AlignedBuffer>(fixed_.slot_bytes));
          iov.push_back({fixed_.slots.back()->data, fixed_.slot_bytes});
        }
        fixed_.registered = io_uring_register_buffers(&fixed_.ring, iov.data(), static_cast<unsigned>(iov.size())) == 0;
        if (!fixed_.registered) {
          log::info(kComponent, "io_uring buffer registration refused (RLIMIT_MEMLOCK?); reading into unregistered buffers");
        }
      }
      if (fixed_.registered) {
        for (int k = static_cast<int>(fixed_.slots.size()) - 1; k >= 0; --k) free_slots.push_back(k);
      }
      io_uring* ring = &fixed_.ring;
      submitted_with_uring = true;
      size_t next = 0, inflight = 0;
      while (next < ring_todo.size() || inflight > 0) {
        while (next < ring_todo.size() && inflight < depth) {
          const size_t i = ring_todo[next];
          if (!jobs[i].fd) {
            ++next;
            fail(i, Status::NotFound(fmt::format("segment {} is gone", jobs[i].ref.segment)));
            continue;
          }
          io_uring_sqe* sqe = nullptr;
          if (fixed_.registered) {
            int slot;
            {
              std::unique_lock l(slot_mu);
              if (free_slots.empty()) {
                if (inflight > 0) break;  // reap completions first; decodes will free slots
                slot_cv.wait(l, [&] { return !free_slots.empty(); });
              }
              slot = free_slots.back();
              free_slots.pop_back();
            }
            jobs[i].slot = slot;
            sqe = io_uring_get_sqe(ring);
            io_uring_prep_read_fixed(sqe, jobs[i].fd->get(), fixed_.slots[static_cast<size_t>(slot)]->data,
                                     static_cast<unsigned>(jobs[i].ref.length), jobs[i].ref.offset, slot);
          } else {
            jobs[i].buf = buffers_.take(jobs[i].ref.length);
            sqe = io_uring_get_sqe(ring);
            io_uring_prep_read(sqe, jobs[i].fd->get(), jobs[i].buf->data, static_cast<unsigned>(jobs[i].ref.length),
                               jobs[i].ref.offset);
          }
          io_uring_sqe_set_data64(sqe, i);
          ++inflight;
          ++next;
        }
        if (inflight == 0) {
          if (next < ring_todo.size()) continue;  // waiting for a free slot
          break;
        }
        io_uring_submit(ring);
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(ring, &cqe) != 0) continue;
        do {
          const size_t i = io_uring_cqe_get_data64(cqe);
          const int res = cqe->res;
          io_uring_cqe_seen(ring, cqe);
          --inflight;
          if (res < 0) {
            fail(i, Status::IoError(fmt::format("read failed: {}", std::strerror(-res))));
          } else if (static_cast<uint64_t>(res) < jobs[i].ref.length) {
            // Short read (rare; e.g. a signal): redo it synchronously off the ring.
            release_slot(std::exchange(jobs[i].slot, -1));
            pool_.post([&, i] { pread_job(i); });
          } else {
            pool_.post([&, i] { decode(i); });
          }
        } while (io_uring_peek_cqe(ring, &cqe) == 0);
      }
    }
  }
  if (!submitted_with_uring) {
    for (size_t i : ring_todo) pool_.post([&, i] { pread_job(i); });
  }
  latch.wait();

  const int64_t now = now_seconds();
  std::vector<std::pair<BlockRef, Status>> corrupt;
  {
    std::unique_lock l(map_mu_);
    for (size_t i = 0; i < n; ++i) {
      if (result[i].ok()) {
        ++hits_;
        auto it = map_.find(blocks[i].key);
        if (it != map_.end()) {
          it->second.last_access = now;
          ++it->second.hits;
          if (!opt_.read_only) dirty_.insert(blocks[i].key);
        }
      } else {
        ++misses_;
        if (result[i].code() == StatusCode::kCorruption) corrupt.emplace_back(jobs[i].ref, result[i]);
      }
    }
  }
  for (auto& [ref, st] : corrupt) drop_corrupt(ref, st);
  return result;
}

std::future<std::vector<Status>> StoreImpl::read_async(std::vector<BlockRef> blocks, std::vector<std::span<uint8_t>> out) {
  return std::async(std::launch::async, [this, b = std::move(blocks), o = std::move(out)] {
    return read(b, o);
  });
}

InsertResult StoreImpl::insert(const BlockKey& key, const BlockKey& parent, std::string_view ns, std::string_view fp,
                               uint32_t tokens, PayloadDtype dtype, uint16_t layers, std::vector<uint8_t> payload,
                               std::span<const int32_t> token_ids) {
  if (opt_.read_only) return InsertResult::kReadOnly;
  {
    std::shared_lock l(map_mu_);
    if (map_.count(key)) {
      ++dups_;
      return InsertResult::kDuplicate;
    }
  }
  std::lock_guard l(q_mu_);
  if (queued_keys_.count(key)) {
    ++dups_;
    return InsertResult::kDuplicate;
  }
  if (queue_bytes_ + payload.size() > opt_.insert_queue_bytes) {
    ++dropped_;
    return InsertResult::kDropped;
  }
  Pending p;
  p.entry.ref.key = key;
  p.entry.ref.parent = parent;
  p.entry.ref.tokens = tokens;
  p.entry.ref.raw_size = payload.size();
  p.entry.name_space = std::string(ns);
  p.entry.fingerprint = std::string(fp);
  p.entry.dtype = dtype;
  p.entry.layers = layers;
  p.payload = std::move(payload);
  p.token_ids.assign(token_ids.begin(), token_ids.end());
  queue_bytes_ += p.payload.size();
  queued_keys_.insert(key);
  queue_.push_back(std::move(p));
  ++enqueued_;
  q_cv_.notify_one();
  return InsertResult::kQueued;
}

bool StoreImpl::wait_for_room(size_t bytes, std::chrono::milliseconds timeout) {
  if (opt_.read_only || bytes > opt_.insert_queue_bytes) return false;
  std::unique_lock l(q_mu_);
  // done_cv_ is notified each time the writer has finished a batch (queue_bytes_ went down).
  return done_cv_.wait_for(l, timeout, [&] { return stop_ || queue_bytes_ + bytes <= opt_.insert_queue_bytes; }) && !stop_;
}

bool StoreImpl::contains(const BlockKey& key) {
  {
    std::shared_lock l(map_mu_);
    if (map_.count(key)) return true;
  }
  std::lock_guard l(q_mu_);
  return queued_keys_.count(key) > 0;
}

void StoreImpl::writer_loop() {
  for (;;) {
    std::vector<Pending> batch;
    bool stopping;
    {
      std::unique_lock l(q_mu_);
      q_cv_.wait_for(l, std::chrono::seconds(1), [&] { return stop_ || !queue_.empty(); });
      stopping = stop_;
      // Up to ~64 MiB per batch: one fsync and one index write amortised over many blocks.
      size_t bytes = 0;
      while (!queue_.empty() && (batch.empty() || bytes < (64u << 20))) {
        bytes += queue_.front().payload.size();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    {
      std::lock_guard w(write_mu_);
      if (!batch.empty()) write_batch(batch);
      if (opt_.byte_budget) {
        uint64_t stored;
        {
          std::shared_lock l(map_mu_);
          stored = stored_bytes_;
        }
        if (stored > opt_.byte_budget) (void)evict_to_locked(opt_.byte_budget);
      }
      if (std::chrono::steady_clock::now() - last_persist_ > std::chrono::seconds(1)) persist_access_locked();
    }
    {
      std::lock_guard l(q_mu_);
      for (const auto& p : batch) {
        queue_bytes_ -= p.payload.size();
        queued_keys_.erase(p.entry.ref.key);
      }
      processed_ += batch.size();
      done_cv_.notify_all();
      if (stopping && queue_.empty()) return;
    }
  }
}

void StoreImpl::write_batch(std::vector<Pending>& batch) {
  if (!reopen_index_locked()) {
    note_write_failure(batch.size(), "the index cannot be written (it failed earlier and does not reopen yet)");
    return;
  }
  const int64_t now = now_seconds();
  std::vector<BlockEntry> written;
  written.reserve(batch.size());
  // The records (byte shuffle, LZ4, checksum) are encoded on the worker pool, then written in queue
  // order: with one thread encoding, the store took KV at ~0.9 GB/s on the H200 machine, slower than
  // the 8B's prefill produces it; encoded in parallel, the write-behind no longer waits for the store
  // there (docs/performance.md, 2026-12-03 17:05).
  std::vector<detail::EncodedRecord> recs(batch.size());
  {
    Latch latch(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      pool_.post([&, i] {
        const Pending& p = batch[i];
        recs[i] = detail::encode_record(p.entry.ref.key, p.entry.dtype, p.entry.layers, p.entry.ref.tokens, p.payload,
                                        opt_.shuffle_f16, p.token_ids);
        latch.done();
      });
    }
    latch.wait();
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = batch[i];
    detail::EncodedRecord rec = std::move(recs[i]);
    if (cur_off_ > 0 && cur_off_ + rec.bytes.size() > opt_.segment_bytes) {
      if (Status st = start_segment(); !st.ok()) {
        note_write_failure(batch.size() - written.size(), fmt::format("cannot roll to a new segment: {}", st.message()));
        break;
      }
      // Entries already written went to the previous segment, which start_segment() fsynced.
    }
    size_t done = 0;
    bool ok = true;
    while (done < rec.bytes.size()) {
      const ssize_t w = ::pwrite(cur_fd_, rec.bytes.data() + done, rec.bytes.size() - done,
                                 static_cast<off_t>(cur_off_ + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        ok = false;
        break;
      }
      done += static_cast<size_t>(w);
    }
    if (!ok) {
      note_write_failure(1, fmt::format("writing block {} to segment {} failed: {}", p.entry.ref.key.hex(), cur_seg_,
                                        errno_text()));
      // Give back what the partial record took, so a full disk still has room for the index (and a
      // reopen); cur_off_ is not advanced, so the next record starts where this one did.
      (void)::ftruncate(cur_fd_, static_cast<off_t>(cur_off_));
      continue;
    }
    BlockEntry e = std::move(p.entry);
    e.ref.segment = cur_seg_;
    e.ref.offset = cur_off_;
    e.ref.length = rec.bytes.size();
    e.ref.checksum = rec.header.checksum;
    e.created = e.last_access = now;
    cur_off_ += rec.bytes.size();
    written.push_back(std::move(e));
  }
  if (written.empty()) return;
  // Durability order: the segment bytes first, then the index that points at them.
  if (::fdatasync(cur_fd_) != 0) {
    note_write_failure(written.size(), fmt::format("fsync of segment {} failed: {}", cur_seg_, errno_text()));
    return;
  }
  rocksdb::WriteBatch wb;
  std::unordered_map<BlockKey, uint32_t, BlockKeyHash> new_children;
  {
    std::shared_lock l(map_mu_);
    std::unordered_set<BlockKey, BlockKeyHash> in_batch;
    for (const auto& e : written) in_batch.insert(e.ref.key);
    for (const auto& e : written) {
      if (!e.ref.parent.is_zero() && (map_.count(e.ref.parent) || in_batch.count(e.ref.parent))) {
        ++new_children[e.ref.parent];
      }
    }
    for (auto& e : written) {
      auto c = new_children.find(e.ref.key);
      if (c != new_children.end()) e.children += c->second;
      wb.Put(detail::index_key(e.ref.key), detail::encode_entry(e));
    }
    for (const auto& [parent, count] : new_children) {
      auto it = map_.find(parent);
      if (it == map_.end()) continue;  // parent is in this batch; counted above
      BlockEntry updated = it->second;
      updated.children += count;
      wb.Put(detail::index_key(parent), detail::encode_entry(updated));
    }
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = db_->Write(wo, &wb);
  if (!s.ok()) {
    index_failed_ = true;
    note_write_failure(written.size(), fmt::format("index write failed: {} (index writes pause until it reopens; "
                                                   "reads continue)", s.ToString()));
    return;
  }
  std::unique_lock l(map_mu_);
  for (const auto& [parent, count] : new_children) {
    auto it = map_.find(parent);
    if (it != map_.end()) it->second.children += count;
  }
  for (auto& e : written) {
    stored_bytes_ += e.ref.length;
    logical_bytes_ += e.ref.raw_size;
    // Its own segment: a batch that rolled to a new segment wrote its first entries into the old one.
    segments_[e.ref.segment].live_bytes += e.ref.length;
    map_.emplace(e.ref.key, std::move(e));
  }
  segments_[cur_seg_].total_bytes = cur_off_;
  inserts_ += written.size();
  l.unlock();
  note_write_success();
}

void StoreImpl::persist_access_locked() {
  last_persist_ = std::chrono::steady_clock::now();
  if (index_failed_) return;
  rocksdb::WriteBatch wb;
  {
    std::unique_lock l(map_mu_);
    if (dirty_.empty()) return;
    for (const auto& k : dirty_) {
      auto it = map_.find(k);
      if (it != map_.end()) wb.Put(detail::index_key(k), detail::encode_entry(it->second));
    }
    dirty_.clear();
  }
  // Access metadata: losing the last second of it is fine; a failure still stops index writes.
  if (!db_->Write(rocksdb::WriteOptions(), &wb).ok()) index_failed_ = true;
}

Status StoreImpl::flush() {
  if (opt_.read_only) return Status::Ok();
  uint64_t ticket;
  {
    std::unique_lock l(q_mu_);
    ticket = enqueued_;
    q_cv_.notify_all();
    done_cv_.wait(l, [&] { return processed_ >= ticket; });
  }
  {
    std::lock_guard w(write_mu_);
    persist_access_locked();
  }
  // Failures since the previous flush() returned (the writer may have failed some blocks before this
  // call began, so a before/after difference of failed_ would miss them).
  const uint64_t failed = failed_.load() - failed_reported_.exchange(failed_.load());
  if (failed) {
    return Status::IoError(fmt::format("{} blocks could not be written to '{}' (see the log; the disk may be full)",
                                       failed, dir_));
  }
  return Status::Ok();
}

Status StoreImpl::delete_entries_locked(const std::vector<BlockKey>& keys) {
  if (index_failed_) return Status::IoError(fmt::format("the index of '{}' failed earlier; reopen the store", dir_));
  rocksdb::WriteBatch wb;
  std::unique_lock l(map_mu_);
  std::vector<BlockKey> removed;
  for (const auto& k : keys) {
    auto it = map_.find(k);
    if (it == map_.end()) continue;
    const BlockEntry& e = it->second;
    wb.Delete(detail::index_key(k));
    auto p = map_.find(e.ref.parent);
    if (p != map_.end() && p->second.children > 0) {
      --p->second.children;
      wb.Put(detail::index_key(p->first), detail::encode_entry(p->second));
    }
    auto s = segments_.find(e.ref.segment);
    if (s != segments_.end()) s->second.live_bytes -= std::min(s->second.live_bytes, e.ref.length);
    stored_bytes_ -= e.ref.length;
    logical_bytes_ -= e.ref.raw_size;
    dirty_.erase(k);
    map_.erase(it);
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status st = db_->Write(wo, &wb);
  if (!st.ok()) {
    index_failed_ = true;
    return Status::IoError(fmt::format("index write failed: {}", st.ToString()));
  }
  return Status::Ok();
}

Status StoreImpl::evict_to_locked(uint64_t budget) {
  using Item = std::pair<double, BlockKey>;
  auto cmp = [](const Item& a, const Item& b) { return a.first > b.first; };
  std::priority_queue<Item, std::vector<Item>, decltype(cmp)> leaves(cmp);
  std::unordered_map<BlockKey, uint32_t, BlockKeyHash> children;
  uint64_t stored;
  {
    std::shared_lock l(map_mu_);
    stored = stored_bytes_;
    if (stored <= budget) return Status::Ok();
    for (const auto& [k, e] : map_) {
      children[k] = e.children;
      if (e.children == 0) leaves.push({eviction_score(e), k});
    }
  }
  std::vector<BlockKey> victims;
  while (stored > budget && !leaves.empty()) {
    const BlockKey k = leaves.top().second;
    leaves.pop();
    BlockEntry e;
    {
      std::shared_lock l(map_mu_);
      e = map_.at(k);
    }
    victims.push_back(k);
    stored -= e.ref.length;
    auto c = children.find(e.ref.parent);
    if (c != children.end() && c->second > 0 && --c->second == 0) {
      std::shared_lock l(map_mu_);
      leaves.push({eviction_score(map_.at(e.ref.parent)), e.ref.parent});
    }
  }
  TROVE_RETURN_IF_ERROR(delete_entries_locked(victims));
  evictions_ += victims.size();
  return compact_locked();
}

Status StoreImpl::evict_to(uint64_t bytes) {
  if (opt_.read_only) return Status::FailedPrecondition("the store is open read-only; eviction needs the writer");
  std::lock_guard w(write_mu_);
  return evict_to_locked(bytes);
}

Status StoreImpl::evict_if(const std::function<bool(const BlockEntry&)>& pick) {
  if (opt_.read_only) return Status::FailedPrecondition("the store is open read-only; eviction needs the writer");
  std::lock_guard w(write_mu_);
  // Leaves first, repeatedly, so a picked parent goes only after its children (a child is never
  // orphaned); a picked block whose child is not picked stays.
  for (;;) {
    std::vector<BlockKey> victims;
    {
      std::shared_lock l(map_mu_);
      for (const auto& [k, e] : map_) {
        if (e.children == 0 && pick(e)) victims.push_back(k);
      }
    }
    if (victims.empty()) break;
    TROVE_RETURN_IF_ERROR(delete_entries_locked(victims));
    evictions_ += victims.size();
  }
  return compact_locked();
}

Status StoreImpl::compact_locked() {
  if (index_failed_) return Status::IoError(fmt::format("the index of '{}' failed earlier; reopen the store", dir_));
  std::vector<uint32_t> candidates;
  {
    std::shared_lock l(map_mu_);
    for (const auto& [id, s] : segments_) {
      if (id == cur_seg_) continue;
      if (s.total_bytes == 0 || static_cast<double>(s.live_bytes) < opt_.compact_below_live_share * static_cast<double>(s.total_bytes)) {
        candidates.push_back(id);
      }
    }
  }
  for (uint32_t id : candidates) {
    std::vector<BlockEntry> live;
    {
      std::shared_lock l(map_mu_);
      for (const auto& [k, e] : map_) {
        if (e.ref.segment == id) live.push_back(e);
      }
    }
    auto fd = segment_fd(id, opt_.direct_io);
    std::vector<BlockEntry> moved;
    for (auto& e : live) {
      if (!fd) break;
      std::vector<uint8_t> bytes(e.ref.length);
      if (::pread(fd->get(), bytes.data(), bytes.size(), static_cast<off_t>(e.ref.offset)) != static_cast<ssize_t>(bytes.size())) {
        // O_DIRECT fds need aligned buffers; fall back to a buffered read of the same range.
        int bfd = ::open(fmt::format("{}/segments/{}", dir_, segment_name(id)).c_str(), O_RDONLY | O_CLOEXEC);
        const bool ok = bfd >= 0 && ::pread(bfd, bytes.data(), bytes.size(), static_cast<off_t>(e.ref.offset)) ==
                                        static_cast<ssize_t>(bytes.size());
        if (bfd >= 0) ::close(bfd);
        if (!ok) continue;
      }
      if (cur_off_ > 0 && cur_off_ + bytes.size() > opt_.segment_bytes) TROVE_RETURN_IF_ERROR(start_segment());
      if (::pwrite(cur_fd_, bytes.data(), bytes.size(), static_cast<off_t>(cur_off_)) != static_cast<ssize_t>(bytes.size())) {
        return Status::IoError(fmt::format("compaction could not write: {}", errno_text()));
      }
      e.ref.segment = cur_seg_;
      e.ref.offset = cur_off_;
      cur_off_ += bytes.size();
      moved.push_back(e);
    }
    if (moved.size() != live.size()) {
      log::warn(kComponent, "compaction of segment {} could not move {} blocks; keeping the segment", id,
                live.size() - moved.size());
      continue;
    }
    if (!moved.empty() && ::fdatasync(cur_fd_) != 0) return Status::IoError("fsync failed during compaction");
    rocksdb::WriteBatch wb;
    for (const auto& e : moved) wb.Put(detail::index_key(e.ref.key), detail::encode_entry(e));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    if (rocksdb::Status s = db_->Write(wo, &wb); !s.ok()) {
      index_failed_ = true;
      return Status::IoError(s.ToString());
    }
    std::string path;
    {
      std::unique_lock l(map_mu_);
      for (const auto& e : moved) {
        auto it = map_.find(e.ref.key);
        if (it != map_.end()) it->second.ref = e.ref;
      }
      auto& cur = segments_[cur_seg_];
      for (const auto& e : moved) cur.live_bytes += e.ref.length;
      cur.total_bytes = cur_off_;
      path = segments_[id].path;
      segments_.erase(id);  // readers holding its fd keep reading the unlinked file
    }
    ::unlink(path.c_str());
    ++compactions_;
  }
  return Status::Ok();
}

Status StoreImpl::compact() {
  if (opt_.read_only) return Status::FailedPrecondition("the store is open read-only; compaction needs the writer");
  std::lock_guard w(write_mu_);
  return compact_locked();
}

Status StoreImpl::verify(const std::function<void(const BlockEntry&, const Status&)>& bad) {
  std::vector<BlockEntry> all;
  TROVE_RETURN_IF_ERROR(for_each_entry([&](const BlockEntry& e) { all.push_back(e); }));
  for (size_t i = 0; i < all.size(); i += 16) {
    const size_t n = std::min<size_t>(16, all.size() - i);
    std::vector<BlockRef> refs;
    std::vector<std::vector<uint8_t>> bufs(n);
    std::vector<std::span<uint8_t>> spans;
    for (size_t k = 0; k < n; ++k) {
      refs.push_back(all[i + k].ref);
      bufs[k].resize(all[i + k].ref.raw_size);
      spans.emplace_back(bufs[k]);
    }
    auto st = read(refs, spans);
    for (size_t k = 0; k < n; ++k) {
      if (!st[k].ok()) bad(all[i + k], st[k]);
    }
  }
  return Status::Ok();
}

Result<BlockEntry> StoreImpl::entry(const BlockKey& key) {
  std::shared_lock l(map_mu_);
  auto it = map_.find(key);
  if (it == map_.end()) return Status::NotFound(fmt::format("block {} is not in the store '{}'", key.hex(), dir_));
  return it->second;
}

Result<std::vector<int32_t>> StoreImpl::token_ids(const BlockKey& key) {
  auto e = entry(key);
  if (!e.ok()) return e.status();
  std::string path;
  {
    std::shared_lock l(map_mu_);
    auto it = segments_.find(e->ref.segment);
    if (it == segments_.end()) return Status::NotFound(fmt::format("segment {} is gone", e->ref.segment));
    path = it->second.path;
  }
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Status::IoError(fmt::format("cannot open '{}': {}", path, errno_text()));
  std::vector<uint8_t> rec(e->ref.length);
  if (::pread(fd.get(), rec.data(), rec.size(), static_cast<off_t>(e->ref.offset)) != static_cast<ssize_t>(rec.size())) {
    return Status::IoError(fmt::format("cannot read block {} from '{}'", key.hex(), path));
  }
  return detail::decode_token_ids(rec, key, e->ref.checksum);
}

Status StoreImpl::for_each_entry(const std::function<void(const BlockEntry&)>& fn) {
  std::vector<BlockEntry> copy;
  {
    std::shared_lock l(map_mu_);
    copy.reserve(map_.size());
    for (const auto& [k, e] : map_) copy.push_back(e);
  }
  for (const auto& e : copy) fn(e);
  return Status::Ok();
}

Stats StoreImpl::stats() {
  Stats s;
  {
    std::shared_lock l(map_mu_);
    s.blocks = map_.size();
    s.stored_bytes = stored_bytes_;
    s.logical_bytes = logical_bytes_;
    for (const auto& [id, seg] : segments_) s.segment_bytes += seg.total_bytes;
  }
  s.hits = hits_;
  s.misses = misses_;
  s.page_cache_reads = page_cache_reads_;
  s.direct_reads = direct_reads_;
  s.lookups = lookups_;
  s.inserts = inserts_;
  {
    std::lock_guard q(q_mu_);
    s.enqueued = enqueued_;
    s.processed = processed_;
  }
  s.index_reopens = index_reopens_;
  s.duplicate_inserts = dups_;
  s.dropped_inserts = dropped_;
  s.failed_inserts = failed_;
  s.corrupt_blocks = corrupt_;
  s.evictions = evictions_;
  s.compactions = compactions_;
  return s;
}

}  // namespace

Result<std::unique_ptr<Store>> Store::open(const std::string& dir, const Options& options) {
  static_assert(std::endian::native == std::endian::little, "the store format is little-endian");
  auto s = std::make_unique<StoreImpl>(dir, options);
  TROVE_RETURN_IF_ERROR(s->open());
  return std::unique_ptr<Store>(std::move(s));
}

}  // namespace trove::kv
