// Plain C++ reference for the paged flash attention kernels (issue 8): causal, grouped-query
// attention over a paged KV pool, computed with an online (flash-style) softmax in double. The
// decode kernel (one query token per sequence) and the prefill kernel (many query tokens starting at
// a position, so a cached prefix can already be in the pool) are both checked against it.
//
// Pool layout: kernels/kv_layout.h (kv::KvLayout), one f16 array of n_blocks blocks; a block holds
//   block_size token slots of one sequence, K first then V, each [kv_head][slot][head_dim]. The
//   offsets below equal KvLayout::k_index / v_index (a test checks it).
//   A sequence's token at position p lives in physical block block_table[p / block_size], slot
//   p % block_size.
// Queries/outputs are f32 [tokens][n_heads][head_dim]. Query head h reads KV head
// h / (n_heads / n_kv_heads). Query token i of a sequence is at position start_pos + i and attends
// to positions 0 .. start_pos + i inclusive. Scores are scaled by `scale` (1/sqrt(head_dim) usually).
#pragma once

#include <cstdint>
#include <span>

#include "common/status.h"
#include "kernels/quant/quant.h"

namespace trove::kernels::ref {

struct PagedKvShape {
  int64_t n_blocks = 0;
  int64_t block_size = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t half_block() const { return block_size * n_kv_heads * head_dim; }  // K (or V) of one block
  int64_t elements() const { return n_blocks * 2 * half_block(); }
  int64_t k_offset(int64_t block, int64_t slot, int64_t head) const {
    return block * 2 * half_block() + (head * block_size + slot) * head_dim;
  }
  int64_t v_offset(int64_t block, int64_t slot, int64_t head) const {
    return k_offset(block, slot, head) + half_block();
  }
};

struct AttentionSequence {
  std::span<const int32_t> block_table;  // logical block -> physical block in the pool
  int64_t start_pos = 0;                 // position of the first query token
  int64_t n_tokens = 0;                  // query tokens (1 for decode)
  std::span<const float> q;              // n_tokens * n_heads * head_dim
  std::span<float> out;                  // same size as q
};

// Runs every sequence. Errors (named) for: n_heads not a multiple of n_kv_heads, a block table too
// short for start_pos + n_tokens positions, a physical block id outside the pool, wrong sizes.
Status paged_attention(const PagedKvShape& shape, std::span<const quant::f16_bits> pool, int64_t n_heads,
                       float scale,
                       std::span<const AttentionSequence> seqs);

}  // namespace trove::kernels::ref
