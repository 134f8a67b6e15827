#version 460
// Scalar fallback matmul: y[b][r] = sum_c W[r][c] * x[b][c] for weights F32 / F16 / BF16 / Q8_0
// stored as GGUF rows (input dim contiguous), f32 activations. One workgroup per (row, batch column),
// 64 invocations stride over the row and reduce in shared memory. Correct on any Vulkan 1.1 device
// (lavapipe in CI); not the bandwidth-oriented decode kernel (see docs/kernels.md).
// Weights are bound as uint words and read byte-wise because Q8_0 blocks (34 bytes) and F16 rows
// need not be 4-byte aligned.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint rows; uint cols; uint batch; uint type; uint row_bytes; } pc;

const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kBF16 = 30u;
shared float partial[64];

uint u8(uint o) { return (w[o >> 2] >> ((o & 3u) * 8u)) & 0xffu; }
uint u16(uint o) { return u8(o) | (u8(o + 1u) << 8u); }

float weight(uint row_off, uint c) {
  if (pc.type == kF32) return uintBitsToFloat(w[(row_off >> 2) + c]);
  if (pc.type == kF16) return unpackHalf2x16(u16(row_off + 2u * c)).x;
  if (pc.type == kBF16) return uintBitsToFloat(u16(row_off + 2u * c) << 16u);
  // Q8_0: blocks of 34 bytes, f16 scale then 32 int8 values.
  uint blk = row_off + (c >> 5) * 34u;
  float d = unpackHalf2x16(u16(blk)).x;
  int q = int(u8(blk + 2u + (c & 31u)) << 24) >> 24;
  return d * float(q);
}

void main() {
  uint r = gl_WorkGroupID.x, b = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  uint row_off = r * pc.row_bytes;
  float acc = 0.0;
  for (uint c = t; c < pc.cols; c += 64u) acc += weight(row_off, c) * x[b * pc.cols + c];
  partial[t] = acc;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (t < s) partial[t] += partial[t + s];
    barrier();
  }
  if (t == 0u) y[b * pc.rows + r] = partial[0];
}
