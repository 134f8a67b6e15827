// matvec_core.glsl — per weight type: the dot products of one tile of staged activations against
// the rows of up to kNS "row slots", for bandwidth-bound matrix × vector products (decode, batch
// 1..8). matvec.comp is the first user; expert-indexed matvecs reuse it (only the row offsets and
// the binding behind mv_wq/mv_ww change).
//
// Work split. A row group of kG invocations (one subgroup on GPUs) owns kNS row slots; every lane
// walks "parts" of the tile — the same part of every slot's row, so that the activations a part
// needs are loaded once (from shared memory) and used for all kNS rows and kNB batch columns:
//   Q4_K, Q5_K  8 parts per 256-value super-block: 16 bytes of qs (32 values, two sub-blocks of 16)
//               + the 16-byte header (d, dmin, 12 bytes of scales), + 16 bytes of qh for Q5_K;
//               all 16-byte aligned (144- and 176-byte blocks), so every load is a uvec4.
//   Q6_K        16 parts per 210-byte super-block: 8 bytes of ql + 8 of qh (16 values, two runs of 8
//               with one scale each), 2 scale bytes and d. Blocks are only 2-byte aligned: aligned
//               words + a 16-bit funnel shift (mv_u64). Consecutive lanes read consecutive 8 bytes.
//   Q8_0        4 parts per 34-byte block: 8 int8 values, same funnel shift; d from its word.
//   F32/F16/BF16  one part = 4 consecutive values (one uvec4 / two words), lanes consecutive.
// Scales are decoded once per part (once per 32 or 16 values), not per value.
//
// No int→float conversions per value: a b-bit code q is placed in the top mantissa bits of 1.0,
// f = 1 + q/2^b exactly (one shift + one and/or per value), and Σ q·x = 2^b (Σ f·x − Σ x). The sums
// Σ x per 8 staged values come precomputed with the activations (mv_xs), so the correction costs
// one FMA per run of 8–16 values. (Conversions run at a quarter of the FMA rate or less on NVIDIA;
// the extra rounding of the f − 1 form is a few ulp of the f32 result.)
//
// Shared-memory bank spread. The vec4 a lane reads in its k-th unrolled step is rotated by a
// lane-dependent amount (and the weight words rotated the same way), so that the 32 lanes of a step
// hit all 8 vec4 bank groups instead of 2–4 (Q4_K/Q5_K: by the sub-block pair, Q6_K: by half and
// run, Q8_0: by block parity).
//
// Interface the including shader provides before `#include "matvec_core.glsl"`:
//   constants  kNB (batch columns), kNS (row slots), kG (lanes per row group), all > 0,
//              kMvTypeMask (bit t set = code for weight type id t is compiled in), kMvUnrollCols
//              (1: unroll the loops over batch columns; 0 on CPU devices, see MV_COLS)
//   uvec4 mv_wq(uint mat, uint i)   16-byte word i (byte 16 i) of matrix `mat`'s weights
//   uint  mv_ww(uint mat, uint i)   4-byte word i of the same bytes
//   vec4  mv_x4(uint b, uint v)     staged activations of column b: tile values 4v .. 4v+3
//   float mv_xs(uint b, uint e)     Σ of staged values 8e .. 8e+7 of column b (not with MV_DIRECT
//                                   defined: the sums are then taken from the values mv_x4 returned)
//   globals: float mv_acc[kNB][kNS] (accumulators), uint mv_row[kNS] (byte offset of each slot's
//   row in its matrix), uint mv_mat[kNS] (the slot's matrix), bool mv_live[kNS] (slot in use).
// Entry point: mv_tile(type, first, nvals, lane) adds W[slot][first .. first+nvals) · x̂ (tile) to
// mv_acc for every live slot. `first` is a multiple of 256, nvals of 32 (of 256 for K-quants).

const uint kMvF32 = 0u, kMvF16 = 1u, kMvQ8_0 = 8u, kMvQ4_K = 12u, kMvQ5_K = 13u, kMvQ6_K = 14u, kMvBF16 = 30u;

bool mv_has(uint type) { return (kMvTypeMask & (1u << type)) != 0u; }

// The 8 bytes at 2-byte-aligned offset o: two or three aligned word loads and a 16-bit funnel shift.
uvec2 mv_u64(uint mat, uint o) {
  const uint i = o >> 2u, odd = (o >> 1u) & 1u;
  const uint a = mv_ww(mat, i), b = mv_ww(mat, i + 1u);
  const uint c = mv_ww(mat, i + 1u + odd);  // the word after b when misaligned, b again otherwise
  return odd == 0u ? uvec2(a, b) : uvec2((a >> 16u) | (b << 16u), (b >> 16u) | (c << 16u));
}
// The f16 at 2-byte-aligned offset o (never straddles a word).
float mv_f16(uint mat, uint o) { return unpackHalf2x16(mv_ww(mat, o >> 2u) >> ((o & 2u) * 8u)).x; }
// The int8 at offset o.
float mv_i8(uint mat, uint o) { return float(bitfieldExtract(int(mv_ww(mat, o >> 2u)), int((o & 3u) * 8u), 8)); }

// v rotated left by r words: result[i] = v[(i + r) & 3].
uvec4 mv_rot4(uvec4 v, uint r) {
  v = (r & 1u) != 0u ? v.yzwx : v;
  return (r & 2u) != 0u ? v.zwxy : v;
}

// 1 + q/2^b for the four byte-aligned codes of w (bits 8k+lo .. of byte k), as the floats whose top
// mantissa bits are the code: `sh` shifts code k to the mantissa top, `mask` keeps those bits.
vec4 mv_codes(uint w, ivec4 sh, uint mask) {
  const uvec4 v = uvec4(sh.x >= 0 ? w << uint(sh.x) : w >> uint(-sh.x), sh.y >= 0 ? w << uint(sh.y) : w >> uint(-sh.y),
                        sh.z >= 0 ? w << uint(sh.z) : w >> uint(-sh.z), sh.w >= 0 ? w << uint(sh.w) : w >> uint(-sh.w));
  return uintBitsToFloat((v & mask) | 0x3F800000u);
}
// 4-bit codes in the low / high nibbles of each byte → mantissa bits 19..22 (f = 1 + q/16).
vec4 mv_nib_lo(uint w) { return mv_codes(w, ivec4(19, 11, 3, -5), 0x00780000u); }
vec4 mv_nib_hi(uint w) { return mv_codes(w, ivec4(15, 7, -1, -9), 0x00780000u); }
// 5-, 6- and 8-bit codes, one per byte → f = 1 + q/32, 1 + q/64, 1 + q/256.
vec4 mv_q5(uint w) { return mv_codes(w, ivec4(18, 10, 2, -6), 0x007C0000u); }
vec4 mv_q6(uint w) { return mv_codes(w, ivec4(17, 9, 1, -7), 0x007E0000u); }
vec4 mv_q8(uint w) { return mv_codes(w, ivec4(15, 7, -1, -9), 0x007F8000u); }

#include "k4_scales.glsl"

// Decoded weights of the current part, per slot (module scope, so that the per-column functions below
// see them; registers on a GPU): mv_f = the 1 + q/2^b values, mv_c = the scale coefficients.
vec4 mv_f[kNS][8];
float mv_c[kNS][4];

// Runs CALL (which uses `b`) for every batch column b < kNB: unrolled where kMvUnrollCols (GPUs: the
// accumulators stay in registers), a plain loop otherwise (lavapipe: an unrolled loop multiplies the
// code LLVM compiles by the batch size, seconds per pipeline; the results are the same).
#define MV_COLS(CALL)                                                     \
  if (kMvUnrollCols != 0u) {                                              \
    [[unroll]] for (uint b = 0u; b < kNB; ++b) CALL;                      \
  } else {                                                                \
    [[dont_unroll]] for (uint b = 0u; b < kNB; ++b) CALL;                 \
  }

// ---- Q4_K and Q5_K: part m of a super-block = sub-blocks 2j (low nibbles) and 2j+1 (high nibbles),
// values 16h .. 16h+15 of each (j = m/2, h = m%2). mv_f[s][0..3] low run, [4..7] high run; mv_c =
// the coefficients of Σ f·x (low, high) and of Σ x (low, high).
void mv_col_k45(uint b, uint v, uint j) {
  // Tile-local vec4 index v of the low run (values 256 sbl + 64 j + 16 h ..); the high run is 32 on.
  vec4 xl[4], xh[4];
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
    xl[i] = mv_x4(b, v + ((i + j) & 3u));
    xh[i] = mv_x4(b, v + 8u + ((i + j) & 3u));
  }
#ifdef MV_DIRECT  // the includer has no precomputed sums: Σ x of the values just loaded (a permutation of the run)
  const float xlo = dot((xl[0] + xl[1]) + (xl[2] + xl[3]), vec4(1.0));
  const float xhi = dot((xh[0] + xh[1]) + (xh[2] + xh[3]), vec4(1.0));
#else
  const float xlo = mv_xs(b, v >> 1u) + mv_xs(b, (v >> 1u) + 1u);
  const float xhi = mv_xs(b, (v >> 1u) + 4u) + mv_xs(b, (v >> 1u) + 5u);
#endif
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    float slo = 0.0, shi = 0.0;
    [[unroll]] for (uint i = 0u; i < 4u; ++i) {
      slo += dot(mv_f[s][i], xl[i]);
      shi += dot(mv_f[s][4u + i], xh[i]);
    }
    mv_acc[b][s] += (mv_c[s][0] * slo - mv_c[s][2] * xlo) + (mv_c[s][1] * shi - mv_c[s][3] * xhi);
  }
}

// The raw words of part m (0..7) of super-block sb of every live slot's row: the header, the 16 bytes
// of qs and (Q5_K) the 16 bytes of qh — the loads, apart from the arithmetic (mv_use_k45). Measured on
// the H200 (2026-12-02): issuing the next part's loads before decoding the current one (two sets of
// these registers) was slower, 134 → 117 tok/s on the 8B (more registers, fewer warps in flight).
uvec4 mv_raw_hd[kNS], mv_raw_q[kNS], mv_raw_qh[kNS];
void mv_load_k45(bool q5, uint sb, uint m) {
  const uint units = q5 ? 11u : 9u;  // block size in 16-byte units
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    const uint blk = (mv_row[s] >> 4u) + sb * units;
    mv_raw_hd[s] = mv_wq(mv_mat[s], blk);
    mv_raw_q[s] = mv_wq(mv_mat[s], blk + (q5 ? 3u : 1u) + m);
    if (q5) mv_raw_qh[s] = mv_wq(mv_mat[s], blk + 1u + (m & 1u));
  }
}
// Decodes the raw words of part m and adds its dot products; sbl: the super-block's index in the tile
// (where its activations are).
void mv_use_k45(bool q5, uint sbl, uint m) {
  const uint j = m >> 1u, h = m & 1u;
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    const uvec4 hd = mv_raw_hd[s], q = mv_rot4(mv_raw_q[s], j);
    uint sc, mn;
    k4_scales(hd, j, sc, mn);
    const vec2 dm = unpackHalf2x16(hd.x);
    const float scale = q5 ? 32.0 : 16.0;  // Σ q x = 2^b (Σ f x − Σ x)
    mv_c[s][0] = scale * dm.x * float(sc & 0xFFu);
    mv_c[s][1] = scale * dm.x * float(sc >> 8u);
    mv_c[s][2] = mv_c[s][0] + dm.y * float(mn & 0xFFu);
    mv_c[s][3] = mv_c[s][1] + dm.y * float(mn >> 8u);
    if (q5) {
      // Fifth bit of value l of sub-block k: bit k of qh[l]; this part's qh bytes are 16h .. 16h+15.
      const uvec4 qh = mv_rot4(mv_raw_qh[s], j);
      [[unroll]] for (uint i = 0u; i < 4u; ++i) {
        mv_f[s][i] = mv_q5((q[i] & 0x0F0F0F0Fu) | (((qh[i] >> (2u * j)) & 0x01010101u) << 4u));
        mv_f[s][4u + i] = mv_q5(((q[i] >> 4u) & 0x0F0F0F0Fu) | (((qh[i] >> (2u * j + 1u)) & 0x01010101u) << 4u));
      }
    } else {
      [[unroll]] for (uint i = 0u; i < 4u; ++i) {
        mv_f[s][i] = mv_nib_lo(q[i]);
        mv_f[s][4u + i] = mv_nib_hi(q[i]);
      }
    }
  }
  const uint v = sbl * 64u + 16u * j + 4u * h;
  MV_COLS(mv_col_k45(b, v, j))
}
// Part m of super-block sb (sbl: its index in the tile) of every live slot's row.
void mv_part_k45(bool q5, uint sb, uint sbl, uint m) {
  mv_load_k45(q5, sb, m);
  mv_use_k45(q5, sbl, m);
}

void mv_tile_k45(bool q5, uint first, uint nvals, uint lane) {
  const uint sb0 = first >> 8u, nparts = (nvals >> 8u) * 8u;
  for (uint item = lane; item < nparts; item += kG) mv_part_k45(q5, sb0 + (item >> 3u), item >> 3u, item & 7u);
}

// ---- Q6_K: part p of a super-block = ql bytes 8p .. 8p+7. With n = p/8 (half), l0 = 8 (p%4),
// r = (p%8)/4 (ql run 0 or 32 of the half): values 128n + 32r + l0 + i (low nibbles, qh bits 2r..)
// and the same + 64 (high nibbles, qh bits 2r+4..), i < 8; qh bytes 32n + l0 ..; one int8 scale per
// run: scales[8n + l0/16 + 2r] and [.. + 4]; value = d · scale · (q − 32). mv_f[s][0..1] low run,
// [2..3] high run.
void mv_col_q6k(uint b, uint v, uint rot) {
  vec4 xl[2], xh[2];
  [[unroll]] for (uint i = 0u; i < 2u; ++i) {
    xl[i] = mv_x4(b, v + (i ^ rot));
    xh[i] = mv_x4(b, v + 16u + (i ^ rot));
  }
#ifdef MV_DIRECT
  const float xlo = dot(xl[0] + xl[1], vec4(1.0)), xhi = dot(xh[0] + xh[1], vec4(1.0));
#else
  const float xlo = mv_xs(b, v >> 1u), xhi = mv_xs(b, (v >> 1u) + 8u);
#endif
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    const float slo = dot(mv_f[s][0], xl[0]) + dot(mv_f[s][1], xl[1]);
    const float shi = dot(mv_f[s][2], xh[0]) + dot(mv_f[s][3], xh[1]);
    mv_acc[b][s] += (mv_c[s][0] * slo - mv_c[s][2] * xlo) + (mv_c[s][1] * shi - mv_c[s][3] * xhi);
  }
}

// Part p (0..15) of super-block sb of every live slot's row; sbl: its index in the tile.
void mv_part_q6k(uint sb, uint sbl, uint p) {
  const uint n = p >> 3u, r = (p >> 2u) & 1u, lq = p & 3u;
  const uint rot = r ^ n;  // swap the two words of each run: spreads the lanes over the banks
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    const uint blk = mv_row[s] + sb * 210u;
    uvec2 ql = mv_u64(mv_mat[s], blk + 8u * p);
    uvec2 qh = mv_u64(mv_mat[s], blk + 128u + 32u * n + 8u * lq) >> (2u * r);
    if (rot != 0u) {
      ql = ql.yx;
      qh = qh.yx;
    }
    const uint so = blk + 192u + 8u * n + (lq >> 1u) + 2u * r;
    const float d = mv_f16(mv_mat[s], blk + 208u);
    const float slo = d * mv_i8(mv_mat[s], so), shi = d * mv_i8(mv_mat[s], so + 4u);
    mv_c[s][0] = 64.0 * slo;  // Σ (q − 32) x = 64 Σ f x − 96 Σ x
    mv_c[s][1] = 64.0 * shi;
    mv_c[s][2] = 96.0 * slo;
    mv_c[s][3] = 96.0 * shi;
    [[unroll]] for (uint i = 0u; i < 2u; ++i) {
      mv_f[s][i] = mv_q6((ql[i] & 0x0F0F0F0Fu) | ((qh[i] & 0x03030303u) << 4u));
      mv_f[s][2u + i] = mv_q6(((ql[i] >> 4u) & 0x0F0F0F0Fu) | (((qh[i] >> 4u) & 0x03030303u) << 4u));
    }
  }
  const uint v = sbl * 64u + 32u * n + 8u * r + 2u * lq;  // vec4 index of the low run; high: +16
  MV_COLS(mv_col_q6k(b, v, rot))
}

void mv_tile_q6k(uint first, uint nvals, uint lane) {
  const uint sb0 = first >> 8u, nparts = (nvals >> 8u) * 16u;
  for (uint item = lane; item < nparts; item += kG) mv_part_q6k(sb0 + (item >> 4u), item >> 4u, item & 15u);
}

// ---- Q8_0: part q of a 34-byte block = its int8 values 8q .. 8q+7. mv_f[s][0..1].
void mv_col_q8(uint b, uint v, uint rot) {
  const vec4 x0 = mv_x4(b, v + rot), x1 = mv_x4(b, v + (rot ^ 1u));
#ifdef MV_DIRECT
  const float xs = dot(x0 + x1, vec4(1.0));
#else
  const float xs = mv_xs(b, v >> 1u);
#endif
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (mv_live[s]) mv_acc[b][s] += mv_c[s][0] * (dot(mv_f[s][0], x0) + dot(mv_f[s][1], x1)) - mv_c[s][2] * xs;
  }
}

// Part q (0..3) of block bl of every live slot's row; bll: its index in the tile.
void mv_part_q8(uint bl, uint bll, uint q) {
  const uint rot = bll & 1u;
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    const uint blk = mv_row[s] + bl * 34u;
    uvec2 w = mv_u64(mv_mat[s], blk + 2u + 8u * q) ^ 0x80808080u;  // int8 → q + 128 in 0..255
    if (rot != 0u) w = w.yx;
    const float d = mv_f16(mv_mat[s], blk);
    mv_c[s][0] = 256.0 * d;  // Σ q x = 256 Σ f x − 384 Σ x
    mv_c[s][2] = 384.0 * d;
    mv_f[s][0] = mv_q8(w.x);
    mv_f[s][1] = mv_q8(w.y);
  }
  MV_COLS(mv_col_q8(b, bll * 8u + 2u * q, rot))
}

void mv_tile_q8(uint first, uint nvals, uint lane) {
  const uint blk0 = first >> 5u, nparts = (nvals >> 5u) * 4u;
  for (uint item = lane; item < nparts; item += kG) mv_part_q8(blk0 + (item >> 2u), item >> 2u, item & 3u);
}

// ---- F32, F16, BF16: part v = values 4v .. 4v+3 of the tile. mv_f[s][0].
void mv_col_float(uint b, uint v) {
  const vec4 x = mv_x4(b, v);
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (mv_live[s]) mv_acc[b][s] += dot(mv_f[s][0], x);
  }
}

// Part v (values 4v .. 4v+3 of the tile) of every live slot's row; first: the tile's first value.
void mv_part_float(uint type, uint first, uint v) {
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    if (!mv_live[s]) continue;
    if (mv_has(kMvF32) && type == kMvF32) {
      mv_f[s][0] = uintBitsToFloat(mv_wq(mv_mat[s], (mv_row[s] >> 4u) + (first >> 2u) + v));
    } else {
      const uint i = (mv_row[s] >> 2u) + (first >> 1u) + 2u * v;
      const uint a = mv_ww(mv_mat[s], i), c = mv_ww(mv_mat[s], i + 1u);
      mv_f[s][0] = mv_has(kMvF16) && type == kMvF16 ? vec4(unpackHalf2x16(a), unpackHalf2x16(c))
                                                    : uintBitsToFloat(uvec4(a << 16u, a & 0xFFFF0000u, c << 16u, c & 0xFFFF0000u));
    }
  }
  MV_COLS(mv_col_float(b, v))
}

void mv_tile_float(uint type, uint first, uint nvals, uint lane) {
  for (uint v = lane; v < (nvals >> 2u); v += kG) mv_part_float(type, first, v);
}

void mv_tile(uint type, uint first, uint nvals, uint lane) {
  if (mv_has(kMvQ4_K) && type == kMvQ4_K) {
    mv_tile_k45(false, first, nvals, lane);
  } else if (mv_has(kMvQ6_K) && type == kMvQ6_K) {
    mv_tile_q6k(first, nvals, lane);
  } else if (mv_has(kMvQ5_K) && type == kMvQ5_K) {
    mv_tile_k45(true, first, nvals, lane);
  } else if (mv_has(kMvQ8_0) && type == kMvQ8_0) {
    mv_tile_q8(first, nvals, lane);
  } else if ((mv_has(kMvF32) && type == kMvF32) || (mv_has(kMvF16) && type == kMvF16) || (mv_has(kMvBF16) && type == kMvBF16)) {
    mv_tile_float(type, first, nvals, lane);
  }
}

// Parts of a row of `cols` values of `type` (cols a multiple of the type's block): the units a lane
// takes one at a time (see "Work split" above).
uint mv_parts(uint type, uint cols) {
  if (type == kMvQ4_K || type == kMvQ5_K) return cols >> 5u;
  if (type == kMvQ6_K) return cols >> 4u;
  if (type == kMvQ8_0) return cols >> 3u;
  return cols >> 2u;
}
// Part p of every live slot's row, for a tile holding the whole row (first = 0): for callers that
// spread the parts of several rows' sets over the lanes themselves (moe_down_body.glsl's direct form).
void mv_part(uint type, uint p) {
  if (mv_has(kMvQ4_K) && type == kMvQ4_K) {
    mv_part_k45(false, p >> 3u, p >> 3u, p & 7u);
  } else if (mv_has(kMvQ6_K) && type == kMvQ6_K) {
    mv_part_q6k(p >> 4u, p >> 4u, p & 15u);
  } else if (mv_has(kMvQ5_K) && type == kMvQ5_K) {
    mv_part_k45(true, p >> 3u, p >> 3u, p & 7u);
  } else if (mv_has(kMvQ8_0) && type == kMvQ8_0) {
    mv_part_q8(p >> 2u, p >> 2u, p & 3u);
  } else if ((mv_has(kMvF32) && type == kMvF32) || (mv_has(kMvF16) && type == kMvF16) || (mv_has(kMvBF16) && type == kMvBF16)) {
    mv_part_float(type, 0u, p);
  }
}
