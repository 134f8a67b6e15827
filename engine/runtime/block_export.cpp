#include "engine/runtime/block_export.h"

#include <chrono>
#include <numeric>
#include <utility>

namespace trove::engine {

BlockExporter::BlockExporter(std::shared_ptr<kv::Store> store, Format format, const uint8_t* host,
                             uint64_t slot_bytes, uint32_t slots)
    : store_(std::move(store)), format_(std::move(format)), host_(host), slot_bytes_(slot_bytes), slots_(slots) {
  free_.resize(slots_);
  std::iota(free_.rbegin(), free_.rend(), 0u);  // slot 0 is taken first
  worker_ = std::thread([this] { run(); });
}

BlockExporter::~BlockExporter() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();  // the worker empties work_ before it stops
}

uint8_t* BlockExporter::slot_bytes_at(uint32_t slot) const {
  return const_cast<uint8_t*>(host_) + uint64_t{slot} * slot_bytes_;
}

std::vector<uint32_t> BlockExporter::acquire(size_t want) {
  std::vector<uint32_t> got;
  if (want == 0) return got;
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return !free_.empty(); });
  while (!free_.empty() && got.size() < want) {
    got.push_back(free_.back());
    free_.pop_back();
  }
  return got;
}

void BlockExporter::release(const std::vector<uint32_t>& slots) {
  {
    std::lock_guard l(mu_);
    free_.insert(free_.end(), slots.begin(), slots.end());
  }
  cv_.notify_all();
}

void BlockExporter::hand_over(std::vector<Block> blocks) {
  {
    std::lock_guard l(mu_);
    counters_.handed += blocks.size();
    for (Block& b : blocks) work_.push_back(std::move(b));
  }
  cv_.notify_all();
}

void BlockExporter::drain() {
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return counters_.done == counters_.handed; });
}

BlockExporter::Counters BlockExporter::counters() const {
  std::lock_guard l(mu_);
  return counters_;
}

void BlockExporter::run() {
  // Backpressure: a prefill can complete blocks faster than the store takes them (the 8B on the H200
  // makes ~1.2 GB/s of KV in 2048-token steps; the store took ~0.9 GB/s until it encoded in parallel,
  // and a slower disk still may), and a full store queue drops blocks — a prefix the next session or a restart would then compute again. So the worker
  // waits for room (holding its slot, so the steps wait for slots in turn) up to kRoomWait per block;
  // after a wait that timed out (a stalled disk) it stops waiting until a block fits at once again.
  constexpr std::chrono::milliseconds kRoomWait{1000};
  bool stalled = false;
  std::unique_lock l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !work_.empty(); });
    if (work_.empty()) return;  // stopping, nothing left
    Block b = std::move(work_.front());
    work_.pop_front();
    l.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    if (store_->wait_for_room(slot_bytes_, std::chrono::milliseconds{0})) {
      stalled = false;
    } else if (!stalled && !store_->wait_for_room(slot_bytes_, kRoomWait)) {
      stalled = true;
    }
    const auto t1 = std::chrono::steady_clock::now();
    const uint8_t* src = host_ + uint64_t{b.slot} * slot_bytes_;
    std::vector<uint8_t> payload(src, src + slot_bytes_);
    const kv::InsertResult r =
        store_->insert(b.key, b.parent, b.name_space, format_.fingerprint, format_.block_tokens, kv::PayloadDtype::kF16,
                       format_.layers, std::move(payload), b.tokens);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const double w = std::chrono::duration<double>(t1 - t0).count();
    l.lock();
    if (r == kv::InsertResult::kQueued) ++counters_.queued;
    if (r == kv::InsertResult::kDropped) ++counters_.dropped;
    counters_.seconds += s;
    counters_.wait_seconds += w;
    ++counters_.done;
    free_.push_back(b.slot);
    cv_.notify_all();
  }
}

}  // namespace trove::engine
