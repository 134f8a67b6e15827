// kernels/ref/moe_ref.h — plain C++ reference of the MoE routing plan (kernels/ops/moe_ffn.h,
// MoePlanLayout; built on the GPU by kernels/shaders/moe_plan.glsl). The routing itself is
// ref::moe_route (layer_ref.h), the expert FFN ref::moe_ffn (matmul_ref.h).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace trove::kernels::ref {

// The (token, j) pairs (pair = token * k + j) of a step sorted by expert into slots, stably.
struct MoePlan {
  std::vector<uint32_t> offsets;    // [n_expert + 1]: slots of expert e are offsets[e] .. offsets[e+1]-1
  std::vector<uint32_t> slot_pair;  // [pairs]: the pair in a slot; an expert's pairs in increasing order
  std::vector<uint32_t> pair_slot;  // [pairs]: the inverse
  std::vector<uint32_t> row_ids;    // [pairs]: the token of a slot
  // Work entries: {expert, first slot, count}, count <= slots_per_entry, experts in increasing order,
  // each expert's slots cut into entries from its first slot on.
  std::vector<std::array<uint32_t, 3>> entries;
};

// ids: [tokens][k] expert ids, each < n_expert.
MoePlan moe_plan(std::span<const uint32_t> ids, uint32_t tokens, uint32_t k, uint32_t n_expert,
                 uint32_t slots_per_entry);

}  // namespace trove::kernels::ref
