#version 460
// Scalar fallback matmul: y[b][r] = sum_c W[r][c] * x[b][c] for weights F32/F16/BF16/Q8_0/Q4_K/Q5_K/Q6_K
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

const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u, kBF16 = 30u;
shared float partial[64];

uint u8(uint o) { return (w[o >> 2] >> ((o & 3u) * 8u)) & 0xffu; }
uint u16(uint o) { return u8(o) | (u8(o + 1u) << 8u); }

float weight(uint row_off, uint c) {
  if (pc.type == kF32) return uintBitsToFloat(w[(row_off >> 2) + c]);
  if (pc.type == kF16) return unpackHalf2x16(u16(row_off + 2u * c)).x;
  if (pc.type == kBF16) return uintBitsToFloat(u16(row_off + 2u * c) << 16u);
  if (pc.type == kQ4_K || pc.type == kQ5_K) {
    // 256-value super-blocks: d, dmin (f16), 12 bytes of packed 6-bit scales/mins, [qh (Q5_K)], qs.
    // Values come in 4 chunks of 64: low nibbles of qs[32j + l] are sub-block 2j, high nibbles 2j+1.
    uint bsz = pc.type == kQ4_K ? 144u : 176u;
    uint blk = row_off + (c >> 8) * bsz;
    uint i = c & 255u, sb = i >> 5, j = i >> 6, l = i & 31u;
    uint qs_off = pc.type == kQ4_K ? 16u : 48u;
    uint q = (u8(blk + qs_off + 32u * j + l) >> (4u * (sb & 1u))) & 15u;
    if (pc.type == kQ5_K) q += ((u8(blk + 16u + l) >> sb) & 1u) << 4;
    uint sc, mn;
    if (sb < 4u) {
      sc = u8(blk + 4u + sb) & 63u;
      mn = u8(blk + 8u + sb) & 63u;
    } else {
      sc = (u8(blk + 8u + sb) & 15u) | ((u8(blk + sb) >> 6) << 4);
      mn = (u8(blk + 8u + sb) >> 4) | ((u8(blk + 4u + sb) >> 6) << 4);
    }
    float d = unpackHalf2x16(u16(blk)).x, dmin = unpackHalf2x16(u16(blk + 2u)).x;
    return d * float(sc) * float(q) - dmin * float(mn);
  }
  if (pc.type == kQ6_K) {
    // 210-byte super-blocks: ql[128], qh[64], int8 scales[16], f16 d. Two halves of 128 values,
    // each four quadrants of 32 sharing ql/qh bytes; q = 6-bit value - 32.
    uint blk = row_off + (c >> 8) * 210u;
    uint i = c & 255u, n = i >> 7, k = i & 127u, g = k >> 5, l = k & 31u;
    uint ql = u8(blk + n * 64u + l + ((g & 1u) << 5));
    uint lo = (g < 2u) ? (ql & 15u) : (ql >> 4);
    uint hi = (u8(blk + 128u + n * 32u + l) >> (2u * g)) & 3u;
    int q = int(lo | (hi << 4)) - 32;
    int sc = int(u8(blk + 192u + n * 8u + (l >> 4) + 2u * g) << 24) >> 24;
    return unpackHalf2x16(u16(blk + 208u)).x * float(sc) * float(q);
  }
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
