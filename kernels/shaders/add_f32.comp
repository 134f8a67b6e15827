#version 460
// Residual add: out[i] = a[i] + b[i] over n float32 elements. out may alias a (in-place residual).
// The grid is 2-D so that n above 65535 * 256 still fits the workgroup-count limits.
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) readonly buffer B { float b[]; };
layout(std430, set = 0, binding = 2) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n; uint row_groups; } pc;
void main() {
  uint i = (gl_WorkGroupID.y * pc.row_groups + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i < pc.n) o[i] = a[i] + b[i];
}
