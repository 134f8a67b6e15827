#include "kernels/ops/attention.h"

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push { uint32_t block_size, n_kv_heads, head_dim, n_heads, start_pos, n_tokens; float scale; };
}  // namespace

Result<PagedAttention> PagedAttention::create(vk::Device& dev) {
  auto p = dev.pipeline({"attention_paged", {}, sizeof(Push), 4, 64});
  if (!p.ok()) return p.status();
  PagedAttention op;
  op.pipeline_ = std::move(*p);
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
  Push push{static_cast<uint32_t>(sh.block_size), static_cast<uint32_t>(sh.n_kv_heads),
            static_cast<uint32_t>(sh.head_dim), c.n_heads, c.start_pos, c.n_tokens, c.scale};
  vk::BufferRange bufs[4] = {pool, block_table, q, out};
  return s.dispatch(pipeline_, bufs, &push, sizeof(push), c.n_heads, c.n_tokens);
}

}  // namespace trove::ops
