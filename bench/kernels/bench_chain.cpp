#include "bench/kernels/bench_chain.h"

#include <algorithm>

#include <fmt/format.h>

#include "bench/kernels/bench_timing.h"
#include "kernels/ops/chain_probe.h"

namespace trove::bench {

Status bench_chain(vk::Device& dev, const ChainBenchOptions& opts, std::vector<KernelRow>& rows) {
  auto op = ops::ChainProbe::create(dev);
  if (!op.ok()) return op.status();
  const uint32_t n = 4096, phases = opts.quick ? 4 : 36;  // the 8B's hidden size; one step per layer
  // Weight bytes a step: none (the dependency alone), the 8B's o projection (4096 x 4096 Q4_K), its
  // fused QKV (6144 x 4096) and its gate + up (2 x 12288 x 4096).
  struct Size { const char* name; double mb; };
  std::vector<Size> sizes = {{"no weights", 0}, {"8B o 9.4 MB", 9.437}, {"8B qkv 14.2 MB", 14.156},
                             {"8B gate+up 56.6 MB", 56.623}};
  if (opts.quick) sizes = {{"no weights", 0}, {"1 MB", 1.0}};
  std::vector<uint32_t> grids = opts.quick ? std::vector<uint32_t>{1} : opts.grids;
  uint64_t max_words = 0;
  for (const auto& sz : sizes) max_words = std::max<uint64_t>(max_words, static_cast<uint64_t>(sz.mb * 1e6 / 16));
  max_words = std::min<uint64_t>(max_words, dev.max_buffer_bytes() / 16 / phases);
  auto w = filled(dev, std::max<uint64_t>(16, max_words * 16 * phases), 0x01010101u);
  auto y = filled(dev, (uint64_t{phases} + 1) * n * 4, 1u);
  auto ctl = filled(dev, 12, 0u);
  if (!w.ok() || !y.ok() || !ctl.ok()) return Status::ResourceExhausted("chain probe buffers");
  for (const auto& sz : sizes) {
    const uint64_t words = std::min<uint64_t>(static_cast<uint64_t>(sz.mb * 1e6 / 16), max_words);
    for (uint32_t grid : grids) {
      for (auto mode : {ops::ChainMode::kDispatchPerPhase, ops::ChainMode::kDispatchNoBarrier, ops::ChainMode::kGridBarrier,
                        ops::ChainMode::kSplitBarrier}) {
        const std::string op_name = fmt::format("chain {}", ops::chain_mode_name(mode));
        const std::string shape = fmt::format("{} steps, {}, grid {}", phases, sz.name, grid);
        if (opts.wanted && !opts.wanted(op_name + " " + shape)) continue;
        ops::ChainProbe::Call c{mode, &*w, &*y, &*ctl, n, phases, words, grid};
        auto t = time_reps(dev, opts.reps, [&](vk::CommandStream& s) { return op->record(s, c); });
        if (!t.ok()) return t.status();
        auto gave_up = ops::ChainProbe::timeouts(*ctl);
        if (!gave_up.ok()) return gave_up.status();
        if (*gave_up > 0) {
          return Status::FailedPrecondition(fmt::format("chain probe, {}: {} grid-barrier waits gave up (the {} workgroups "
                                                        "were not all resident at once; try a smaller grid with --chain-grid)",
                                                        op_name, *gave_up, grid));
        }
        const double per_step = *t / phases;
        rows.push_back({op_name, shape, per_step, words * 16.0 / per_step / 1e3, 0});
      }
    }
  }
  return Status::Ok();
}

}  // namespace trove::bench
