// kernels/ops/sample.h — stochastic token sampling on the GPU (greedy is ops::Argmax).
// Contract: logits f32 [rows, ncols] → out uint32 [rows]. Per row: temperature > 0, top-k in 1..64,
// min-p in [0,1), top-p in (0,1]; row r uses the uniform draw ref::sample_uniform(seed, r), so a run is
// reproducible from its seed. The reference (kernels/ref/sample_ref.h) computes the exact probability
// of every token under the same rules.
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

class Sampler {
 public:
  static Result<Sampler> create(vk::Device& dev);
  Status record(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange out, uint32_t rows, uint32_t ncols,
                const SamplingParams& p) const;
 private:
  vk::Pipeline pipeline_;
};

}  // namespace trove::ops
