#version 460
#extension GL_GOOGLE_include_directive : require
// Matmul for every weight type: y[b][r] = sum_c W[r][c] * x[b][c], weights F32/F16/BF16/Q8_0/Q4_K/Q5_K/
// Q6_K stored as GGUF rows (input dim contiguous), f32 activations.
//
// Work split: values are handled in chunks of 32 (one Q8_0 block, one K-quant sub-block, with ONE
// scale/min). A workgroup of 64 invocations owns 64 / tpr rows and up to kCols batch columns; the tpr
// invocations of a row stride over its chunks. Each invocation dequantizes a chunk once into
// registers — the scale decode is per chunk, not per value — and multiplies it against every batch
// column of its tile, so prefill and batched decode pay the dequantization once per kCols tokens.
// Partial sums are reduced in shared memory per row segment. Correct on any Vulkan 1.1 device (the
// reference path in CI on lavapipe); the tensor-core path is separate (docs/kernels.md).
// Weights are bound as uint words and read byte-wise because Q8_0 blocks (34 bytes) and Q6_K blocks
// (210 bytes) need not be 4-byte aligned.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
// tpr: invocations per row, a power of two 1..64 chosen by the host from cols; y_stride: elements
// between consecutive batch rows of y (rows, or more when a large matrix is split into row ranges).
layout(push_constant) uniform P { uint rows; uint cols; uint batch; uint type; uint row_bytes; uint tpr; uint y_stride; } pc;

const uint kCols = 8u;  // batch columns per workgroup
shared float partial[kCols][64];

#include "dequant_chunk.glsl"

void main() {
  uint t = gl_LocalInvocationID.x, tpr = pc.tpr;
  uint row = gl_WorkGroupID.x * (64u / tpr) + t / tpr, lane = t % tpr;
  uint b0 = gl_WorkGroupID.y * kCols;
  uint nb = min(kCols, pc.batch - b0);
  float acc[kCols];
  for (uint j = 0u; j < kCols; ++j) acc[j] = 0.0;
  if (row < pc.rows) {
    uint row_off = row * pc.row_bytes, chunks = pc.cols >> 5;
    for (uint k = lane; k < chunks; k += tpr) {
      vec4 v[8];
      dequant_chunk(pc.type, row_off, k, v);
      for (uint j = 0u; j < nb; ++j) {
        uint xo = ((b0 + j) * pc.cols >> 2) + 8u * k;
        vec4 s = v[0] * x4[xo];
        for (uint i = 1u; i < 8u; ++i) s += v[i] * x4[xo + i];
        acc[j] += (s.x + s.y) + (s.z + s.w);
      }
    }
  }
  if (tpr == 1u) {  // uniform: the whole row is this invocation's, no reduction
    if (row < pc.rows) {
      for (uint j = 0u; j < nb; ++j) y[(b0 + j) * pc.y_stride + row] = acc[j];
    }
    return;
  }
  for (uint j = 0u; j < nb; ++j) partial[j][t] = acc[j];
  barrier();
  for (uint s = tpr >> 1; s > 0u; s >>= 1) {
    if (lane < s) {
      for (uint j = 0u; j < nb; ++j) partial[j][t] += partial[j][t + s];
    }
    barrier();
  }
  if (lane == 0u && row < pc.rows) {
    for (uint j = 0u; j < nb; ++j) y[(b0 + j) * pc.y_stride + row] = partial[j][t];
  }
}
