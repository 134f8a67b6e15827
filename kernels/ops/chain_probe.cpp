#include "kernels/ops/chain_probe.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

namespace trove::ops {
namespace {
struct Push { uint32_t n, phases, first, words, grid, spin; };
}  // namespace

const char* chain_mode_name(ChainMode m) {
  switch (m) {
    case ChainMode::kDispatchPerPhase: return "dispatch per phase";
    case ChainMode::kGridBarrier: return "grid barrier";
    case ChainMode::kSplitBarrier: return "split grid barrier";
    case ChainMode::kDispatchNoBarrier: return "dispatch per phase, no barriers (wrong results)";
  }
  return "?";
}

Result<ChainProbe> ChainProbe::create(vk::Device& dev) {
  ChainProbe op;
  for (uint32_t m = 0; m < 3; ++m) {
    auto p = dev.pipeline({"chain_probe", {m}, sizeof(Push), 3, kLocal});
    if (!p.ok()) return p.status();
    op.pipelines_[m] = std::move(*p);
  }
  return op;
}

Status ChainProbe::record(vk::CommandStream& s, const Call& c) const {
  if (!c.w || !c.y || !c.ctl) return Status::InvalidArgument("chain probe: w, y and ctl are all needed");
  if (c.n == 0 || c.phases == 0 || c.grid == 0 || c.grid > 65535) {
    return Status::InvalidArgument(fmt::format("chain probe: n {}, phases {}, grid {} (each must be > 0, grid <= 65535)",
                                               c.n, c.phases, c.grid));
  }
  const uint64_t y_bytes = (uint64_t{c.phases} + 1) * c.n * 4, w_bytes = uint64_t{c.phases} * c.words * 16;
  if (c.y->size() < y_bytes || c.w->size() < std::max<uint64_t>(w_bytes, 16) || c.ctl->size() < 12 ||
      uint64_t{c.phases} * c.words > UINT32_MAX) {
    return Status::InvalidArgument(fmt::format("chain probe of {} phases: y holds {} bytes (needs {}), w {} (needs {}), "
                                               "ctl {} (needs 12)", c.phases, c.y->size(), y_bytes, c.w->size(),
                                               w_bytes, c.ctl->size()));
  }
  std::array<vk::BufferRange, 3> bufs = {vk::BufferRange(*c.w), vk::BufferRange(*c.y), vk::BufferRange(*c.ctl)};
  Push push{c.n, c.phases, 0, static_cast<uint32_t>(c.words), c.grid, c.spin};
  const bool per_phase = c.mode == ChainMode::kDispatchPerPhase || c.mode == ChainMode::kDispatchNoBarrier;
  const vk::Pipeline& pipe = pipelines_[per_phase ? 0 : static_cast<int>(c.mode)];
  if (!per_phase) return s.dispatch(pipe, bufs, &push, sizeof(push), c.grid);
  push.phases = 1;
  for (uint32_t p = 0; p < c.phases; ++p) {
    if (p > 0 && c.mode == ChainMode::kDispatchPerPhase) s.barrier();
    push.first = p;
    if (auto st = s.dispatch(pipe, bufs, &push, sizeof(push), c.grid); !st.ok()) return st;
  }
  return Status::Ok();
}

Result<uint32_t> ChainProbe::timeouts(const vk::Buffer& ctl) {
  uint32_t v[3] = {0, 0, 0};
  if (auto st = ctl.download(v, sizeof(v)); !st.ok()) return st;
  return v[2];
}

std::vector<uint32_t> ChainProbe::reference(const std::vector<uint32_t>& y0, const std::vector<uint32_t>& w,
                                            uint32_t phases, uint64_t words, uint32_t grid) {
  const uint64_t n = y0.size();
  std::vector<uint32_t> y(y0);
  y.resize((phases + 1) * n);
  const uint64_t wper = (words + grid - 1) / grid, nper = (n + grid - 1) / grid;
  for (uint32_t p = 0; p < phases; ++p) {
    uint32_t total = 0;
    for (uint64_t i = 0; i < n; ++i) total += y[p * n + i];
    for (uint32_t g = 0; g < grid; ++g) {
      uint32_t s = 0;
      const uint64_t lo = std::min(g * wper, words), hi = std::min(lo + wper, words);
      for (uint64_t i = lo; i < hi; ++i) {
        for (int k = 0; k < 4; ++k) s += w[4 * (p * words + i) + k];
      }
      const uint64_t a = std::min(g * nper, n), b = std::min(a + nper, n);
      for (uint64_t i = a; i < b; ++i) y[(p + 1) * n + i] = y[p * n + i] * 3u + total + s + static_cast<uint32_t>(i);
    }
  }
  y.erase(y.begin(), y.begin() + static_cast<std::ptrdiff_t>(n));
  return y;
}

}  // namespace trove::ops
