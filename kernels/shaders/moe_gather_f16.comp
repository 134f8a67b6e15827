#version 460
// MoE prefill: the FFN input's f16 rows put in slot order, xg[slot] = xn[row_ids[slot]] (ops::MoeFfn,
// TROVE_MOE_GATHER), so that the experts' grouped gate/up GEMMs read their activation tiles as they
// lie (GroupedMatmulCall::x_by_slot) instead of gathering every element. Rows are copied as 16-byte
// words: cols is a multiple of 8 halves (MoeFfn checks). Grid: (word groups, slots).
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer X { uvec4 x[]; };       // f16 [rows][cols], 8 halves a word
layout(std430, binding = 1) readonly buffer R { uint row_ids[]; };  // [slots]
layout(std430, binding = 2) writeonly buffer G { uvec4 xg[]; };     // f16 [slots][cols]
layout(push_constant) uniform P { uint words; uint slots; } pc;    // words = cols / 8
void main() {
  const uint slot = gl_WorkGroupID.y, w = gl_WorkGroupID.x * 256u + gl_LocalInvocationID.x;
  if (slot >= pc.slots || w >= pc.words) return;
  xg[slot * pc.words + w] = x[row_ids[slot] * pc.words + w];
}
