#version 460
// SwiGLU between the grouped gate/up GEMMs and the grouped down GEMM of a MoE prefill step
// (kernels/ops/moe_ffn.h): h[i] = silu(g[i]) * u[i] over [slots][ffn], written as f32 or — for a
// down GEMM on matrix units, which reads f16 activations — as f16 (kF16: two values per word).
// Binds buffer ranges (the layer op swiglu_f32.comp takes whole buffers). Grid: (groups_x, y) of
// 256 invocations, each one pair of values.
layout(local_size_x = 256) in;
layout(constant_id = 0) const uint kF16 = 0u;
layout(std430, set = 0, binding = 0) readonly buffer G { vec2 g[]; };
layout(std430, set = 0, binding = 1) readonly buffer U { vec2 u[]; };
layout(std430, set = 0, binding = 2) writeonly buffer H { vec2 h[]; };
layout(std430, set = 0, binding = 2) writeonly buffer H16 { uint h16[]; };
layout(push_constant) uniform P { uint pairs; uint groups_x; } pc;
void main() {
  uint i = (gl_WorkGroupID.y * pc.groups_x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i >= pc.pairs) return;
  vec2 a = g[i];
  vec2 v = a / (1.0 + exp(-a)) * u[i];
  if (kF16 != 0u) h16[i] = packHalf2x16(v); else h[i] = v;
}
