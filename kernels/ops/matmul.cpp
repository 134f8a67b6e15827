#include "kernels/ops/matmul.h"

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push { uint32_t rows, cols, batch, type, row_bytes; };
constexpr uint32_t kMaxGroups = 65535;  // minimum maxComputeWorkGroupCount Vulkan guarantees
}  // namespace

Result<Matmul> Matmul::create(vk::Device& dev) {
  auto p = dev.pipeline({"matmul_scalar", {}, sizeof(Push), 3, 64});
  if (!p.ok()) return p.status();
  Matmul op;
  op.scalar_ = std::move(*p);
  return op;
}

Status Matmul::record(vk::CommandStream& s, quant::GgmlType type, uint32_t rows, uint32_t cols,
                      uint32_t batch, vk::BufferRange w, vk::BufferRange x, vk::BufferRange y) const {
  using quant::GgmlType;
  auto t = quant::traits(type);
  if (!t) {
    return Status::Unsupported(fmt::format("matmul: weight type {} is not supported (supported: {})",
                                           quant::ggml_type_name(static_cast<uint32_t>(type)),
                                           quant::supported_type_names()));
  }
  if (rows == 0 || cols == 0 || batch == 0 || cols % static_cast<uint32_t>(t->block_values) != 0) {
    return Status::InvalidArgument(fmt::format(
        "matmul: shape rows {} cols {} batch {} is invalid for {} (all positive, cols a multiple of {})",
        rows, cols, batch, t->name, t->block_values));
  }
  if (rows > kMaxGroups || batch > kMaxGroups) {
    return Status::InvalidArgument(fmt::format("matmul: rows {} or batch {} above {} (split the call)",
                                               rows, batch, kMaxGroups));
  }
  const uint64_t rb = quant::row_bytes(type, cols);
  const uint64_t need_w = (rb * rows + 3) / 4 * 4, need_x = uint64_t{batch} * cols * 4, need_y = uint64_t{batch} * rows * 4;
  if (w.size < need_w || x.size < need_x || y.size < need_y) {
    return Status::InvalidArgument(fmt::format(
        "matmul: buffers too small: weights {} (need {}), x {} (need {}), y {} (need {})", w.size, need_w,
        x.size, need_x, y.size, need_y));
  }
  Push push{rows, cols, batch, static_cast<uint32_t>(type), static_cast<uint32_t>(rb)};
  vk::BufferRange bufs[3] = {w, x, y};
  return s.dispatch(scalar_, bufs, &push, sizeof(push), rows, batch);
}

}  // namespace trove::ops
