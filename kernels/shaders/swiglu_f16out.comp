#version 460
// SwiGLU with f16 output (the down projection's input in prefill): out[i] = f16(silu(gate[i]) * up[i]),
// two values per invocation (n even), silu(g) = g / (1 + exp(-g)).
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer G { vec2 g[]; };
layout(std430, binding = 1) readonly buffer U { vec2 u[]; };
layout(std430, binding = 2) writeonly buffer O { uint o[]; };  // f16 pairs
layout(push_constant) uniform P { uint n; uint row_groups; } pc;  // n: pairs
void main() {
  uint i = (gl_WorkGroupID.y * pc.row_groups + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i < pc.n) {
    vec2 v = g[i];
    o[i] = packHalf2x16(v / (1.0 + exp(-v)) * u[i]);
  }
}
