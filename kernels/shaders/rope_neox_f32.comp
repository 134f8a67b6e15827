#version 460
// RoPE, NEOX style (Qwen3): for x[t, h, :] of length d, pairs (i, i + d/2) for i < d/2 are rotated by
// angle pos[t] * base^(-2i/d). In place. One invocation per pair.
// why: in float32, pos × freq is off by up to pos × 6e-8 rad (2e-3 at 32k), which a long context
// notices. The host gives each pair's frequency in turns per position as a 64-bit binary fraction;
// pos × turns mod 1 is then exact in integer arithmetic, and only the final angle in [0, 2π) is
// rounded to float32 (~4e-7 rad).
layout(local_size_x = 256) in;
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer Pos { int pos[]; };
layout(std430, binding = 2) readonly buffer Turns { uvec2 turns[]; };  // {lo, hi} per pair i
layout(push_constant) uniform P { uint head_dim; uint heads; uint tokens; float base; uint row_groups; } pc;
void main() {
  uint half_d = pc.head_dim / 2u;
  uint id = (gl_WorkGroupID.y * pc.row_groups + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (id >= half_d * pc.heads * pc.tokens) return;
  uint i = id % half_d;
  uint th = id / half_d;          // t * heads + h
  uint t = th / pc.heads;
  uint p = uint(pos[t]);
  uvec2 f = turns[i];
  uint hi1, lo1, hi2, lo2;
  umulExtended(p, f.x, hi1, lo1);
  umulExtended(p, f.y, hi2, lo2);
  uint frac_hi = hi1 + lo2;  // bits 32..63 of frac(p × turns); the integer turns fall off
  float ang = (float(frac_hi) * 2.3283064e-10 + float(lo1) * 5.421011e-20) * 6.2831853;
  float c = cos(ang), s = sin(ang);
  uint b = th * pc.head_dim;
  float x0 = x[b + i], x1 = x[b + i + half_d];
  x[b + i] = x0 * c - x1 * s;
  x[b + i + half_d] = x0 * s + x1 * c;
}
