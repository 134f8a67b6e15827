#include "kernels/ops/matmul.h"

#include <cstdlib>

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push { uint32_t rows, cols, batch, type, row_bytes, tpr, y_stride, rpt; };
constexpr uint32_t kMaxGroups = 65535;  // minimum maxComputeWorkGroupCount Vulkan guarantees
constexpr uint32_t kBatchCols = 8;      // batch columns per workgroup (kCols in matmul_tiled.comp)

// Invocations per row: the largest power of two <= min(64, chunks / 4), so that each invocation
// dequantizes at least 4 chunks of 32 values between reductions (short rows: more rows per group).
uint32_t threads_per_row(uint32_t cols) {
  uint32_t tpr = 1;
  while (tpr < 64 && tpr * 2 <= cols / 128) tpr *= 2;
  return tpr;
}

// The tensor-core path needs a 16x16x16 f16 x f16 -> f32 subgroup shape (VkComponentTypeKHR FLOAT16 = 0,
// FLOAT32 = 1; VkScopeKHR SUBGROUP = 3), 32-wide subgroups (4 per workgroup of 128) and the shader,
// which only a glslang >= 14 build embeds.
bool coopmat_usable(const vk::Device& dev) {
  const auto& f = dev.features();
  if (f.subgroup_size != 32 || !vk::find_shader("matmul_coopmat").words) return false;
  for (const auto& c : f.coopmat_shapes) {
    if (c.m == 16 && c.n == 16 && c.k == 16 && c.a == 0 && c.b == 0 && c.c == 1 && c.result == 1 && c.scope == 3) {
      return true;
    }
  }
  return false;
}

}  // namespace

Result<Matmul> Matmul::create(vk::Device& dev) {
  Matmul op;
  // Specialization: [rows per invocation, f16 activations] for the tiled shader, [f16 activations]
  // for the cooperative-matrix one; index 1 of each pair is the f16-activation variant.
  for (uint32_t h = 0; h < 2; ++h) {
    auto p1 = dev.pipeline({"matmul_tiled", {1, h}, sizeof(Push), 3, 64});
    if (!p1.ok()) return p1.status();
    auto p4 = dev.pipeline({"matmul_tiled", {4, h}, sizeof(Push), 3, 64});
    if (!p4.ok()) return p4.status();
    op.tiled_row_[h] = std::move(*p1);
    op.tiled_rows4_[h] = std::move(*p4);
    if (coopmat_usable(dev) && !std::getenv("TROVE_NO_COOPMAT")) {
      auto pc = dev.pipeline({"matmul_coopmat", {h}, sizeof(Push), 3, 128});
      if (!pc.ok()) return pc.status();
      op.coopmat_[h] = std::move(*pc);
      op.has_coopmat_ = true;
    }
  }
  return op;
}

Status Matmul::record(vk::CommandStream& s, quant::GgmlType type, uint32_t rows, uint32_t cols,
                      uint32_t batch, vk::BufferRange w, vk::BufferRange x, vk::BufferRange y,
                      uint32_t y_stride, bool x_f16) const {
  if (y_stride == 0) y_stride = rows;
  using quant::GgmlType;
  auto t = quant::traits(type);
  if (!t) {
    return Status::Unsupported(fmt::format("matmul: weight type {} is not supported (supported: {})",
                                           quant::ggml_type_name(static_cast<uint32_t>(type)),
                                           quant::supported_type_names()));
  }
  if (rows == 0 || cols == 0 || batch == 0 || cols % static_cast<uint32_t>(t->block_values) != 0 ||
      cols % 32 != 0 || (y_stride != 0 && y_stride < rows)) {
    return Status::InvalidArgument(fmt::format(
        "matmul: shape rows {} cols {} batch {} (y stride {}) is invalid for {} (all positive, cols a multiple of "
        "32 and of {}, y stride >= rows)", rows, cols, batch, y_stride, t->name, t->block_values));
  }
  // Rows per invocation: 4 for batches (each activation chunk loaded once serves 4 rows), 1 for decode.
  const uint32_t rpt = batch > 1 ? 4 : 1;
  const uint32_t tpr = threads_per_row(cols), rows_per_group = 64 / tpr * rpt;
  const uint32_t groups_x = (rows + rows_per_group - 1) / rows_per_group;
  const uint32_t groups_y = (batch + kBatchCols - 1) / kBatchCols;
  if (groups_x > kMaxGroups || groups_y > kMaxGroups) {
    return Status::InvalidArgument(fmt::format("matmul: rows {} or batch {} need more than {} workgroups (split the call)",
                                               rows, batch, kMaxGroups));
  }
  const uint64_t rb = quant::row_bytes(type, cols);
  const uint64_t need_w = (rb * rows + 3) / 4 * 4, need_x = uint64_t{batch} * cols * (x_f16 ? 2 : 4), need_y = (uint64_t{batch - 1} * y_stride + rows) * 4;
  if (w.size < need_w || x.size < need_x || y.size < need_y) {
    return Status::InvalidArgument(fmt::format(
        "matmul: buffers too small: weights {} (need {}), x {} (need {}), y {} (need {})", w.size, need_w,
        x.size, need_x, y.size, need_y));
  }
  if (has_coopmat_ && batch >= kCoopmatMinBatch) {
    Push push{rows, cols, batch, static_cast<uint32_t>(type), static_cast<uint32_t>(rb), tpr, y_stride, rpt};
    vk::BufferRange bufs[3] = {w, x, y};
    return s.dispatch(coopmat_[x_f16 ? 1 : 0], bufs, &push, sizeof(push), (rows + 63) / 64, (batch + 63) / 64);
  }
  Push push{rows, cols, batch, static_cast<uint32_t>(type), static_cast<uint32_t>(rb), tpr, y_stride, rpt};
  vk::BufferRange bufs[3] = {w, x, y};
  return s.dispatch(rpt == 1 ? tiled_row_[x_f16 ? 1 : 0] : tiled_rows4_[x_f16 ? 1 : 0], bufs, &push, sizeof(push), groups_x, groups_y);
}

}  // namespace trove::ops
