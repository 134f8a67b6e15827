// engine/runtime/l2_warm_plan.h — which weights a decode step reads into the GPU's L2 cache ahead of
// their matvecs, and beside which dispatch (docs/engine.md, "L2 warm-ups"; the op is
// kernels/ops/l2_warm.h). A measurement tool: off by default, set by TROVE_L2_WARM.
//
// A plan is a list of items AT:WHAT[MB] recorded in every layer of a decode step: beside the dispatch
// AT — rope (the q/k norm + RoPE + KV write), attn (decode attention), o, gu (gate/up, or the MoE FFN),
// down — read WHAT — o, gu (gate and up, the same share of each), down, or qkv (the next layer's) —
// MB megabytes of it (the whole weight when absent), the next item of the layer on the same weight
// continuing where the last one stopped.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace trove::engine {

enum WarmAt : uint8_t { kWarmRope, kWarmAttn, kWarmO, kWarmGu, kWarmDown };
enum WarmWhat : uint8_t { kWarmWo, kWarmWgu, kWarmWdown, kWarmWqkv, kWarmWhats };

struct L2WarmItem {
  WarmAt at;
  WarmWhat what;
  uint64_t bytes;  // 0: the whole weight (what is left of it)
};

// TROVE_L2_WARM's value: "none" (an empty plan) or AT:WHAT[MB],...; a bad item is an InvalidArgument
// naming it and the grammar.
Result<std::vector<L2WarmItem>> parse_l2_warm(std::string_view spec);

}  // namespace trove::engine
