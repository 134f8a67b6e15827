#include "engine/runtime/block_pool.h"

#include "common/status.h"

namespace trove::engine {

BlockPool::BlockPool(uint32_t blocks) : refs_(blocks, 0) {
  free_.reserve(blocks);
  for (uint32_t b = blocks; b > 0; --b) free_.push_back(b - 1);  // block 0 is handed out first
}

std::optional<uint32_t> BlockPool::allocate() {
  if (free_.empty()) return std::nullopt;
  const uint32_t b = free_.back();
  free_.pop_back();
  refs_[b] = 1;
  return b;
}

void BlockPool::retain(uint32_t block) {
  TROVE_CHECK(block < refs_.size() && refs_[block] > 0);
  ++refs_[block];
}

void BlockPool::release(uint32_t block) {
  TROVE_CHECK(block < refs_.size() && refs_[block] > 0);
  if (--refs_[block] == 0) free_.push_back(block);
}

}  // namespace trove::engine
