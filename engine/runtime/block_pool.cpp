#include "engine/runtime/block_pool.h"

#include "common/status.h"

namespace trove::engine {

BlockPool::BlockPool(uint32_t blocks) : refs_(blocks, 0), keyed_(blocks, false), key_of_(blocks), lru_pos_(blocks) {
  free_.reserve(blocks);
  for (uint32_t b = blocks; b > 0; --b) free_.push_back(b - 1);  // block 0 is handed out first
}

void BlockPool::forget(uint32_t block) {
  if (!keyed_[block]) return;
  by_key_.erase(key_of_[block]);
  keyed_[block] = false;
  key_of_[block] = kv::BlockKey{};
}

std::optional<uint32_t> BlockPool::allocate() {
  uint32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    // Only when nothing is free: a cached block may be asked for again, so it stays as long as possible.
    b = lru_.front();
    lru_.pop_front();
    forget(b);
    ++evictions_;
  } else {
    return std::nullopt;
  }
  refs_[b] = 1;
  return b;
}

void BlockPool::retain(uint32_t block) {
  TROVE_CHECK(block < refs_.size());
  if (refs_[block] == 0) {
    TROVE_CHECK(keyed_[block]);  // only a cached block may be revived
    lru_.erase(lru_pos_[block]);
  }
  ++refs_[block];
}

void BlockPool::release(uint32_t block) {
  TROVE_CHECK(block < refs_.size() && refs_[block] > 0);
  if (--refs_[block] != 0) return;
  if (keyed_[block]) {
    lru_pos_[block] = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

bool BlockPool::register_key(uint32_t block, const kv::BlockKey& key) {
  TROVE_CHECK(block < refs_.size() && refs_[block] > 0);
  if (keyed_[block] || by_key_.count(key)) return false;
  by_key_.emplace(key, block);
  keyed_[block] = true;
  key_of_[block] = key;
  return true;
}

std::optional<uint32_t> BlockPool::find(const kv::BlockKey& key) const {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return std::nullopt;
  return it->second;
}

}  // namespace trove::engine
