// alu_probe.glsl — the body of the ALU probe shaders (kernels/ops/alu_probe.h): every invocation runs
// kChains independent recurrences a <- STEP(a) of one instruction for pc.iters steps and writes the sum
// (uint, wrapping) of the chains' final words, so the time of a dispatch is that instruction's issue
// rate (many warps and 8 chains each hide its latency). The includer defines T (a chain's type),
// INIT(j) (chain j's start, j = invocation · 8 + chain), STEP(a) and WORD(a) (a chain's word).
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) writeonly buffer O { uint o[]; };
// m, c: the step's operands as bits (the compiler must not know them).
layout(push_constant) uniform P { uint iters; uint seed; uint m; uint c; } pc;

const uint kChains = 8u;

void main() {
  const uint i = gl_GlobalInvocationID.x;
  T a[kChains];
  [[unroll]] for (uint k = 0u; k < kChains; ++k) a[k] = INIT(i * kChains + k);
  for (uint n = 0u; n < pc.iters; ++n) {
    [[unroll]] for (uint k = 0u; k < kChains; ++k) a[k] = STEP(a[k]);
  }
  uint r = 0u;
  [[unroll]] for (uint k = 0u; k < kChains; ++k) r += WORD(a[k]);
  o[i] = r;
}
