// bench/kernels/bench_timing.h — what every section of bench_kernels measures with.
//
// time_reps: GPU microseconds per repetition of `record`, `reps` repetitions in one submission with a
// barrier after each (as dependent steps run); wall clock where the queue has no timestamps. The
// two-argument form gets the repetition's index (to rotate through copies of the data); the plain
// form first runs one warm-up submission (pipelines, caches).
// filled: a device buffer of at least `bytes` (rounded up to whole words, 16 at least) with every
// 32-bit word set to `word` (default: two f16 ones).
#pragma once

#include <cstdint>
#include <functional>

#include "common/status.h"
#include "kernels/vk/runtime.h"

namespace trove::bench {

Result<double> time_reps(vk::Device& dev, int reps, const std::function<Status(vk::CommandStream&, int)>& record);
Result<double> time_reps(vk::Device& dev, int reps, const std::function<Status(vk::CommandStream&)>& record);
Result<vk::Buffer> filled(vk::Device& dev, uint64_t bytes, uint32_t word = 0x3c003c00u);

}  // namespace trove::bench
