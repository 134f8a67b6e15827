// kernels/ops/attention.h — paged causal grouped-query attention on the GPU, one sequence per record().
//
// Contract: the KV pool is one f16 buffer in the layout of kernels/kv_layout.h (written by the KV
// write op; PagedKvShape in kernels/ref/attention_ref.h gives the same offsets), the
// block table is int32 (logical block -> physical block, covering start_pos + n_tokens positions),
// q/out are f32 [n_tokens][n_heads][head_dim]. Decode is n_tokens = 1; prefill uses start_pos > 0
// when a prefix is already in the pool. head_dim must be even and <= 256, n_heads a multiple of
// n_kv_heads. The block table contents are not validated on the GPU (the caller owns them; the
// reference checks them). record() only records; the caller submits. Checked against
// kernels/ref/attention_ref.h.
// Short queries over a long KV (decode: n_tokens <= 4, more than 512 keys) are split-K: up to 32
// workgroups per head each walk a slice of the keys into a scratch buffer the op owns, and a combine
// dispatch merges them. record() then ends with a barrier, because the next call reuses the scratch.
#pragma once

#include "kernels/ref/attention_ref.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

struct AttentionCall {
  kernels::ref::PagedKvShape shape;
  uint32_t n_heads = 0;
  uint32_t start_pos = 0;
  uint32_t n_tokens = 0;
  float scale = 1.0f;
};

class PagedAttention {
 public:
  static Result<PagedAttention> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const AttentionCall& call, vk::BufferRange pool,
                vk::BufferRange block_table, vk::BufferRange q, vk::BufferRange out) const;

  static constexpr uint32_t kMaxSplits = 32, kMaxSplitTokens = 4, kMaxSplitHeads = 64;

 private:
  vk::Pipeline pipeline_;
  vk::Pipeline combine_;
  vk::Buffer scratch_;  // split partials: [token][head][split][head_dim + 2] f32
};

}  // namespace trove::ops
