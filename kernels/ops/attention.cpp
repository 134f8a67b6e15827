#include "kernels/ops/attention.h"

#include <algorithm>

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push {
  uint32_t block_size, n_kv_heads, head_dim, n_heads, start_pos, n_tokens;
  float scale;
  uint32_t n_splits, split_len;
};
struct CombinePush { uint32_t head_dim, n_heads, n_splits; };
}  // namespace

Result<PagedAttention> PagedAttention::create(vk::Device& dev) {
  auto p = dev.pipeline({"attention_paged", {}, sizeof(Push), 5, 64});
  if (!p.ok()) return p.status();
  auto c = dev.pipeline({"attention_combine", {}, sizeof(CombinePush), 2, 64});
  if (!c.ok()) return c.status();
  auto scratch = dev.buffer(uint64_t{kMaxSplitTokens} * kMaxSplitHeads * kMaxSplits * (256 + 2) * 4);
  if (!scratch.ok()) return scratch.status();
  PagedAttention op;
  op.pipeline_ = std::move(*p);
  op.combine_ = std::move(*c);
  op.scratch_ = std::move(*scratch);
  return op;
}

Status PagedAttention::record(vk::CommandStream& s, const AttentionCall& c, vk::BufferRange pool,
                              vk::BufferRange block_table, vk::BufferRange q, vk::BufferRange out) const {
  const auto& sh = c.shape;
  if (sh.n_blocks <= 0 || sh.block_size <= 0 || sh.n_kv_heads <= 0 || sh.head_dim <= 0 ||
      sh.head_dim % 2 != 0 || sh.head_dim > 256) {
    return Status::InvalidArgument(fmt::format(
        "attention: pool shape blocks {} block_size {} kv_heads {} head_dim {} invalid (positive, head_dim "
        "even and <= 256)", sh.n_blocks, sh.block_size, sh.n_kv_heads, sh.head_dim));
  }
  if (c.n_heads == 0 || c.n_heads % sh.n_kv_heads != 0 || c.n_tokens == 0 || c.n_tokens > 65535 ||
      c.n_heads > 65535) {
    return Status::InvalidArgument(fmt::format(
        "attention: {} query heads over {} KV heads, {} tokens: heads must be a positive multiple of the KV "
        "heads and tokens in 1..65535", c.n_heads, sh.n_kv_heads, c.n_tokens));
  }
  const uint64_t pool_bytes = static_cast<uint64_t>(sh.elements()) * 2;
  const uint64_t blocks = (uint64_t{c.start_pos} + c.n_tokens + sh.block_size - 1) / sh.block_size;
  const uint64_t qbytes = uint64_t{c.n_tokens} * c.n_heads * sh.head_dim * 4;
  if (pool.size < pool_bytes || block_table.size < blocks * 4 ||
      q.size < qbytes || out.size < qbytes) {
    return Status::InvalidArgument(fmt::format(
        "attention: buffers too small: KV pool {} (need {}), block table {} (need {} entries), q {} out {} "
        "(need {})", pool.size, pool_bytes, block_table.size, blocks, q.size,
        out.size, qbytes));
  }
  // Split-K for short queries over a long KV: slices of >= 256 keys (multiples of the 64-key tile).
  const uint32_t keys = c.start_pos + c.n_tokens;
  uint32_t n_splits = 1, split_len = (keys + 63) / 64 * 64;
  if (c.n_tokens <= kMaxSplitTokens && c.n_heads <= kMaxSplitHeads && keys > 512) {
    split_len = std::max<uint32_t>(256, ((keys + kMaxSplits - 1) / kMaxSplits + 63) / 64 * 64);
    n_splits = (keys + split_len - 1) / split_len;
  }
  Push push{static_cast<uint32_t>(sh.block_size), static_cast<uint32_t>(sh.n_kv_heads),
            static_cast<uint32_t>(sh.head_dim), c.n_heads, c.start_pos, c.n_tokens, c.scale, n_splits, split_len};
  vk::BufferRange bufs[5] = {pool, block_table, q, out, scratch_};
  TROVE_RETURN_IF_ERROR(s.dispatch(pipeline_, bufs, &push, sizeof(push), c.n_heads, c.n_tokens, n_splits));
  if (n_splits == 1) return Status::Ok();
  s.barrier();
  CombinePush cp{static_cast<uint32_t>(sh.head_dim), c.n_heads, n_splits};
  vk::BufferRange cb[2] = {scratch_, out};
  TROVE_RETURN_IF_ERROR(s.dispatch(combine_, cb, &cp, sizeof(cp), c.n_heads, c.n_tokens));
  s.barrier();  // the next record() reuses the scratch
  return Status::Ok();
}

}  // namespace trove::ops
