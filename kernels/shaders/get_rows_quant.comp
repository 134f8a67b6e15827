#version 460
#extension GL_GOOGLE_include_directive : require
// Embedding lookup from a table of GGUF rows in any weight format (BF16, Q8_0, Q4_K, Q5_K, Q6_K, and
// F32/F16 too): out[t, :] = dequantize(table row ids[t]). One invocation per chunk of 32 values.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer T { uint w[]; };
layout(std430, binding = 1) readonly buffer I { int ids[]; };
layout(std430, binding = 2) writeonly buffer O { vec4 o4[]; };
layout(push_constant) uniform P { uint ncols; uint nrows; uint type; uint row_bytes; } pc;

#include "dequant_chunk.glsl"

void main() {
  uint t = gl_WorkGroupID.y;
  uint k = gl_WorkGroupID.x * 256u + gl_LocalInvocationID.x;
  if (k >= pc.ncols / 32u) return;
  vec4 v[8];
  dequant_chunk(pc.type, uint(ids[t]) * pc.row_bytes, k, v);
  uint base = (t * pc.ncols + 32u * k) / 4u;
  for (uint i = 0u; i < 8u; ++i) o4[base + i] = v[i];
}
