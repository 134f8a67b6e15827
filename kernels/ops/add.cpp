#include "kernels/ops/add.h"

#include <fmt/format.h>

namespace trove::ops {
namespace {
constexpr uint32_t kLocal = 256;     // local_size_x of add_f32.comp
constexpr uint32_t kMaxRowGroups = 65535;  // the minimum maxComputeWorkGroupCount[0] Vulkan guarantees
struct Push { uint32_t n, row_groups; };
}  // namespace

Result<ResidualAdd> ResidualAdd::create(vk::Device& dev) {
  auto p = dev.pipeline({"add_f32", {}, sizeof(Push), 3, kLocal});
  if (!p.ok()) return p.status();
  ResidualAdd op;
  op.pipeline_ = std::move(*p);
  return op;
}

Status ResidualAdd::record(vk::CommandStream& s, const vk::Buffer& a, const vk::Buffer& b, const vk::Buffer& out,
                           uint32_t n) const {
  uint64_t need = uint64_t{n} * 4;
  if (a.size() < need || b.size() < need || out.size() < need) {
    return Status::InvalidArgument(fmt::format("residual add of {} floats needs {} bytes per buffer; got a={} b={} out={}",
                                               n, need, a.size(), b.size(), out.size()));
  }
  uint32_t groups = (n + kLocal - 1) / kLocal;
  uint32_t gx = std::min(groups, kMaxRowGroups);
  uint32_t gy = (groups + gx - 1) / std::max(gx, 1u);
  Push push{n, gx};
  vk::BufferRange bufs[3] = {a, b, out};
  return s.dispatch(pipeline_, bufs, &push, sizeof(push), gx, gy);
}

}  // namespace trove::ops
