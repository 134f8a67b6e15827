// kernels/ops/chain.h — kernels recorded one after another WITHOUT a barrier between them, each waiting
// in its kernel for the one before (kernels/shaders/chain.glsl), so that the GPU does not drain
// between the dependent dispatches of a decode step (docs/kernels.md, "Chained decode").
//
// Contract:
//  - An op call with a ChainLink (buf set) waits, before its first read of anything, until slot `wait`
//    holds `epoch` (kNone: a barrier came before the call), and marks slot `signal` with `epoch` when
//    all its workgroups are done (kNone: a barrier comes after it). The calls of one chain are
//    consecutive dispatches with nothing else recorded between them; a slot is signalled once per
//    epoch; submissions that reuse the slots use different nonzero epochs and are ordered (a barrier or
//    a wait between them).
//  - The buffer holds bytes(n) for slots 1..n, zero when first used (counts return to zero by
//    themselves); word 1 is the give-up flag: a wait that saw no epoch after a bounded poll sets it and
//    goes on (the results of that submission are then wrong). The caller reads it back after the wait.
//  - It relies on the GPU starting a dispatch's workgroups only once every workgroup of the dispatch
//    recorded before it has started (true of NVIDIA's, measured; the flag catches a GPU where not).
#pragma once

#include <cstdint>
#include <string_view>

#include <fmt/format.h>

#include "common/status.h"
#include "kernels/vk/runtime.h"

namespace trove::ops {

struct ChainLink {
  static constexpr uint32_t kNone = 0xffffffffu;
  vk::BufferRange buf{};    // empty: no chain
  uint32_t wait = kNone;    // slot the previous call signals
  uint32_t signal = kNone;  // slot this call signals
  uint32_t epoch = 1;       // nonzero, different for every submission that reuses the slots

  bool on() const { return buf.buffer != VK_NULL_HANDLE; }
  static constexpr uint64_t bytes(uint32_t slots) { return (uint64_t{slots} + 1) * 8; }
  // The slots fit the buffer (from 1), the epoch is nonzero; `extra` more slots after `signal` (an op
  // that signals signal .. signal + extra).
  Status check(std::string_view op, uint32_t extra = 0) const {
    auto fits = [&](uint32_t s, uint32_t more) { return s == kNone || (s != 0 && buf.size >= bytes(s + more)); };
    if (buf.size < bytes(1) || epoch == 0 || !fits(wait, 0) || !fits(signal, extra)) {
      return Status::InvalidArgument(fmt::format(
          "{}: chain slots wait {} / signal {} (+{}) and epoch {} do not fit a {}-byte chain buffer (slots from 1, "
          "ChainLink::bytes(n) bytes for slot n, a nonzero epoch)", op, wait, signal, extra, epoch, buf.size));
    }
    return Status::Ok();
  }
};

}  // namespace trove::ops
