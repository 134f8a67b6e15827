#include "kernels/ops/l2_warm.h"

#include <algorithm>

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push { uint32_t first, n, grid; };
constexpr uint32_t kMaxGrid = 65535;  // the minimum maxComputeWorkGroupCount[0] Vulkan guarantees
}  // namespace

Result<L2Warm> L2Warm::create(vk::Device& dev) {
  auto p = dev.pipeline({"l2_warm", {}, sizeof(Push), 2, kLocal});
  if (!p.ok()) return p.status();
  L2Warm op;
  op.pipeline_ = std::move(*p);
  return op;
}

uint32_t L2Warm::grid(uint64_t n_words) {
  const uint64_t per_group = uint64_t{kLocal} * kWordsPerInvocation;
  return static_cast<uint32_t>(std::clamp<uint64_t>((n_words + per_group - 1) / per_group, 1, kMaxGrid));
}

Status L2Warm::record(vk::CommandStream& s, vk::BufferRange range, uint64_t first_word, uint64_t n_words,
                      vk::BufferRange out) const {
  if (n_words == 0) return Status::Ok();
  const uint64_t words = range.size / 16;
  if (range.offset % 16 != 0 || first_word + n_words > words || first_word + n_words > UINT32_MAX) {
    return Status::InvalidArgument(fmt::format("L2 warm-up of 16-byte words [{}, {}) does not fit a range of {} bytes at "
                                               "offset {} (offset and size must be multiples of 16)",
                                               first_word, first_word + n_words, range.size, range.offset));
  }
  const uint32_t g = grid(n_words);
  if (out.size < uint64_t{g} * 4) {
    return Status::InvalidArgument(fmt::format("L2 warm-up of {} words writes {} workgroup words; out holds {} bytes",
                                               n_words, g, out.size));
  }
  Push push{static_cast<uint32_t>(first_word), static_cast<uint32_t>(n_words), g};
  vk::BufferRange bufs[2] = {range, out};
  return s.dispatch(pipeline_, bufs, &push, sizeof(push), g);
}

}  // namespace trove::ops
