// kernels/ops/sample.h — stochastic token sampling on the GPU (greedy is ops::Argmax).
// Contract: logits f32 [rows, ncols] → out uint32 [rows]. Per row: temperature > 0, top-k in 1..64,
// min-p in [0,1), top-p in (0,1]; row r uses the uniform draw ref::sample_uniform(seed, r), so a run is
// reproducible from its seed. The reference (kernels/ref/sample_ref.h) computes the exact probability
// of every token under the same rules. Two forms, the same draws: rows of >= kWorkgroupMinCols logits
// take one workgroup per row (sample_wg_f32.comp: k passes of the whole workgroup over the row; at
// most 65535 rows a call), shorter rows one invocation per row (sample_f32.comp, serial O(k² · ncols));
// TROVE_SAMPLE=rows keeps every row on the per-row form.
#pragma once

#include "kernels/vk/runtime.h"

namespace trove::ops {

struct SamplingParams {
  float temperature = 1.0f;
  uint32_t top_k = 40;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint32_t seed = 0;
};

enum class SamplerForm { kAuto, kPerRow, kWorkgroup };  // kAuto: by row length (tests force one)

// Decode replay: the draw's seed read from buffer[index] (uint32, written by the host before each
// submission) instead of SamplingParams::seed, so that a recorded step serves later tokens.
struct SamplerSeed {
  vk::BufferRange buffer;
  uint32_t index = 0;
};

class Sampler {
 public:
  static Result<Sampler> create(vk::Device& dev);
  Status record(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange out, uint32_t rows, uint32_t ncols,
                const SamplingParams& p, SamplerForm form = SamplerForm::kAuto, const SamplerSeed& seed = {}) const;
  static constexpr uint32_t kWorkgroupLocal = 256, kWorkgroupMinCols = 4096;

 private:
  vk::Pipeline pipeline_[2];   // sample_f32: one invocation a row [seed pushed, seed from a buffer]
  vk::Pipeline workgroup_[2];  // sample_wg_f32: kWorkgroupLocal invocations a row
  bool per_row_only_ = false;  // TROVE_SAMPLE=rows: kAuto always takes the per-row form (A/B runs)
};

}  // namespace trove::ops
