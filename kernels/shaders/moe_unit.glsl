// moe_unit.glsl — the weight formats' decoders for the expert-indexed matvecs (moe_experts.comp,
// moe_down.comp): one "unit" = 64 weights of one row, returned as two chunks of 32 (lo, hi) with the
// row columns they belong to. Every format's natural 64-value piece is one unit, so each lane of a
// subgroup decodes whole units and every byte it loads is used:
//   F32 / F16 / BF16   columns 64u .. 64u+63 (16-byte loads: rows are 128 / 64-byte multiples)
//   Q8_0               blocks 2u and 2u+1 (34 bytes each, 2-byte aligned: aligned words + shifts)
//   Q4_K / Q5_K        sub-blocks 2j and 2j+1 of super-block u/4 (j = u%4): the 32 qs bytes holding
//                      both as low/high nibbles, the header (d, dmin, 12 scale bytes) in one uvec4
//                      (144 / 176-byte blocks are 16-byte multiples: all loads are uvec4)
//   Q6_K               chunks g = h and g = h+2 of half n (u%4 = 2n+h): the same 32 ql bytes (low /
//                      high nibbles) and the half's 32 qh bytes (bits 2h / 2h+4); 210-byte blocks are
//                      only 2-byte aligned, so ql/qh come as 9 aligned words funnel-shifted to 8
// The block layouts are kernels/quant/quant.h's (the only definition; dequant_chunk.glsl decodes the
// same values 32 at a time). A unit whose hi chunk starts at or past `cols` (F32/F16/BF16/Q8_0 rows
// of 32 mod 64 values) returns hi = 0 and never loads it.
//
// Included once per weight binding. The includer defines, before each #include:
//   UNIT_FN     name of the decoder to generate     UNIT_LOAD8  name of its 32-byte loader
//   UNIT_W(i)   word i of the binding (uint)        UNIT_W4(i)  16-byte word i of the binding (uvec4)

#ifndef MOE_UNIT_COMMON
#define MOE_UNIT_COMMON
const uint kF32 = 0u, kF16 = 1u, kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u, kBF16 = 30u;
vec4 unit_bytes4(uint word) { return vec4(uvec4(word, word >> 8u, word >> 16u, word >> 24u) & 0xffu); }
vec4 unit_sbytes4(uint word) {
  int s = int(word);
  return vec4(bitfieldExtract(s, 0, 8), bitfieldExtract(s, 8, 8), bitfieldExtract(s, 16, 8), bitfieldExtract(s, 24, 8));
}
// Byte i (0..11) of a K-quant's 12 packed scale bytes held in hdr.yzw.
uint unit_kbyte(uvec4 hdr, uint i) {
  uint word = i < 4u ? hdr.y : (i < 8u ? hdr.z : hdr.w);
  return (word >> (8u * (i & 3u))) & 0xffu;
}
// Scale and min (6 bits each) of K-quant sub-block s (0..7), as ggml's get_scale_min_k4.
uvec2 unit_kscale(uvec4 hdr, uint s) {
  if (s < 4u) return uvec2(unit_kbyte(hdr, s) & 63u, unit_kbyte(hdr, s + 4u) & 63u);
  uint a = unit_kbyte(hdr, s + 4u);
  return uvec2((a & 15u) | ((unit_kbyte(hdr, s - 4u) >> 6) << 4), (a >> 4) | ((unit_kbyte(hdr, s) >> 6) << 4));
}
// Rows' value count per unit: ceil(cols / 64).
uint unit_count(uint cols) { return (cols + 63u) >> 6; }
#endif

// The 32 bytes at byte offset o (any alignment) as 8 little-endian words: 8 or 9 aligned loads.
void UNIT_LOAD8(uint o, out uint q[8]) {
  uint i = o >> 2, sh = (o & 3u) * 8u;
  uint a[9];
  for (uint k = 0u; k < 8u; ++k) a[k] = UNIT_W(i + k);
  a[8] = sh == 0u ? 0u : UNIT_W(i + 8u);  // past the block only when unaligned (buffers are word-padded)
  for (uint k = 0u; k < 8u; ++k) q[k] = sh == 0u ? a[k] : (a[k] >> sh) | (a[k + 1u] << (32u - sh));
}

// Unit u of the row starting at byte `row` (a multiple of 16 for F32/F16/BF16/Q4_K/Q5_K, as every
// row and expert of those formats is): lo = columns c_lo .. c_lo+31, hi = c_hi .. c_hi+31.
void UNIT_FN(const uint type, uint row, uint u, uint cols, out vec4 lo[8], out vec4 hi[8], out uint c_lo,
             out uint c_hi) {
  if (type == kQ4_K || type == kQ5_K) {
    const bool q5 = type == kQ5_K;
    uint sb = u >> 2, j = u & 3u;
    uint b = (row >> 4) + sb * (q5 ? 11u : 9u);  // in uvec4s
    uvec4 hdr = UNIT_W4(b);
    vec2 dm = unpackHalf2x16(hdr.x);
    uvec2 s0 = unit_kscale(hdr, 2u * j), s1 = unit_kscale(hdr, 2u * j + 1u);
    float d0 = dm.x * float(s0.x), m0 = dm.y * float(s0.y), d1 = dm.x * float(s1.x), m1 = dm.y * float(s1.y);
    uint qs = b + (q5 ? 3u : 1u) + 2u * j;
    uvec4 qa = UNIT_W4(qs), qb = UNIT_W4(qs + 1u);
    uint q[8] = uint[8](qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w);
    uint h[8] = uint[8](0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
    if (q5) {
      uvec4 ha = UNIT_W4(b + 1u), hb = UNIT_W4(b + 2u);
      h = uint[8](ha.x, ha.y, ha.z, ha.w, hb.x, hb.y, hb.z, hb.w);
    }
    for (uint i = 0u; i < 8u; ++i) {
      uint l = q[i] & 0x0f0f0f0fu, hh = (q[i] >> 4) & 0x0f0f0f0fu;
      if (q5) {
        l |= ((h[i] >> (2u * j)) & 0x01010101u) << 4;
        hh |= ((h[i] >> (2u * j + 1u)) & 0x01010101u) << 4;
      }
      lo[i] = d0 * unit_bytes4(l) - m0;
      hi[i] = d1 * unit_bytes4(hh) - m1;
    }
    c_lo = sb * 256u + 64u * j;
    c_hi = c_lo + 32u;
  } else if (type == kQ6_K) {
    uint sb = u >> 2, n = (u >> 1) & 1u, hf = u & 1u;
    uint blk = row + sb * 210u;
    uint ql[8], qh[8];
    UNIT_LOAD8(blk + 64u * n + 32u * hf, ql);
    UNIT_LOAD8(blk + 128u + 32u * n, qh);
    uint sc_o = blk + 192u + 8u * n + 2u * hf;  // int8 scales of chunk g=hf (2) and g=hf+2 (2, 4 bytes on)
    uint i0 = sc_o >> 2, sh0 = (sc_o & 3u) * 8u;
    uint w0 = UNIT_W(i0), w1 = UNIT_W(i0 + 1u), w2 = sh0 == 0u ? 0u : UNIT_W(i0 + 2u);
    uint sc_lo = sh0 == 0u ? w0 : (w0 >> sh0) | (w1 << (32u - sh0));
    uint sc_hi = sh0 == 0u ? w1 : (w1 >> sh0) | (w2 << (32u - sh0));
    vec4 sl = unit_sbytes4(sc_lo), shv = unit_sbytes4(sc_hi);
    uint dofs = blk + 208u;
    uint dw = UNIT_W(dofs >> 2);
    float d = unpackHalf2x16((dofs & 2u) != 0u ? dw >> 16 : dw).x;
    float a0 = d * sl.x, a1 = d * sl.y, b0 = d * shv.x, b1 = d * shv.y;
    for (uint i = 0u; i < 8u; ++i) {
      uint l = (ql[i] & 0x0f0f0f0fu) | (((qh[i] >> (2u * hf)) & 0x03030303u) << 4);
      uint hh = ((ql[i] >> 4) & 0x0f0f0f0fu) | (((qh[i] >> (2u * hf + 4u)) & 0x03030303u) << 4);
      lo[i] = (i < 4u ? a0 : a1) * (unit_bytes4(l) - 32.0);
      hi[i] = (i < 4u ? b0 : b1) * (unit_bytes4(hh) - 32.0);
    }
    c_lo = sb * 256u + 128u * n + 32u * hf;
    c_hi = c_lo + 64u;
  } else if (type == kQ8_0) {
    c_lo = 64u * u;
    c_hi = c_lo + 32u;
    for (uint half_ = 0u; half_ < 2u; ++half_) {
      vec4 v[8];
      if (half_ == 1u && c_hi >= cols) {
        for (uint i = 0u; i < 8u; ++i) v[i] = vec4(0.0);
      } else {
        uint blk = row + (2u * u + half_) * 34u;
        uint dw = UNIT_W(blk >> 2);
        float d = unpackHalf2x16((blk & 2u) != 0u ? dw >> 16 : dw).x;
        uint q[8];
        UNIT_LOAD8(blk + 2u, q);
        for (uint i = 0u; i < 8u; ++i) v[i] = d * unit_sbytes4(q[i]);
      }
      if (half_ == 0u) lo = v; else hi = v;
    }
  } else {
    // F32 / F16 / BF16: plain columns, 16-byte loads.
    c_lo = 64u * u;
    c_hi = c_lo + 32u;
    bool has_hi = c_hi < cols;
    if (type == kF32) {
      uint b = (row >> 4) + 16u * u;
      for (uint i = 0u; i < 8u; ++i) {
        lo[i] = uintBitsToFloat(UNIT_W4(b + i));
        hi[i] = has_hi ? uintBitsToFloat(UNIT_W4(b + 8u + i)) : vec4(0.0);
      }
    } else {
      uint b = (row >> 4) + 8u * u;
      for (uint i = 0u; i < 4u; ++i) {
        uvec4 a = UNIT_W4(b + i), c = has_hi ? UNIT_W4(b + 4u + i) : uvec4(0u);
        if (type == kF16) {
          lo[2u * i] = vec4(unpackHalf2x16(a.x), unpackHalf2x16(a.y));
          lo[2u * i + 1u] = vec4(unpackHalf2x16(a.z), unpackHalf2x16(a.w));
          hi[2u * i] = vec4(unpackHalf2x16(c.x), unpackHalf2x16(c.y));
          hi[2u * i + 1u] = vec4(unpackHalf2x16(c.z), unpackHalf2x16(c.w));
        } else {  // BF16: the high half of an f32
          lo[2u * i] = uintBitsToFloat(uvec4(a.x << 16, a.x & 0xffff0000u, a.y << 16, a.y & 0xffff0000u));
          lo[2u * i + 1u] = uintBitsToFloat(uvec4(a.z << 16, a.z & 0xffff0000u, a.w << 16, a.w & 0xffff0000u));
          hi[2u * i] = uintBitsToFloat(uvec4(c.x << 16, c.x & 0xffff0000u, c.y << 16, c.y & 0xffff0000u));
          hi[2u * i + 1u] = uintBitsToFloat(uvec4(c.z << 16, c.z & 0xffff0000u, c.w << 16, c.w & 0xffff0000u));
        }
      }
    }
  }
}
