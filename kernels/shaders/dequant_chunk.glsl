// dequant_chunk.glsl — the weight formats' decoders shared by the shaders that read GGUF weights
// (matmul_tiled.comp, get_rows_quant.comp). The including shader declares the weight buffer as
// `uint w[]` (words; blocks need not be word-aligned) before including this file.
// Values come in chunks of 32: one Q8_0 block, one K-quant sub-block (one scale/min), 32 floats.

const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u, kBF16 = 30u;

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
void dequant_chunk(uint type, uint row_off, uint k, out vec4 v[8]) {
  if (type == kF32) {
    uint base = (row_off >> 2) + 32u * k;  // rows of 4*cols bytes: word-aligned
    for (uint i = 0u; i < 8u; ++i) {
      v[i] = uintBitsToFloat(uvec4(w[base + 4u * i], w[base + 4u * i + 1u], w[base + 4u * i + 2u], w[base + 4u * i + 3u]));
    }
  } else if (type == kF16) {
    uint base = (row_off >> 2) + 16u * k;  // rows of 2*cols bytes, cols a multiple of 32: aligned
    for (uint i = 0u; i < 8u; ++i) v[i] = vec4(unpackHalf2x16(w[base + 2u * i]), unpackHalf2x16(w[base + 2u * i + 1u]));
  } else if (type == kBF16) {
    uint base = (row_off >> 2) + 16u * k;
    for (uint i = 0u; i < 8u; ++i) {
      uint a = w[base + 2u * i], b = w[base + 2u * i + 1u];
      v[i] = uintBitsToFloat(uvec4(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
    }
  } else if (type == kQ8_0) {
    // Blocks of 34 bytes: f16 scale, 32 int8 values.
    uint blk = row_off + k * 34u;
    float d = f16at(blk);
    for (uint i = 0u; i < 8u; ++i) v[i] = d * sbytes4(u32at(blk + 2u + 4u * i));
  } else if (type == kQ4_K || type == kQ5_K) {
    // 256-value super-blocks: d, dmin (f16), 12 bytes of packed 6-bit scales/mins, [qh[32] (Q5_K)],
    // qs[128]. Sub-block sb (32 values) = low (sb even) or high (sb odd) nibbles of qs[32*(sb/2) ..];
    // Q5_K's fifth bit of value l is bit sb of qh[l].
    uint bsz = type == kQ4_K ? 144u : 176u;
    uint blk = row_off + (k >> 3) * bsz, sb = k & 7u;
    uint qs = blk + (type == kQ4_K ? 16u : 48u) + 32u * (sb >> 1), shift = 4u * (sb & 1u);
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
    bool q5 = type == kQ5_K;
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

