// kernels/ops/alu_probe.h — a measurement, not an op of the engine: how many of one arithmetic
// instruction the device issues a second (kernels/shaders/alu_probe*.comp), for the instructions the
// decode matvecs are built from.
//
// Why: a batch of 8 columns costs the q8 matvec ~2.5× one column (docs/performance.md), and the work
// that grows with the columns is the packed int8 dot products (dotPacked4x8EXT: 8 per column of each
// 32-value part a lane walks), their conversions and f32 FMAs. Whether wide steps can come near batch-1
// cost on these instructions, or need the matrix units, depends on their rates: this probe gives them
// on the device at hand (bench_kernels --only alu), where the vendors' tables do not cover Vulkan's
// lowering of the GLSL built-ins.
//
// Contract: a call runs groups × kLocal invocations; invocation i runs kChains independent recurrences
// of `iters` steps of the op (j = i · kChains + chain):
//   kFma32   a <- fma(a, m, c) in f32 (m, c: floats as bits), a_0 = (j mod 1024) / 1024
//   kImad    a <- a · m + c (uint, wrapping), a_0 = 0x9e3779b9 ^ (j · 2654435761)
//   kDot4x8  a <- a + Σ_k byte_k(a) · byte_k(m) (signed bytes, wrapping), a_0 as kImad
//   kHfma2   a <- fma(a, m, c) on two f16 lanes (m, c: two f16 each), a_0 = ((j mod 64) / 64, 0.5 −
//            (j mod 8) / 16)
// and writes out[i] = Σ over its chains of the final words (f32 / f16 pairs as bits; uint, wrapping).
// reference() computes the same word exactly (with m = 0.5, c = 0.25 the float products are exact, so a
// fused and an unfused multiply-add agree).
#pragma once

#include <cstdint>

#include "kernels/vk/runtime.h"

namespace trove::ops {

enum class AluOp { kFma32 = 0, kImad = 1, kDot4x8 = 2, kHfma2 = 3 };
const char* alu_op_name(AluOp op);

class AluProbe {
 public:
  static constexpr uint32_t kLocal = 256, kChains = 8;

  // kDot4x8 needs integer dot products, kHfma2 f16 arithmetic: available() says which the device has.
  static Result<AluProbe> create(vk::Device& dev);
  bool available(AluOp op) const;
  struct Call {
    AluOp op = AluOp::kFma32;
    const vk::Buffer* out = nullptr;  // groups · kLocal words
    uint32_t groups = 1, iters = 1;
    uint32_t m = 0, c = 0;  // the step's operands as bits (defaults(op) below)
  };
  // m and c of the rates the bench reports: 0.5 and 0.25 (f32, or both f16 lanes), 3 and 7 (kImad),
  // the bytes 1, -2, 3, -4 (kDot4x8; c unused).
  static Call defaults(AluOp op);
  Status record(vk::CommandStream& s, const Call& c) const;
  // The instructions a call issues: groups · kLocal · kChains · iters (one kHfma2 is two f16 FMAs).
  static uint64_t instructions(const Call& c) { return uint64_t{c.groups} * kLocal * kChains * c.iters; }
  // The word invocation i writes.
  static uint32_t reference(const Call& c, uint32_t i);

 private:
  vk::Pipeline pipelines_[4];
  bool has_[4] = {};
};

}  // namespace trove::ops
