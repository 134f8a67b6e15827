// kernels/ops/add.h — residual add on the GPU: out[i] = a[i] + b[i] for n float32 elements.
//
// Contract: a, b, out are float32 buffers of at least n elements (out may be the same buffer as a for
// an in-place residual). record() only records into the stream; the caller submits. This op is the
// pattern the other ops follow: a small class owning its Pipeline, a record() that validates sizes
// and records one dispatch.
#pragma once

#include "kernels/vk/runtime.h"

namespace trove::ops {

class ResidualAdd {
 public:
  static Result<ResidualAdd> create(vk::Device& dev);
  Status record(vk::CommandStream& s, const vk::Buffer& a, const vk::Buffer& b, const vk::Buffer& out,
                uint32_t n) const;

 private:
  vk::Pipeline pipeline_;
};

}  // namespace trove::ops
