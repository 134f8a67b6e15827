// bench/kernels/bench_moe.h — the MoE FFN rows of bench_kernels: kernels/ops/moe_ffn.h at the
// Qwen3-30B-A3B layer (hidden 2048, expert FFN 768, 128 experts, top-8; Q4_K gate/up, Q6_K or Q4_K
// down) for 1, 2, 4, 8 and 512 tokens: routing + plan from router logits, at <= 8 tokens the decode
// router from the residual stream (one dispatch, and the matvec + routing it replaced; GB/s of the f32
// router's 1 MiB), the expert-indexed gate/up +
// SwiGLU dispatch, down (+ weighted sum + residual add at <= 8 tokens; grouped down + scatter-combine
// above) and the two expert dispatches together; at 512 tokens also the grouped-GEMM prefill on the
// device's matmul path (cm2 / khr / tiled, TROVE_MATMUL forces one) with its TFLOP/s. The expert
// dispatches are timed in both kernel forms (MoeTuning: "staged" and, where the device has subgroup
// arithmetic, "direct"), the op name says which.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "bench/kernels/bench_matvec.h"

namespace trove::bench {

struct MoeBenchOptions {
  int reps = 20;
  bool quick = false;  // tiny shapes (a CPU device)
  bool sweep = false;  // also the direct form's work splits (rows per row group × workgroup), at 1 and 8 tokens
  std::function<bool(const std::string& label)> wanted;  // label = "<op> <shape>"; null = all
};

// Appends one row per (dispatch group, tokens, down type): µs per call (GPU timestamps). 16 routings
// (random distinct experts per token) cycle through the reps, so a rep's experts are not the previous
// rep's (the L2 holds ~20 experts' gate/up). GB/s = bytes of the distinct experts' rows the step needs
// / time (routing rows: the logits read).
Status bench_moe(vk::Device& dev, const MoeBenchOptions& opts, std::vector<KernelRow>& rows);

}  // namespace trove::bench
