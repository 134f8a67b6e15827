// kernels/kv_layout.h — layout of the paged KV pool shared by the attention op, the KV write op and
// the engine. Pure arithmetic, no Vulkan.
//
// Contract: the pool of one layer is an array of `num_blocks` blocks. A block holds `block_tokens`
// consecutive token positions of one sequence. Inside a block, K comes first, then V, each laid out
// [kv_head][token][head_dim] in f16 (2 bytes), so that one KV head's keys for a block are contiguous
// (what a paged attention workgroup reads). Byte offsets below are relative to the start of the
// layer's pool; a block table maps a sequence's logical block i to a physical block index.
#pragma once

#include <cstdint>

namespace trove::kv {

struct KvLayout {
  uint32_t block_tokens = 16;  // tokens per block (a parameter; power of two recommended)
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;

  uint64_t head_block_bytes() const { return uint64_t{block_tokens} * head_dim * 2; }
  uint64_t k_bytes() const { return head_block_bytes() * kv_heads; }
  uint64_t block_bytes() const { return 2 * k_bytes(); }  // K then V
  // Element index (in f16 units) within the layer pool.
  uint64_t k_index(uint32_t block, uint32_t head, uint32_t token, uint32_t d) const {
    return (uint64_t{block} * block_bytes() / 2) + (uint64_t{head} * block_tokens + token) * head_dim + d;
  }
  uint64_t v_index(uint32_t block, uint32_t head, uint32_t token, uint32_t d) const {
    return k_index(block, head, token, d) + k_bytes() / 2;
  }
};

}  // namespace trove::kv
