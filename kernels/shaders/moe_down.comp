#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
// Decode MoE down projection fused with the routing-weighted sum and the residual add
// (kernels/ops/moe_ffn.h, steps of <= 8 tokens):
//   x[t][row] += sum_j w[t][j] * (down_e · h[slot(t, j)]),   e = ids[t][j], j < k
// Grid: x = row tiles of kRows rows of the hidden size, y = tokens. A subgroup owns one output row of
// one token for ALL k of its experts: its lanes stride over the k × (cols / 64) units of the k expert
// rows (moe_unit.glsl), each lane adding w_j × its partial dot, and one subgroupAdd gives the row's
// sum. One invocation then adds it into x, so no atomics, and the order of the sum is fixed (lane
// assignment and reduction tree do not depend on timing): runs are bit-identical.
// Bytes: k expert rows (cols values of the down type) per output row; h is [slots][cols] f32.
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint kType = 12u;
layout(constant_id = 1) const uint kRows = 4u;

layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 0) readonly buffer W4 { uvec4 w4[]; };
layout(std430, set = 0, binding = 1) readonly buffer H { vec4 h4[]; };
layout(std430, set = 0, binding = 2) readonly buffer Ids { uint ids[]; };
layout(std430, set = 0, binding = 3) readonly buffer Wt { float wt[]; };
layout(std430, set = 0, binding = 4) readonly buffer Plan { uint plan[]; };
layout(std430, set = 0, binding = 5) buffer Xr { float x[]; };
layout(push_constant) uniform P {
  uint rows; uint cols; uint rb; uint k; uint pair_slot_off;
} pc;

#define UNIT_FN unit_w
#define UNIT_LOAD8 load8_w
#define UNIT_W(i) w[i]
#define UNIT_W4(i) w4[i]
#include "moe_unit.glsl"

float dot8(vec4 v[8], uint hb) {
  vec4 s = v[0] * h4[hb];
  for (uint i = 1u; i < 8u; ++i) s += v[i] * h4[hb + i];
  return (s.x + s.y) + (s.z + s.w);
}

void main() {
  uint t = gl_WorkGroupID.y;
  uint upr = unit_count(pc.cols), total = pc.k * upr, hq = pc.cols >> 2;
  for (uint r = gl_SubgroupID; r < kRows; r += gl_NumSubgroups) {
    uint row = gl_WorkGroupID.x * kRows + r;
    if (row >= pc.rows) break;
    float acc = 0.0;
    for (uint u = gl_SubgroupInvocationID; u < total; u += gl_SubgroupSize) {
      uint j = u / upr, uu = u - j * upr, pair = t * pc.k + j;
      uint e = ids[pair];
      uint hb = plan[pc.pair_slot_off + pair] * hq;
      vec4 lo[8], hi[8];
      uint cl, ch;
      unit_w(kType, (e * pc.rows + row) * pc.rb, uu, pc.cols, lo, hi, cl, ch);
      float d = dot8(lo, hb + (cl >> 2)) + (ch < pc.cols ? dot8(hi, hb + (ch >> 2)) : 0.0);
      acc += wt[pair] * d;
    }
    float s = subgroupAdd(acc);
    if (subgroupElect()) x[t * pc.rows + row] += s;
  }
}
