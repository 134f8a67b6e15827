// matvec_q8_parts.glsl — the int8 dot products of the q8 matvec forms, shared by the dense decode
// matvec (matvec_q8.glsl: matvec_q8.comp, matvec_q8p.comp) and the MoE expert kernels' q8 form
// (moe_experts_q8.comp, moe_down_q8.comp): the staged activations' layout, x̂ quantized into it
// (stage_half), and per weight type the "part" functions combining weight codes with it by
// dotPacked4x8EXT (the parts and their value ranges: matvec_q8.glsl's header).
//
// Interface the including shader provides before `#include "matvec_q8_parts.glsl"`:
//   constants  kG (lanes per row group), kNB (batch columns the parts multiply), kNS (row slots),
//              kTileVals (staged values per column, a multiple of 256), kQ8Cols (staged columns),
//              kTypeMask (bit t set = code for weight type id t is compiled in)
//   uint  q8_col(uint b)          the staged column batch column b reads (the identity, or a column
//                                 the caller selects per part: moe_down_q8.comp's expert j)
//   uvec4 wq(uint mat, uint i)    16-byte word i of matrix `mat`'s weights;  uint ww(mat, i): 4-byte
//   buffers x4 (vec4 activations) and nw4 (vec4 RMSNorm weights) for stage_half, unless MV_Q8_GLOBAL
// and sets, before calling a part: row_off[s] (byte offset of slot s's row), slot_mat[s] (its matrix),
// live[s]; the parts add into acc[b][s].
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_integer_dot_product : require

const uint kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u;
bool has_type(uint t) { return (kTypeMask & (1u << t)) != 0u; }
#ifndef MV_Q6_WIDE
const uint kQ6Wide = 0u;  // 1: walk() takes Q6_K in 32-value parts (part_q6k_wide); matvec_q8.glsl: a constant id
#endif

// Column b's int8 values (16 per uvec4) at SQ(sqi(b·kTileVals/16 + i)), its scales per 32 values at
// SD(b·kTileVals/64 ..) (two per vec2: a Q4_K/Q5_K part's two sub-blocks in one load), d·Σq per 16
// values at SS(b·kTileVals/32 ..) (two per vec2: SS(2j + h) holds half h of 32-value blocks 2j and
// 2j + 1 — the two a Q4_K/Q5_K part of half h reads, in one 8-byte load); b < kQ8Cols.
// MV_Q8_GLOBAL: the same arrays one after the other in the scratch slot (in floats: q at 0,
// d at kQ8Cols·T/4, sums at ·9/32, then inv_rms of each column at ·13/32; T = kTileVals; the
// includer reads the last).
#ifdef MV_Q8_GLOBAL
layout(std430, set = 0, binding = 0) readonly buffer GQ { uvec4 gq4[]; };
layout(std430, set = 0, binding = 0) readonly buffer GD { vec2 gd2[]; };
layout(std430, set = 0, binding = 0) readonly buffer GS { vec2 gs2[]; };
layout(std430, set = 0, binding = 0) readonly buffer GI { float gi[]; };
#define SQ(i) gq4[i]
#define SD(i) gd2[kQ8Cols * kTileVals / 8u + (i)]
#define SS(i) gs2[kQ8Cols * kTileVals * 9u / 64u + (i)]
uint sqi(uint i) { return i; }
#else
shared uvec4 sq[kQ8Cols * kTileVals / 16u];
shared vec2 sd[kQ8Cols * kTileVals / 64u];
shared vec2 ss[kQ8Cols * kTileVals / 32u];
#define SQ(i) sq[i]
#define SD(i) sd[i]
#define SS(i) ss[i]
// Swizzled uvec4 index of the int8 values: bit 3 into bit 1, so that the 8 lanes of one 128-bit load
// phase (Q4_K/Q5_K parts 0..7: uvec4s 0,1,4,5,8,9,12,13, or +2) hit 8 different bank groups.
uint sqi(uint i) { return i ^ ((i >> 2u) & 2u); }
#endif

float acc[kNB][kNS];
uint row_off[kNS];   // byte offset of each slot's row in its matrix
uint slot_mat[kNS];  // the slot's matrix
bool live[kNS];

// The 8 bytes at 2-byte-aligned offset o.
uvec2 wu64(uint mat, uint o) {
  const uint i = o >> 2u, odd = (o >> 1u) & 1u;
  const uint a = ww(mat, i), b = ww(mat, i + 1u);
  const uint c = ww(mat, i + 1u + odd);
  return odd == 0u ? uvec2(a, b) : uvec2((a >> 16u) | (b << 16u), (b >> 16u) | (c << 16u));
}
float wf16(uint mat, uint o) { return unpackHalf2x16(ww(mat, o >> 2u) >> ((o & 2u) * 8u)).x; }
float wi8(uint mat, uint o) { return float(bitfieldExtract(int(ww(mat, o >> 2u)), int((o & 3u) * 8u), 8)); }

int dp(uint a, uint b) { return dotPacked4x8EXT(int(a), int(b)); }
float sd_at(uint i) { return SD(i >> 1u)[i & 1u]; }
// The 8 int8 values of batch column b starting at tile value v (a multiple of 8).
uvec2 x8(uint b, uint v) {
  const uvec4 q = SQ(sqi(q8_col(b) * (kTileVals / 16u) + (v >> 4u)));
  return (v & 8u) != 0u ? q.zw : q.xy;
}

#include "k4_scales.glsl"
#include "matvec_q8_block.glsl"

// ---- Q4_K / Q5_K, part m of super-block sb.
void part_k45(bool q5, uint sb, uint m) {
  const uint j = m >> 1u, h = m & 1u;
  const uint units = q5 ? 11u : 9u;
  uvec4 lo[kNS], hi[kNS];
  vec4 c[kNS];  // d·sc (low, high), dmin·mn (low, high)
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!live[s]) continue;
    const uint blk = (row_off[s] >> 4u) + sb * units;
    const uvec4 hd = wq(slot_mat[s], blk);
    const uvec4 q = wq(slot_mat[s], blk + (q5 ? 3u : 1u) + m);
    uint sc, mn;
    k4_scales(hd, j, sc, mn);
    const vec2 dm = unpackHalf2x16(hd.x);
    c[s] = vec4(dm.x * float(sc & 0xFFu), dm.x * float(sc >> 8u), dm.y * float(mn & 0xFFu), dm.y * float(mn >> 8u));
    lo[s] = q & 0x0F0F0F0Fu;
    hi[s] = (q >> 4u) & 0x0F0F0F0Fu;
    if (q5) {
      const uvec4 qh = wq(slot_mat[s], blk + 1u + h);
      lo[s] |= ((qh >> (2u * j)) & 0x01010101u) << 4u;
      hi[s] |= ((qh >> (2u * j + 1u)) & 0x01010101u) << 4u;
    }
  }
  const uint vl = sb * 256u + 64u * j + 16u * h;  // first value of the low run; the high run is 32 on
  const uint kl = vl >> 5u;                        // its 32-value block; the high run's is kl + 1
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    const uvec4 xl = SQ(sqi(q8_col(b) * (kTileVals / 16u) + (vl >> 4u))), xh = SQ(sqi(q8_col(b) * (kTileVals / 16u) + (vl >> 4u) + 2u));
    const vec2 dx = SD(q8_col(b) * (kTileVals / 64u) + (kl >> 1u));  // kl is even: (kl, kl + 1)
    const vec2 sx = SS(q8_col(b) * (kTileVals / 32u) + kl + h);  // half h of kl, then of kl + 1 (kl even)
    const float dl = dx.x, dh = dx.y, sl = sx.x, sh = sx.y;
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      if (!live[s]) continue;
      const int il = dp(lo[s].x, xl.x) + dp(lo[s].y, xl.y) + dp(lo[s].z, xl.z) + dp(lo[s].w, xl.w);
      const int ih = dp(hi[s].x, xh.x) + dp(hi[s].y, xh.y) + dp(hi[s].z, xh.z) + dp(hi[s].w, xh.w);
      acc[b][s] += (c[s].x * dl * float(il) - c[s].z * sl) + (c[s].y * dh * float(ih) - c[s].w * sh);
    }
  }
}

// Signed bytes q − 32 of four 6-bit codes (one per byte).
uint q6_signed(uint q) {
  const uint t = q ^ 0x20202020u;           // bit 5 is now the sign of q − 32
  return t | ((t & 0x20202020u) * 6u);       // extend it into bits 6 and 7 (0x20 · 6 = 0xC0, no carry)
}

// ---- Q6_K, part p of super-block sb.
void part_q6k(uint sb, uint p) {
  const uint n = p >> 3u, r = (p >> 2u) & 1u, lq = p & 3u;
  uvec2 lo[kNS], hi[kNS];
  vec2 c[kNS];  // d·scale (low run, high run)
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!live[s]) continue;
    const uint blk = row_off[s] + sb * 210u;
    const uvec2 ql = wu64(slot_mat[s], blk + 8u * p);
    const uvec2 qh = wu64(slot_mat[s], blk + 128u + 32u * n + 8u * lq) >> (2u * r);
    const uint so = blk + 192u + 8u * n + (lq >> 1u) + 2u * r;
    const float d = wf16(slot_mat[s], blk + 208u);
    c[s] = vec2(d * wi8(slot_mat[s], so), d * wi8(slot_mat[s], so + 4u));
    [[unroll]] for (uint i = 0u; i < 2u; ++i) {
      lo[s][i] = q6_signed((ql[i] & 0x0F0F0F0Fu) | ((qh[i] & 0x03030303u) << 4u));
      hi[s][i] = q6_signed(((ql[i] >> 4u) & 0x0F0F0F0Fu) | (((qh[i] >> 4u) & 0x03030303u) << 4u));
    }
  }
  const uint vl = sb * 256u + 128u * n + 32u * r + 8u * lq;  // low run; the high run is 64 on
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    const uvec2 xl = x8(b, vl), xh = x8(b, vl + 64u);
    const float dl = sd_at(q8_col(b) * (kTileVals / 32u) + (vl >> 5u)), dh = sd_at(q8_col(b) * (kTileVals / 32u) + (vl >> 5u) + 2u);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      if (!live[s]) continue;
      const int il = dp(lo[s].x, xl.x) + dp(lo[s].y, xl.y);
      const int ih = dp(hi[s].x, xh.x) + dp(hi[s].y, xh.y);
      acc[b][s] += c[s].x * dl * float(il) + c[s].y * dh * float(ih);
    }
  }
}

// The 16 bytes at 2-byte-aligned offset o (five words when o is not 4-aligned, no word past them).
uvec4 wu128(uint mat, uint o) {
  const uint i = o >> 2u;
  const uint a = ww(mat, i), b = ww(mat, i + 1u), c = ww(mat, i + 2u), d = ww(mat, i + 3u);
  if (((o >> 1u) & 1u) == 0u) return uvec4(a, b, c, d);
  const uint e = ww(mat, i + 4u);
  return uvec4((a >> 16u) | (b << 16u), (b >> 16u) | (c << 16u), (c >> 16u) | (d << 16u), (d >> 16u) | (e << 16u));
}

// ---- Q6_K, wide part w (0..7) of super-block sb: 32 values, as a Q4_K part — ql bytes
// 64n + 32r + l0 + j (j < 16; n = w/4, r = w/2 % 2, l0 = 16·(w % 2)) hold values 128n + 32r + l0 + j
// (low nibbles, with qh bits 2r..2r+1 of byte 32n + l0 + j) and those + 64 (high nibbles, qh bits
// 2r+4..2r+5); their scales are bytes 8n + w%2 + 2r and that + 4. Half the parts of part_q6k and 16-byte
// runs of ql and qh (five word loads each at most) instead of 8-byte ones.
void part_q6k_wide(uint sb, uint w) {
  const uint n = w >> 2u, r = (w >> 1u) & 1u, l0 = 16u * (w & 1u);
  uvec4 lo[kNS], hi[kNS];
  vec2 c[kNS];  // d·scale (low run, high run)
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!live[s]) continue;
    const uint blk = row_off[s] + sb * 210u;
    const uvec4 ql = wu128(slot_mat[s], blk + 64u * n + 32u * r + l0);
    const uvec4 qh = wu128(slot_mat[s], blk + 128u + 32u * n + l0) >> (2u * r);
    const uint so = blk + 192u + 8u * n + (w & 1u) + 2u * r;
    const float d = wf16(slot_mat[s], blk + 208u);
    c[s] = vec2(d * wi8(slot_mat[s], so), d * wi8(slot_mat[s], so + 4u));
    [[unroll]] for (uint i = 0u; i < 4u; ++i) {
      lo[s][i] = q6_signed((ql[i] & 0x0F0F0F0Fu) | ((qh[i] & 0x03030303u) << 4u));
      hi[s][i] = q6_signed(((ql[i] >> 4u) & 0x0F0F0F0Fu) | (((qh[i] >> 4u) & 0x03030303u) << 4u));
    }
  }
  const uint vl = sb * 256u + 128u * n + 32u * r + l0;  // low run (16 values); the high run is 64 on
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    const uvec4 xl = SQ(sqi(q8_col(b) * (kTileVals / 16u) + (vl >> 4u)));
    const uvec4 xh = SQ(sqi(q8_col(b) * (kTileVals / 16u) + (vl >> 4u) + 4u));
    const float dl = sd_at(q8_col(b) * (kTileVals / 32u) + (vl >> 5u)), dh = sd_at(q8_col(b) * (kTileVals / 32u) + (vl >> 5u) + 2u);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      if (!live[s]) continue;
      const int il = dp(lo[s].x, xl.x) + dp(lo[s].y, xl.y) + dp(lo[s].z, xl.z) + dp(lo[s].w, xl.w);
      const int ih = dp(hi[s].x, xh.x) + dp(hi[s].y, xh.y) + dp(hi[s].z, xh.z) + dp(hi[s].w, xh.w);
      acc[b][s] += c[s].x * dl * float(il) + c[s].y * dh * float(ih);
    }
  }
}

// ---- Q8_0, part q of block bl.
void part_q8(uint bl, uint q) {
  uvec2 w[kNS];
  float c[kNS];
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!live[s]) continue;
    const uint blk = row_off[s] + bl * 34u;
    w[s] = wu64(slot_mat[s], blk + 2u + 8u * q);
    c[s] = wf16(slot_mat[s], blk);
  }
  const uint v = bl * 32u + 8u * q;
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    const uvec2 x = x8(b, v);
    const float dx = sd_at(q8_col(b) * (kTileVals / 32u) + bl);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      if (live[s]) acc[b][s] += c[s] * dx * float(dp(w[s].x, x.x) + dp(w[s].y, x.y));
    }
  }
}

// Parts first, first + step, ... of the live slots' rows (of `type`, `cols` values).
void walk_from(uint type, uint first, uint step, uint cols) {
  if (has_type(kQ4_K) && type == kQ4_K) {
    for (uint it = first; it < (cols >> 5u); it += step) part_k45(false, it >> 3u, it & 7u);
  } else if (has_type(kQ5_K) && type == kQ5_K) {
    for (uint it = first; it < (cols >> 5u); it += step) part_k45(true, it >> 3u, it & 7u);
  } else if (has_type(kQ6_K) && type == kQ6_K && kQ6Wide != 0u) {
    for (uint it = first; it < (cols >> 5u); it += step) part_q6k_wide(it >> 3u, it & 7u);
  } else if (has_type(kQ6_K) && type == kQ6_K) {
    for (uint it = first; it < (cols >> 4u); it += step) part_q6k(it >> 4u, it & 15u);
  } else if (has_type(kQ8_0) && type == kQ8_0) {
    for (uint it = first; it < (cols >> 3u); it += step) part_q8(it >> 2u, it & 3u);
  }
}
// Every part of the live slots' rows, strided over the lanes of one row group.
void walk(uint type, uint lane, uint cols) { walk_from(type, lane, kG, cols); }

// Parts of a row of `cols` values of `type`, and part p of the live slots' rows (for callers that
// spread the parts of several rows' sets over the lanes themselves: moe_down_q8.comp).
uint q8_parts(uint type, uint cols) {
  if (type == kQ4_K || type == kQ5_K) return cols >> 5u;
  if (type == kQ6_K) return kQ6Wide != 0u ? cols >> 5u : cols >> 4u;
  return cols >> 3u;
}
void q8_part(uint type, uint p) {
  if (has_type(kQ4_K) && type == kQ4_K) {
    part_k45(false, p >> 3u, p & 7u);
  } else if (has_type(kQ5_K) && type == kQ5_K) {
    part_k45(true, p >> 3u, p & 7u);
  } else if (has_type(kQ6_K) && type == kQ6_K && kQ6Wide != 0u) {
    part_q6k_wide(p >> 3u, p & 7u);
  } else if (has_type(kQ6_K) && type == kQ6_K) {
    part_q6k(p >> 4u, p & 15u);
  } else if (has_type(kQ8_0) && type == kQ8_0) {
    part_q8(p >> 2u, p & 3u);
  }
}

#ifndef MV_Q8_GLOBAL
// Half h of a block (h = 2k + half: values 32k + 16·half .. +15), staged by a pair of adjacent
// invocations (q8_half: both of the pair must call it, with h and h ^ 1). Returns the block's Σ x²
// on the even invocation, 0 on the odd one, so that each block counts once in a running sum.
float stage_half(uint b, uint xrow, uint h, bool norm, float dscale) {
  const uint k = h >> 1u, half_ = h & 1u, at = 8u * k + 4u * half_;
  vec4 v[4], n[4];
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
#ifdef MV_STAGE_KNOBS
    v[i] = g_no_loads ? vec4(1.0) : x4[xrow + at + i];
    n[i] = norm && !g_no_loads ? nw4[at + i] : vec4(1.0);
#else
    v[i] = x4[xrow + at + i];
    n[i] = norm ? nw4[at + i] : vec4(1.0);
#endif
  }
#ifdef MV_STAGE_KNOBS
  const Q8Half o = q8_half(v, n, norm && !g_no_loads, dscale);
#else
  const Q8Half o = q8_half(v, n, norm, dscale);
#endif
  sq[sqi(b * (kTileVals / 16u) + 2u * k + half_)] = uvec4(o.w[0], o.w[1], o.w[2], o.w[3]);
  const uint kb = b * (kTileVals / 32u) + k;
  if (half_ == 0u) sd[kb >> 1u][kb & 1u] = o.d;
  ss[(kb & ~1u) + half_][kb & 1u] = o.s;  // SS(2j + h): half h of blocks 2j, 2j + 1
  return half_ == 0u ? o.ssq : 0.0;
}
#endif
