// engine/runtime/block_pool.h — bookkeeping of the GPU KV pool's blocks (host side, no Vulkan).
//
// Contract: the pool has a fixed number of physical blocks, each holding `block_tokens` positions of
// one sequence for every layer. A block is free, referenced by one or more sequences (reference
// count), or cached: unreferenced but kept resident because its content is registered under a prefix
// key (see register_key()). Sequences that share a prefix point at the same physical blocks.
//  - allocate() takes a free block with count 1; when none is free it evicts the least recently
//    released cached block (its key is forgotten) and hands that out.
//  - retain() adds a reference (also to a cached, unreferenced block: it leaves the LRU list);
//    release() drops one; at 0 a registered block becomes cached, an unregistered one free.
//  - available() = free + cached: how many allocate() calls can succeed.
//  - A block that is written while shared or registered must first be copied (copy-on-write is the
//    caller's job: must_copy() says when). A registered block's content never changes.
// Not thread-safe: the engine's step thread owns it.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kvstore/store.h"

namespace trove::engine {

class BlockPool {
 public:
  explicit BlockPool(uint32_t blocks);

  uint32_t total() const { return static_cast<uint32_t>(refs_.size()); }
  uint32_t free_count() const { return static_cast<uint32_t>(free_.size()); }
  uint32_t cached_count() const { return static_cast<uint32_t>(lru_.size()); }
  uint32_t available() const { return free_count() + cached_count(); }
  uint32_t used() const { return total() - available(); }  // referenced by some sequence
  uint32_t registered() const { return static_cast<uint32_t>(by_key_.size()); }
  uint64_t evictions() const { return evictions_; }

  std::optional<uint32_t> allocate();
  void retain(uint32_t block);
  void release(uint32_t block);
  uint32_t refs(uint32_t block) const { return refs_[block]; }
  bool shared(uint32_t block) const { return refs_[block] > 1; }
  bool is_registered(uint32_t block) const { return keyed_[block]; }
  bool must_copy(uint32_t block) const { return shared(block) || is_registered(block); }

  // Registers a referenced block's (full, final) content under `key`. False, and nothing changes, when
  // the key already names a block or the block already has a key.
  bool register_key(uint32_t block, const kv::BlockKey& key);
  // The block registered under `key`, if resident.
  std::optional<uint32_t> find(const kv::BlockKey& key) const;

 private:
  void forget(uint32_t block);

  std::vector<uint32_t> refs_;
  std::vector<uint32_t> free_;  // a stack: the most recently freed block is reused first
  std::vector<bool> keyed_;
  std::vector<kv::BlockKey> key_of_;
  std::unordered_map<kv::BlockKey, uint32_t, kv::BlockKeyHash> by_key_;
  std::list<uint32_t> lru_;  // cached (registered, unreferenced) blocks, least recently released first
  std::vector<std::list<uint32_t>::iterator> lru_pos_;
  uint64_t evictions_ = 0;
};

}  // namespace trove::engine
