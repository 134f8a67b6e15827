#version 460
// RoPE, NEOX style (Qwen3): for x[t, h, :] of length d, pairs (i, i + d/2) for i < d/2 are rotated by
// angle pos[t] * base^(-2i/d). In place. One invocation per pair.
layout(local_size_x = 256) in;
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Pos { int pos[]; };
layout(push_constant) uniform P { uint head_dim; uint heads; uint tokens; float base; uint row_groups; } pc;
void main() {
  uint half_d = pc.head_dim / 2u;
  uint id = (gl_WorkGroupID.y * pc.row_groups + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (id >= half_d * pc.heads * pc.tokens) return;
  uint i = id % half_d;
  uint th = id / half_d;          // t * heads + h
  uint t = th / pc.heads;
  // why: exp2/log2 form keeps the frequency accurate for base 1e6 (Qwen3) in fp32.
  float freq = exp2(-2.0 * float(i) / float(pc.head_dim) * log2(pc.base));
  float ang = float(pos[t]) * freq;
  float c = cos(ang), s = sin(ang);
  uint b = th * pc.head_dim;
  float x0 = x[b + i], x1 = x[b + i + half_d];
  x[b + i] = x0 * c - x1 * s;
  x[b + i + half_d] = x0 * s + x1 * c;
}
