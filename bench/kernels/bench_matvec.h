// bench/kernels/bench_matvec.h — the decode matvec rows of bench_kernels (ops::Matvec at the Qwen3-8B
// and Qwen3-30B-A3B decode shapes, batch 1/2/4/8, Q4_K and Q6_K; the 8B's qkv and gate+up Q4_K, down
// and head Q6_K rows each followed by the same call in the q8 and q8p forms, label suffixes " q8" and
// " q8p") and the bandwidth ceiling every
// percentage of the table is taken against (a large device-to-device copy, measured in the same run).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/vk/runtime.h"

namespace trove::bench {

struct KernelRow {
  std::string op, shape;
  double us = 0, gbs = 0, tflops = 0;
};

// Device-to-device copy bandwidth: bytes read + bytes written per second (GB/s) of vkCmdCopyBuffer
// over `bytes` (1 GiB, or less where the device cannot hold it), timed with GPU timestamps.
Result<double> measure_copy_gbs(vk::Device& dev, uint64_t bytes, int reps);

struct MatvecBenchOptions {
  int reps = 20;
  bool quick = false;   // tiny shapes (a CPU device)
  bool sweep = false;   // also every work split (rows per group × workgroup size) at batch 1 and 8
  std::function<bool(const std::string& label)> wanted;  // label = "<op> <shape>"; null = all
};

// Appends one row per (shape, type, batch): µs per call (GPU timestamps, weights rotated over enough
// copies that the GPU's L2 cannot hold them), GB/s = weight bytes read / time, TFLOP/s.
Status bench_matvec(vk::Device& dev, const MatvecBenchOptions& opts, std::vector<KernelRow>& rows);

}  // namespace trove::bench
