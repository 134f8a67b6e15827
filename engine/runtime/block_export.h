// The KV store's write-behind, off the step's critical path.
//
// A step that completes KV blocks copies each one (all layers) from the GPU pool into a slot of a
// host staging buffer; the copy is short (the PCIe link), but taking the bytes out of the slot and
// queueing them in the store is host work of the same order as the step's own GPU time (8B, 25k
// tokens: 1.5 s of a 6.2 s cold prefill when the step did it itself). BlockExporter runs that part on a
// worker thread: the engine acquires free slots, records and waits for the GPU copies, hands the
// filled slots over and returns from the step; the worker copies each slot out, inserts it into the
// store and frees the slot. The engine waits only when every slot is still in the worker's hands.
// When the store's write queue is full the worker waits for room (up to a second a block, none while
// the store is stalled) rather than have the block dropped: the steps are then paced by the disk.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kvstore/store.h"

namespace trove::engine {

class BlockExporter {
 public:
  // One completed block, in staging slot `slot`.
  struct Block {
    uint32_t slot = 0;
    kv::BlockKey key, parent;
    std::string name_space;
    std::vector<int32_t> tokens;
  };
  struct Counters {
    uint64_t handed = 0;   // blocks handed over so far
    uint64_t done = 0;     // ... of them finished (queued, refused or duplicate), in hand-over order
    uint64_t queued = 0;   // blocks the store accepted into its write queue
    uint64_t dropped = 0;  // blocks the store refused (its queue full)
    double seconds = 0;       // worker time: slot → payload copies and inserts
    double wait_seconds = 0;  // worker time waiting for room in the store's write queue
  };
  struct Format {
    std::string fingerprint;
    uint32_t block_tokens = 0;
    uint16_t layers = 0;
  };

  // `host` is the mapped staging buffer: `slots` slots of `slot_bytes` each; it must outlive this.
  BlockExporter(std::shared_ptr<kv::Store> store, Format format, const uint8_t* host, uint64_t slot_bytes,
                uint32_t slots);
  ~BlockExporter();  // hands every block given so far to the store first
  BlockExporter(const BlockExporter&) = delete;
  BlockExporter& operator=(const BlockExporter&) = delete;

  uint32_t slots() const { return slots_; }
  uint8_t* slot_bytes_at(uint32_t slot) const;
  // Up to `want` free slots, at least one when want > 0: waits while the worker holds all of them.
  std::vector<uint32_t> acquire(size_t want);
  // Gives back slots that were acquired but not handed over (their GPU copy failed).
  void release(const std::vector<uint32_t>& slots);
  // Queues filled slots for the worker (the GPU copies into them have completed).
  void hand_over(std::vector<Block> blocks);
  // Returns once every block handed over so far is in the store's queue (or refused by it).
  void drain();
  Counters counters() const;

 private:
  void run();

  std::shared_ptr<kv::Store> store_;
  Format format_;
  const uint8_t* host_;
  uint64_t slot_bytes_;
  uint32_t slots_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // free slots, work, idle, stop: one variable, every waiter re-checks
  std::vector<uint32_t> free_;
  std::deque<Block> work_;
  bool stop_ = false;
  Counters counters_;
  std::thread worker_;
};

}  // namespace trove::engine
