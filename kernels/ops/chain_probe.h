// kernels/ops/chain_probe.h — a measurement, not an op of the engine: what one dependent step of a
// decode-like chain costs when each step is its own dispatch behind a pipeline barrier, against one
// dispatch whose workgroups meet at a grid barrier between steps (kernels/shaders/chain_probe.comp).
//
// Why: a decode step of the 8B is ~230 dependent dispatches, each bound by its own latency (docs/
// performance.md: the KV write, which does almost nothing, takes 6.7 µs a layer; skipping every
// barrier, wrongly, made a step 1.7× faster). A persistent kernel that runs several of them with grid
// barriers in between — and streams the next step's weights while it waits (kSplitBarrier) — is the
// design that would remove that latency; this probe says what it would save before anyone writes one
// (bench_kernels --only chain).
//
// Contract: phase p reads vector p of `y` and writes vector p + 1 (y holds (phases + 1) · n words,
// vector 0 the input) and reads weight words [p · words, (p + 1) · words) of `w` (16-byte words).
// `ctl` holds 3 words, zero before the first record() and left zero by every complete run; ctl[2]
// counts grid-barrier waits that gave up (workgroups not resident together: the results are then
// wrong, and `timeouts()` says so). The grid-barrier modes need every one of `grid` workgroups of
// 256 invocations resident at once: the caller's choice (a few per SM on a GPU; 1 on a CPU device,
// which may run workgroups one after the other). record() records only; kDispatchPerPhase records a
// barrier between its dispatches (and none after the last).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/vk/runtime.h"

namespace trove::ops {

// kDispatchNoBarrier: the dispatches of kDispatchPerPhase without the barriers between them — they
// overlap and read vectors not yet written, so its results are wrong; its time against
// kDispatchPerPhase's is what the drains cost, apart from what the launches cost.
enum class ChainMode { kDispatchPerPhase = 0, kGridBarrier = 1, kSplitBarrier = 2, kDispatchNoBarrier = 3 };
const char* chain_mode_name(ChainMode m);

class ChainProbe {
 public:
  static constexpr uint32_t kLocal = 256;  // local_size_x of chain_probe.comp

  static Result<ChainProbe> create(vk::Device& dev);
  struct Call {
    ChainMode mode = ChainMode::kDispatchPerPhase;
    const vk::Buffer *w = nullptr, *y = nullptr, *ctl = nullptr;
    uint32_t n = 0;       // words of each vector
    uint32_t phases = 0;
    uint64_t words = 0;   // weight words (16 bytes) of each phase; 0: no weights
    uint32_t grid = 1;    // workgroups
    uint32_t spin = 1u << 16;  // polls before a grid-barrier wait gives up (~25 ms of L2 round trips)
  };
  Status record(vk::CommandStream& s, const Call& c) const;
  // Waits that gave up since ctl was zeroed (ctl[2]); after submit_and_wait().
  static Result<uint32_t> timeouts(const vk::Buffer& ctl);

  // The reference: the vectors y_1 .. y_phases the chain writes from y_0 and the weights (4 words per
  // 16-byte word), for `grid` workgroups.
  static std::vector<uint32_t> reference(const std::vector<uint32_t>& y0, const std::vector<uint32_t>& w,
                                         uint32_t phases, uint64_t words, uint32_t grid);

 private:
  vk::Pipeline pipelines_[3];
};

}  // namespace trove::ops
