#version 460
// MoE scatter-combine for prefill steps (kernels/ops/moe_ffn.h, > 8 tokens): after the grouped down
// projection wrote d[slot][hidden] for every (token, j) pair,
//   x[t][c] += sum_j w[t][j] * d[pair_slot[t*k + j]][c]      (j = 0 .. k-1, in that order)
// One invocation owns one element of x for all k of its token: no atomics, and the sum's order is
// fixed, so a step's result does not depend on scheduling. Grid: (ceil(hidden / 256), tokens).
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer D { float d[]; };
layout(std430, set = 0, binding = 1) readonly buffer Wt { float wt[]; };
layout(std430, set = 0, binding = 2) readonly buffer Plan { uint plan[]; };
layout(std430, set = 0, binding = 3) buffer Xr { float x[]; };
layout(push_constant) uniform P { uint hidden; uint k; uint pair_slot_off; } pc;
void main() {
  uint t = gl_WorkGroupID.y, c = gl_WorkGroupID.x * 256u + gl_LocalInvocationID.x;
  if (c >= pc.hidden) return;
  float acc = 0.0;
  for (uint j = 0u; j < pc.k; ++j) {
    uint pair = t * pc.k + j;
    acc += wt[pair] * d[plan[pc.pair_slot_off + pair] * pc.hidden + c];
  }
  x[t * pc.hidden + c] += acc;
}
