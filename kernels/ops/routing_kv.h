// kernels/ops/routing_kv.h — the KV-cache write on the GPU (MoE routing is kernels/ops/moe_ffn.h).
//   KvWrite   stores new K/V rows (f32 [tokens, kv_heads, head_dim]) as f16 into a layer's paged
//             pool (layout: kernels/kv_layout.h) at per-token slots (uint32 block*block_tokens+offset).
// Block copies pool <-> host go through vk::CommandStream::copy / Buffer::upload/download with
// byte ranges from KvLayout (block b occupies [b*block_bytes, (b+1)*block_bytes)).
#pragma once

#include "kernels/kv_layout.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

class KvWrite {
 public:
  static Result<KvWrite> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const kv::KvLayout& layout, const vk::Buffer& k, const vk::Buffer& v,
                const vk::Buffer& slots, const vk::Buffer& pool, uint32_t tokens, uint32_t pool_blocks) const;
 private:
  vk::Pipeline pipeline_;
};

}  // namespace trove::ops
