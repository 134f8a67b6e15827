#version 460
#extension GL_GOOGLE_include_directive : require
// Grouped matmul for MoE prefill on any Vulkan device (no matrix units; the CI path on lavapipe):
// y[s][r] = sum_c W[e][r][c] * x[row_ids[s]][c] for every slot s, e the expert whose slot range
// expert_offsets[e] .. expert_offsets[e+1] holds s (contract: kernels/ops/matmul.h, GroupedMatmul).
// One workgroup of 64 per (64 weight rows, 4 slots); each invocation dequantizes its row's chunks
// once (dequant_chunk.glsl) and multiplies them with the 4 slots' activations, f32 accumulation.
// The expert of a slot is found by binary search over expert_offsets (n_expert + 1 entries).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer X16 { uvec2 xh[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(std430, set = 0, binding = 3) readonly buffer Offsets { uint expert_offsets[]; };
layout(std430, set = 0, binding = 4) readonly buffer RowIds { uint row_ids[]; };
layout(push_constant) uniform P {
  uint rows; uint cols; uint batch; uint row_bytes; uint y_stride; uint n_expert; uint expert_bytes; uint x_rows;
} pc;

layout(constant_id = 0) const uint kType = 12u;
layout(constant_id = 1) const uint kXF16 = 1u;
const uint kSlots = 4u;

#include "dequant_chunk.glsl"

vec4 x_at(uint i) {
  if (kXF16 != 0u) {
    uvec2 h = xh[i];
    return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
  }
  return x4[i];
}

// The expert whose slot range holds s: the last e with expert_offsets[e] <= s.
uint expert_of(uint s) {
  uint lo = 0u, hi = pc.n_expert;  // invariant: offsets[lo] <= s < offsets[hi]
  while (hi - lo > 1u) {
    uint mid = (lo + hi) >> 1;
    if (expert_offsets[mid] <= s) lo = mid; else hi = mid;
  }
  return lo;
}

void main() {
  uint r = gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x;
  uint s0 = gl_WorkGroupID.y * kSlots;
  uint total = expert_offsets[pc.n_expert];
  if (r >= pc.rows || s0 >= total) return;
  uint e[kSlots], xr[kSlots];
  bool ok[kSlots];
  for (uint j = 0u; j < kSlots; ++j) {
    uint s = s0 + j;
    ok[j] = s < total;
    e[j] = ok[j] ? expert_of(s) : 0u;
    xr[j] = ok[j] ? row_ids[s] : 0u;
  }
  float acc[kSlots];
  for (uint j = 0u; j < kSlots; ++j) acc[j] = 0.0;
  uint chunks = pc.cols >> 5;
  // Slots of one tile usually share an expert: the chunk is dequantized again only when it changes.
  for (uint k = 0u; k < chunks; ++k) {
    vec4 v[8];
    uint have = 0xffffffffu;
    for (uint j = 0u; j < kSlots; ++j) {
      if (!ok[j]) continue;
      if (e[j] != have) {
        dequant_chunk(kType, e[j] * pc.expert_bytes + r * pc.row_bytes, k, v);
        have = e[j];
      }
      uint xb = (xr[j] * pc.cols >> 2) + 8u * k;
      float sum = 0.0;
      for (uint i = 0u; i < 8u; ++i) sum += dot(v[i], x_at(xb + i));
      acc[j] += sum;
    }
  }
  for (uint j = 0u; j < kSlots; ++j)
    if (ok[j]) y[(s0 + j) * pc.y_stride + r] = acc[j];
}
