#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
// A GGUF weight matrix to f16 rows, for the prefill GEMMs (TROVE_PREFILL_WEIGHTS=f16,
// engine/runtime/forward.cpp; ops::DequantF16): out[r][c] = the value at row r, column c, computed in f32
// by the matmuls' decoders (dequant_chunk.glsl) and rounded to f16 on the store — what the matrix-unit
// kernels round each decoded weight to before their products. One invocation per chunk of 32 values
// (chunk id = row · chunks_per_row + chunk of the row), 4 × 16-byte stores each.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Wq { uint w[]; };
layout(std430, binding = 1) writeonly buffer O { uvec4 o4[]; };
layout(push_constant) uniform P { uint chunks_per_row; uint chunks; uint type; uint row_bytes; uint groups_x; } pc;

#include "dequant_chunk.glsl"

void main() {
  const uint id = (gl_WorkGroupID.y * pc.groups_x + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (id >= pc.chunks) return;
  const uint r = id / pc.chunks_per_row, k = id % pc.chunks_per_row;
  vec4 v[8];
  dequant_chunk(pc.type, r * pc.row_bytes, k, v);
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
    o4[4u * id + i] = uvec4(packHalf2x16(v[2u * i].xy), packHalf2x16(v[2u * i].zw), packHalf2x16(v[2u * i + 1u].xy),
                            packHalf2x16(v[2u * i + 1u].zw));
  }
}
