#include "kernels/ops/routing_kv.h"

#include <algorithm>

#include <fmt/format.h>

namespace trove::ops {
namespace {
Status need(const char* op, const char* what, const vk::Buffer& b, uint64_t bytes) {
  if (b.size() >= bytes) return Status::Ok();
  return Status::InvalidArgument(fmt::format("{}: buffer '{}' has {} bytes; the shape needs {}", op, what, b.size(), bytes));
}
}  // namespace

Result<KvWrite> KvWrite::create(vk::Device& dev) {
  auto p = dev.pipeline({"kv_write", {}, 16, 4, 256});
  if (!p.ok()) return p.status();
  KvWrite op;
  op.pipeline_ = std::move(*p);
  return op;
}

Status KvWrite::record(vk::CommandStream& s, const kv::KvLayout& L, const vk::Buffer& k, const vk::Buffer& v,
                       const vk::Buffer& slots, const vk::Buffer& pool, uint32_t tokens, uint32_t pool_blocks) const {
  if (L.head_dim % 2) return Status::InvalidArgument(fmt::format("kv_write: head_dim {} must be even", L.head_dim));
  uint64_t rows = uint64_t{tokens} * L.kv_heads * L.head_dim * 4;
  TROVE_RETURN_IF_ERROR(need("kv_write", "k", k, rows));
  TROVE_RETURN_IF_ERROR(need("kv_write", "v", v, rows));
  TROVE_RETURN_IF_ERROR(need("kv_write", "slots", slots, uint64_t{tokens} * 4));
  TROVE_RETURN_IF_ERROR(need("kv_write", "pool", pool, uint64_t{pool_blocks} * L.block_bytes()));
  uint64_t work = uint64_t{tokens} * L.kv_heads * (L.head_dim / 2);
  uint64_t groups = (work + 255) / 256;
  uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(groups, 65535));
  uint32_t gy = static_cast<uint32_t>((groups + gx - 1) / gx);
  struct { uint32_t tokens, kv_heads, head_dim, block_tokens; } push{tokens, L.kv_heads, L.head_dim, L.block_tokens};
  vk::BufferRange b[4] = {k, v, slots, pool};
  return s.dispatch(pipeline_, b, &push, sizeof(push), gx, gy);
}

}  // namespace trove::ops
