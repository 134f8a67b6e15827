#version 460
// RMSNorm with f16 output, for the rows a large-batch matmul reads next (prefill): out[r,i] =
// f16(x[r,i] / sqrt(mean_i(x[r,:]^2) + eps) * w[i]), written as pairs (ncols even). The matrix-unit
// matmuls round activations to f16 anyway, so producing them once here keeps every row-tile
// workgroup from converting the same rows again (docs/kernels.md). One workgroup per row.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { float w[]; };
layout(std430, binding = 2) writeonly buffer O { uint o[]; };  // f16 pairs
layout(push_constant) uniform P { uint ncols; float eps; } pc;
shared float partial[256];
void main() {
  uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  uint base = row * pc.ncols;
  float s = 0.0;
  for (uint i = gl_LocalInvocationID.x; i < pc.ncols; i += 256u) { float v = x[base + i]; s += v * v; }
  partial[gl_LocalInvocationID.x] = s;
  barrier();
  for (uint stride = 128u; stride > 0u; stride >>= 1) {
    if (gl_LocalInvocationID.x < stride) partial[gl_LocalInvocationID.x] += partial[gl_LocalInvocationID.x + stride];
    barrier();
  }
  float scale = inversesqrt(partial[0] / float(pc.ncols) + pc.eps);
  for (uint i = 2u * gl_LocalInvocationID.x; i < pc.ncols; i += 512u) {
    o[(base + i) >> 1] = packHalf2x16(vec2(x[base + i] * scale * w[i], x[base + i + 1u] * scale * w[i + 1u]));
  }
}
