// bench/kernels/bench_chain.h — the "chain" rows of bench_kernels: what one dependent step of a
// decode-like chain costs (ops::ChainProbe), as one dispatch per step behind pipeline barriers against
// one dispatch whose workgroups meet at grid barriers, with and without the next step's weights
// streamed while a workgroup waits; and the dispatches without barriers (wrong results: what the
// launches cost without the drains). The question it answers: would a persistent decode kernel remove
// the latency of the ~230 dependent dispatches of a decode step (docs/performance.md)?
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "bench/kernels/bench_matvec.h"

namespace trove::bench {

struct ChainBenchOptions {
  int reps = 20;
  bool quick = false;                   // small shapes and grids of 1 (a CPU device)
  std::vector<uint32_t> grids = {132, 264};  // workgroups of 256 (the H200 has 132 SMs)
  std::function<bool(const std::string& label)> wanted;  // label = "<op> <shape>"; null = all
};

// One row per (weights a step, grid, mode): µs per step (a chain of 36 steps, GPU timestamps), GB/s =
// the step's weight bytes / its time. A grid whose workgroups were not all resident (a wait gave up)
// is an error naming the grid.
Status bench_chain(vk::Device& dev, const ChainBenchOptions& opts, std::vector<KernelRow>& rows);

}  // namespace trove::bench
