#version 460
// Embedding lookup from an f16 table: out[t, :] = float(table[ids[t], :]). The table is read as
// 32-bit words (two halves each) so that no 16-bit storage feature is needed.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer T { uint tw[]; };
layout(std430, binding = 1) readonly buffer I { int ids[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint ncols; uint nrows; } pc;
void main() {
  uint t = gl_WorkGroupID.y;
  uint row = uint(ids[t]);
  for (uint j = gl_WorkGroupID.x * 256u + gl_LocalInvocationID.x; j < pc.ncols; j += 256u * gl_NumWorkGroups.x) {
    uint idx = row * pc.ncols + j;
    vec2 h = unpackHalf2x16(tw[idx >> 1]);
    o[t * pc.ncols + j] = (idx & 1u) == 0u ? h.x : h.y;
  }
}
