#include "kernels/ops/sample.h"

#include <cstdlib>
#include <string>

#include <fmt/format.h>

namespace trove::ops {

Result<Sampler> Sampler::create(vk::Device& dev) {
  Sampler op;
  for (uint32_t from_buffer = 0; from_buffer < 2; ++from_buffer) {
    auto p = dev.pipeline({"sample_f32", {from_buffer}, 32, 3, 64});
    if (!p.ok()) return p.status();
    auto w = dev.pipeline({"sample_wg_f32", {kWorkgroupLocal, from_buffer}, 32, 3, kWorkgroupLocal});
    if (!w.ok()) return w.status();
    op.pipeline_[from_buffer] = std::move(*p);
    op.workgroup_[from_buffer] = std::move(*w);
  }
  if (const char* e = std::getenv("TROVE_SAMPLE")) {
    const std::string v = e;
    if (v == "rows") op.per_row_only_ = true;
    else if (v != "auto" && !v.empty()) {
      return Status::InvalidArgument(fmt::format("sampling: TROVE_SAMPLE={} is not auto or rows (docs/kernels.md)", v));
    }
  }
  return op;
}

Status Sampler::record(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange out, uint32_t rows,
                       uint32_t ncols, const SamplingParams& p, SamplerForm form, const SamplerSeed& seed) const {
  if (!(p.temperature > 0)) return Status::InvalidArgument(fmt::format("sampling: temperature {} must be > 0 (use argmax for greedy)", p.temperature));
  if (p.top_k < 1 || p.top_k > 64) return Status::InvalidArgument(fmt::format("sampling: top_k {} must be in 1..64", p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1)) return Status::InvalidArgument(fmt::format("sampling: top_p {} must be in (0, 1]", p.top_p));
  if (!(p.min_p >= 0 && p.min_p < 1)) return Status::InvalidArgument(fmt::format("sampling: min_p {} must be in [0, 1)", p.min_p));
  if (logits.size < uint64_t{rows} * ncols * 4 || out.size < uint64_t{rows} * 4)
    return Status::InvalidArgument(fmt::format("sampling: buffers too small for {} rows of {} logits", rows, ncols));
  const bool from_buffer = seed.buffer.buffer != VK_NULL_HANDLE;
  if (from_buffer && seed.buffer.size < (uint64_t{seed.index} + 1) * 4) {
    return Status::InvalidArgument(fmt::format("sampling: seed buffer of {} bytes has no entry {}", seed.buffer.size, seed.index));
  }
  if (out.offset % 4 != 0) return Status::InvalidArgument(fmt::format("sampling: output offset {} is not a multiple of 4", out.offset));
  // A storage binding's offset must be a multiple of the device's minStorageBufferOffsetAlignment (at
  // most 256; 16 on NVIDIA and lavapipe, 64 on some Intel GPUs): `out` is bound from the 256-byte
  // boundary at or below it, and the kernel writes from element out_at (the engine samples row r into
  // its token r, 4·r bytes in).
  vk::BufferRange ob = out;
  ob.offset = out.offset / 256 * 256;
  ob.size = out.size + (out.offset - ob.offset);
  struct { uint32_t ncols, rows, top_k; float temperature, top_p, min_p; uint32_t seed, out_at; } push{
      ncols, rows, p.top_k, p.temperature, p.top_p, p.min_p, from_buffer ? seed.index : p.seed,
      static_cast<uint32_t>((out.offset - ob.offset) / 4)};
  vk::BufferRange b[3] = {logits, ob, from_buffer ? seed.buffer : ob};
  if (form == SamplerForm::kAuto) {
    form = ncols >= kWorkgroupMinCols && !per_row_only_ ? SamplerForm::kWorkgroup : SamplerForm::kPerRow;
  }
  if (form == SamplerForm::kPerRow) return s.dispatch(pipeline_[from_buffer], b, &push, sizeof(push), (rows + 63) / 64);
  if (rows > 65535) return Status::InvalidArgument(fmt::format("sampling: {} rows in one call, at most 65535 (record fewer)", rows));
  return s.dispatch(workgroup_[from_buffer], b, &push, sizeof(push), rows);
}

}  // namespace trove::ops
