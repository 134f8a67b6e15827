#version 460
#extension GL_GOOGLE_include_directive : require
// Matmul for every weight type: y[b][r] = sum_c W[r][c] * x[b][c], weights F32/F16/BF16/Q8_0/Q4_K/Q5_K/
// Q6_K stored as GGUF rows (input dim contiguous), f32 activations.
//
// Work split: values are handled in chunks of 32 (one Q8_0 block, one K-quant sub-block, with ONE
// scale/min). A workgroup of 64 invocations owns rpt * 64 / tpr rows and up to kCols batch columns;
// the tpr invocations of a row group stride over its chunks. Each invocation dequantizes a chunk once into
// registers — the scale decode is per chunk, not per value — and multiplies it against every batch
// column of its tile, so prefill and batched decode pay the dequantization once per kCols tokens.
// Partial sums are reduced in shared memory per row segment. Correct on any Vulkan 1.1 device (the
// reference path in CI on lavapipe); the tensor-core path is separate (docs/kernels.md).
// Weights are bound as uint words and read byte-wise because Q8_0 blocks (34 bytes) and Q6_K blocks
// (210 bytes) need not be 4-byte aligned.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer X16 { uvec2 xh[]; };  // the same binding, f16 activations
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
// tpr: invocations per row, a power of two 1..64 chosen by the host from cols; y_stride: elements
// between consecutive batch rows of y (rows, or more when a large matrix is split into row ranges).
layout(push_constant) uniform P {
  uint rows; uint cols; uint batch; uint type; uint row_bytes; uint tpr; uint y_stride; uint rpt;
} pc;

const uint kCols = 8u;  // batch columns per workgroup
// Rows per invocation, a specialization constant: 1 for decode (fewer registers, more warps in
// flight), 4 for batches. pc.rpt equals it.
layout(constant_id = 0) const uint kRows = 4u;
shared float partial[kRows * kCols][64];

#include "dequant_chunk.glsl"

// f16 activations (a specialization constant, so the f32 path pays nothing for it).
layout(constant_id = 1) const uint kXF16 = 0u;

// Activations 4i .. 4i+3 (f32, or f16 when kXF16: four halves per uvec2, the same index).
vec4 x_at(uint i) {
  if (kXF16 != 0u) {
    uvec2 h = xh[i];
    return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
  }
  return x4[i];
}

void main() {
  uint t = gl_LocalInvocationID.x, tpr = pc.tpr, rpt = pc.rpt;
  // This invocation's rows: row0 .. row0 + rpt - 1; a batch column's x chunk, once loaded, is used
  // for all of them (rpt times less activation traffic than one row per invocation).
  uint row0 = (gl_WorkGroupID.x * (64u / tpr) + t / tpr) * rpt, lane = t % tpr;
  uint b0 = gl_WorkGroupID.y * kCols;
  uint nb = min(kCols, pc.batch - b0);
  float acc[kRows][kCols];
  for (uint r = 0u; r < kRows; ++r)
    for (uint j = 0u; j < kCols; ++j) acc[r][j] = 0.0;
  uint nr = row0 < pc.rows ? min(rpt, pc.rows - row0) : 0u;
  uint chunks = pc.cols >> 5;
  // Loops run to the constants kRows / kCols and break early, so that they unroll and the arrays
  // stay in registers (a loop bound known only at run time makes them local memory).
  for (uint k = lane; k < chunks && nr > 0u; k += tpr) {
    vec4 v[kRows][8];
    for (uint r = 0u; r < kRows; ++r) {
      if (r >= nr) break;
      dequant_chunk(pc.type, (row0 + r) * pc.row_bytes, k, v[r]);
    }
    for (uint j = 0u; j < kCols; ++j) {
      if (j >= nb) break;
      uint xo = ((b0 + j) * pc.cols >> 2) + 8u * k;
      vec4 xv[8];
      for (uint i = 0u; i < 8u; ++i) xv[i] = x_at(xo + i);
      for (uint r = 0u; r < kRows; ++r) {
        if (r >= nr) break;
        vec4 s = v[r][0] * xv[0];
        for (uint i = 1u; i < 8u; ++i) s += v[r][i] * xv[i];
        acc[r][j] += (s.x + s.y) + (s.z + s.w);
      }
    }
  }
  if (tpr == 1u) {  // uniform: whole rows are this invocation's, no reduction
    for (uint r = 0u; r < kRows; ++r) {
      if (r >= nr) break;
      for (uint j = 0u; j < kCols; ++j) {
        if (j >= nb) break;
        y[(b0 + j) * pc.y_stride + row0 + r] = acc[r][j];
      }
    }
    return;
  }
  for (uint r = 0u; r < kRows; ++r)
    for (uint j = 0u; j < kCols; ++j) partial[r * kCols + j][t] = acc[r][j];
  barrier();
  for (uint s = tpr >> 1; s > 0u; s >>= 1) {
    if (lane < s) {
      for (uint r = 0u; r < kRows; ++r) {
        for (uint j = 0u; j < kCols; ++j) {
          if (j >= nb) break;
          partial[r * kCols + j][t] += partial[r * kCols + j][t + s];
        }
      }
    }
    barrier();
  }
  if (lane == 0u) {
    for (uint r = 0u; r < kRows; ++r) {
      if (r >= nr) break;
      for (uint j = 0u; j < kCols; ++j) {
        if (j >= nb) break;
        y[(b0 + j) * pc.y_stride + row0 + r] = partial[r * kCols + j][t];
      }
    }
  }
}
