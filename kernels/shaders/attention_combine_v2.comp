#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
// Merges split-K decode partials ([token][head][split][head_dim + 2]: acc, m, l; written by
// attention_decode_v2.comp) with the splits spread over the workgroup instead of walked by every
// invocation (attention_combine.comp): one workgroup of 128 per (head, token); the merge itself is
// attention_combine_v2.glsl's (also run by decode v2's fused form). n_splits <= kCombineMaxS
// (attention.cpp checks).
layout(local_size_x = 128) in;
layout(std430, set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(std430, set = 0, binding = 0) readonly buffer Part2 { vec2 part2[]; };
layout(std430, set = 0, binding = 1) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint head_dim; uint n_heads; uint n_splits; } pc;

const uint kCombineMaxS = 1024u, kCombineRed = 128u;
#include "attention_combine_v2.glsl"

void main() {
  const uint h = gl_WorkGroupID.x, tok = gl_WorkGroupID.y;
  const uint row = tok * pc.n_heads + h;
  combine_splits(row * pc.n_splits * (pc.head_dim + 2u), pc.n_splits, pc.head_dim, row * pc.head_dim);
}
