#version 460
// The sum of a split-K matmul (kernels/ops/matmul.h):
//   y[c·y_stride + r] = Σ_z p[z·split_stride + c·rows + r]
// for every batch column c < batch and row r < rows, the partials added in order z = 0, 1, .. (the
// same result every run). One invocation per output; the grid is 2-D so that batch · rows above 65535 · 256
// still fits the workgroup-count limits.
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer Partials { float p[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P {
  uint rows; uint batch; uint y_stride; uint splits; uint split_stride; uint row_groups;
} pc;
void main() {
  const uint i = (gl_WorkGroupID.y * pc.row_groups + gl_WorkGroupID.x) * 256u + gl_LocalInvocationID.x;
  if (i >= pc.rows * pc.batch) return;
  float s = p[i];
  for (uint z = 1u; z < pc.splits; ++z) s += p[z * pc.split_stride + i];
  y[(i / pc.rows) * pc.y_stride + i % pc.rows] = s;
}
