// engine/runtime/block_pool.h — bookkeeping of the GPU KV pool's blocks (host side, no Vulkan).
//
// Contract: the pool has a fixed number of physical blocks, each holding `block_tokens` positions of
// one sequence for every layer. A block is free or referenced by one or more sequences (reference
// count); sequences that share a prefix can point at the same physical blocks. allocate() takes a
// free block with count 1; retain() adds a reference; release() drops one and frees the block at 0.
// A block that is written while shared must first be copied (copy-on-write is the caller's job:
// shared() says when). Not thread-safe: the engine's step thread owns it.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace trove::engine {

class BlockPool {
 public:
  explicit BlockPool(uint32_t blocks);

  uint32_t total() const { return static_cast<uint32_t>(refs_.size()); }
  uint32_t free_count() const { return static_cast<uint32_t>(free_.size()); }
  uint32_t used() const { return total() - free_count(); }

  std::optional<uint32_t> allocate();
  void retain(uint32_t block);
  void release(uint32_t block);
  uint32_t refs(uint32_t block) const { return refs_[block]; }
  bool shared(uint32_t block) const { return refs_[block] > 1; }

 private:
  std::vector<uint32_t> refs_;
  std::vector<uint32_t> free_;  // a stack: the most recently freed block is reused first
};

}  // namespace trove::engine
