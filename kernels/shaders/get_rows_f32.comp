#version 460
// Embedding lookup from an f32 table: out[t, :] = table[ids[t], :].
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer T { float tb[]; };
layout(std430, binding = 1) readonly buffer I { int ids[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint ncols; uint nrows; } pc;
void main() {
  uint t = gl_WorkGroupID.y;
  uint row = uint(ids[t]);
  for (uint j = gl_WorkGroupID.x * 256u + gl_LocalInvocationID.x; j < pc.ncols; j += 256u * gl_NumWorkGroups.x)
    o[t * pc.ncols + j] = tb[row * pc.ncols + j];
}
