#version 460
// SwiGLU: out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer G { float g[]; };
layout(std430, binding = 1) readonly buffer U { float u[]; };
layout(std430, binding = 2) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n; uint row_groups; } pc;
void main() {
  uint i = (gl_WorkGroupID.y * pc.row_groups + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i < pc.n) { float v = g[i]; o[i] = v / (1.0 + exp(-v)) * u[i]; }
}
