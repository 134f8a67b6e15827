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

Result<MoeRoute> MoeRoute::create(vk::Device& dev) {
  auto p = dev.pipeline({"moe_route_f32", {}, 12, 3, 64});
  if (!p.ok()) return p.status();
  MoeRoute op;
  op.pipeline_ = std::move(*p);
  return op;
}

Status MoeRoute::record(vk::CommandStream& s, const vk::Buffer& logits, const vk::Buffer& ids, const vk::Buffer& weights,
                        uint32_t tokens, uint32_t n_experts, uint32_t k) const {
  if (k == 0 || k > 32 || k > n_experts)
    return Status::InvalidArgument(fmt::format("moe_route: top-k {} must be in 1..min(32, experts={})", k, n_experts));
  TROVE_RETURN_IF_ERROR(need("moe_route", "logits", logits, uint64_t{tokens} * n_experts * 4));
  TROVE_RETURN_IF_ERROR(need("moe_route", "ids", ids, uint64_t{tokens} * k * 4));
  TROVE_RETURN_IF_ERROR(need("moe_route", "weights", weights, uint64_t{tokens} * k * 4));
  struct { uint32_t n_experts, k, tokens; } push{n_experts, k, tokens};
  vk::BufferRange b[3] = {logits, ids, weights};
  return s.dispatch(pipeline_, b, &push, sizeof(push), (tokens + 63) / 64);
}

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
