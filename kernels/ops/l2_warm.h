// kernels/ops/l2_warm.h — reads a byte range of a buffer so that a later dispatch finds it in the
// GPU's L2 cache (kernels/shaders/l2_warm.comp).
//
// Decode is a chain of dependent dispatches, most of them bound by latency rather than by the memory
// bus: while decode attention or the RoPE/KV write runs, the bus is nearly idle. Recorded in the same
// barrier interval as such a dispatch, an L2 warm-up of the next matvec's weights overlaps their reads
// with it (the engine's TROVE_L2_WARM, docs/performance.md). It has no effect on any result.
//
// Contract: `range` is a whole buffer or a range of one whose offset and size are multiples of 16; the
// words [first, first + n) of it are read (16-byte words). `out` holds at least grid() words: each
// workgroup writes the XOR of the words it read there (so that the reads are kept; the XOR of the grid()
// words is the XOR of the range, which is what the kernel test checks). record() only records.
#pragma once

#include "kernels/vk/runtime.h"

namespace trove::ops {

class L2Warm {
 public:
  static constexpr uint32_t kLocal = 256;          // local_size_x of l2_warm.comp
  static constexpr uint32_t kWordsPerInvocation = 8;  // 128 bytes: two rounds of four loads in flight

  static Result<L2Warm> create(vk::Device& dev);
  // Workgroups a warm-up of n words uses (the size out must have, in 4-byte words).
  static uint32_t grid(uint64_t n_words);
  Status record(vk::CommandStream& s, vk::BufferRange range, uint64_t first_word, uint64_t n_words,
                vk::BufferRange out) const;

 private:
  vk::Pipeline pipeline_;
};

}  // namespace trove::ops
