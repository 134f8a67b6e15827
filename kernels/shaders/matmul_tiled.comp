#version 460
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

const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u, kBF16 = 30u;
const uint kCols = 8u;  // batch columns per workgroup
shared float partial[kCols][64];

// The 4 bytes at byte offset o, little-endian, whatever o's alignment (two word loads when unaligned;
// buffers are padded to whole words, so the second load stays inside).
uint u32at(uint o) {
  uint i = o >> 2, sh = (o & 3u) * 8u;
  uint a = w[i];
  return sh == 0u ? a : (a >> sh) | (w[i + 1u] << (32u - sh));
}
float f16at(uint o) { return unpackHalf2x16(u32at(o)).x; }
vec4 bytes4(uint word) { return vec4(uvec4(word, word >> 8u, word >> 16u, word >> 24u) & 0xffu); }
vec4 sbytes4(uint word) {
  int s = int(word);
  return vec4(bitfieldExtract(s, 0, 8), bitfieldExtract(s, 8, 8), bitfieldExtract(s, 16, 8), bitfieldExtract(s, 24, 8));
}

// The 32 weights of chunk k (values 32k .. 32k+31) of the row starting at byte row_off, as 8 vec4.
void dequant_chunk(uint row_off, uint k, out vec4 v[8]) {
  if (pc.type == kF32) {
    uint base = (row_off >> 2) + 32u * k;  // rows of 4*cols bytes: word-aligned
    for (uint i = 0u; i < 8u; ++i) {
      v[i] = uintBitsToFloat(uvec4(w[base + 4u * i], w[base + 4u * i + 1u], w[base + 4u * i + 2u], w[base + 4u * i + 3u]));
    }
  } else if (pc.type == kF16) {
    uint base = (row_off >> 2) + 16u * k;  // rows of 2*cols bytes, cols a multiple of 32: aligned
    for (uint i = 0u; i < 8u; ++i) v[i] = vec4(unpackHalf2x16(w[base + 2u * i]), unpackHalf2x16(w[base + 2u * i + 1u]));
  } else if (pc.type == kBF16) {
    uint base = (row_off >> 2) + 16u * k;
    for (uint i = 0u; i < 8u; ++i) {
      uint a = w[base + 2u * i], b = w[base + 2u * i + 1u];
      v[i] = uintBitsToFloat(uvec4(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
    }
  } else if (pc.type == kQ8_0) {
    // Blocks of 34 bytes: f16 scale, 32 int8 values.
    uint blk = row_off + k * 34u;
    float d = f16at(blk);
    for (uint i = 0u; i < 8u; ++i) v[i] = d * sbytes4(u32at(blk + 2u + 4u * i));
  } else if (pc.type == kQ4_K || pc.type == kQ5_K) {
    // 256-value super-blocks: d, dmin (f16), 12 bytes of packed 6-bit scales/mins, [qh[32] (Q5_K)],
    // qs[128]. Sub-block sb (32 values) = low (sb even) or high (sb odd) nibbles of qs[32*(sb/2) ..];
    // Q5_K's fifth bit of value l is bit sb of qh[l].
    uint bsz = pc.type == kQ4_K ? 144u : 176u;
    uint blk = row_off + (k >> 3) * bsz, sb = k & 7u;
    uint qs = blk + (pc.type == kQ4_K ? 16u : 48u) + 32u * (sb >> 1), shift = 4u * (sb & 1u);
    uint sc, mn;
    if (sb < 4u) {
      sc = bitfieldExtract(u32at(blk + 4u + sb), 0, 6);
      mn = bitfieldExtract(u32at(blk + 8u + sb), 0, 6);
    } else {
      uint a = u32at(blk + 8u + sb) & 0xffu, lo_sc = u32at(blk + sb) & 0xffu, lo_mn = u32at(blk + 4u + sb) & 0xffu;
      sc = (a & 15u) | ((lo_sc >> 6) << 4);
      mn = (a >> 4) | ((lo_mn >> 6) << 4);
    }
    float scale = f16at(blk) * float(sc), mins = f16at(blk + 2u) * float(mn);
    bool q5 = pc.type == kQ5_K;
    for (uint i = 0u; i < 8u; ++i) {
      uint q = (u32at(qs + 4u * i) >> shift) & 0x0f0f0f0fu;
      if (q5) q |= ((u32at(blk + 16u + 4u * i) >> sb) & 0x01010101u) << 4;
      v[i] = scale * bytes4(q) - mins;
    }
  } else {
    // Q6_K: 210-byte super-blocks: ql[128], qh[64], int8 scales[16], f16 d. Chunk k covers half
    // n = sb/4, quadrant g = sb%4 of that half: low 4 bits from ql (low nibbles for g < 2), high 2
    // bits from qh (bits 2g), q = 6-bit value - 32; one int8 scale per 16 values.
    uint blk = row_off + (k >> 3) * 210u, sb = k & 7u, n = sb >> 2, g = sb & 3u;
    float d = f16at(blk + 208u);
    uint ql = blk + n * 64u + ((g & 1u) << 5), qh = blk + 128u + n * 32u;
    uint lshift = (g < 2u) ? 0u : 4u, hshift = 2u * g;
    vec4 sc = sbytes4(u32at(blk + 192u + n * 8u + 2u * g));
    float s0 = d * sc.x, s1 = d * sc.y;
    for (uint i = 0u; i < 8u; ++i) {
      uint q = ((u32at(ql + 4u * i) >> lshift) & 0x0f0f0f0fu) | (((u32at(qh + 4u * i) >> hshift) & 0x03030303u) << 4);
      v[i] = (i < 4u ? s0 : s1) * (bytes4(q) - 32.0);
    }
  }
}

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
      dequant_chunk(row_off, k, v);
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
