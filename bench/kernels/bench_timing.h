// bench/kernels/bench_timing.h — what every section of bench_kernels measures with.
//
// time_reps: GPU microseconds per repetition of `record`, `reps` repetitions in one submission with a
// barrier after each (as dependent steps run); wall clock where the queue has no timestamps. The
// two-argument form gets the repetition's index (to rotate through copies of the data); the plain
// form first runs one warm-up submission (pipelines, caches).
// warm_clocks: keeps the GPU busy with device-to-device copies for `ms` of wall time, so that the rows
// after it run at the clocks a long job gets (a GPU idle before the process starts stays at low clocks
// for its first milliseconds of work: on the H200, `--only "moe router"` without it timed single
// dispatches 3–4× slow in some runs and its copy ceiling at 411 GB/s, a tenth of a warm one).
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
Status warm_clocks(vk::Device& dev, double ms);
Result<vk::Buffer> filled(vk::Device& dev, uint64_t bytes, uint32_t word = 0x3c003c00u);

}  // namespace trove::bench
