#version 460
// MoE combine for one expert: out[tok[j]][c] += weight[j] * d[j][c] for the n tokens gathered to it.
// Experts are recorded one after another with a barrier between, and a token appears at most once
// per expert, so no two invocations of a dispatch touch the same output element (no atomics).
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer D { float d[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { uint tok[]; };
layout(std430, set = 0, binding = 2) readonly buffer W { float wt[]; };
layout(std430, set = 0, binding = 3) buffer O { float o[]; };
layout(push_constant) uniform P { uint n; uint hidden; } pc;
void main() {
  uint j = gl_WorkGroupID.y, c = gl_WorkGroupID.x * 256u + gl_LocalInvocationID.x;
  if (j < pc.n && c < pc.hidden) o[tok[j] * pc.hidden + c] += wt[j] * d[j * pc.hidden + c];
}
