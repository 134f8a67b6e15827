// Decode matvec, batch 1..8, the "q8" form (kernels/ops/matvec.h, TROVE_MATVEC=q8): activations
// quantized to int8 once per workgroup, weight codes combined with them by integer dot products
// (dotPacked4x8EXT: 4 multiply-adds per instruction, 4x fewer activation bytes per row than f32).
// Weight types Q4_K, Q5_K, Q6_K and Q8_0 (the host sends other types to the direct form).
//
// Activations. Each workgroup stages x̂ = x·norm_w of every batch column in shared memory as int8
// with one f32 scale per 32 values (d = max|x̂|/127, q = round(x̂/d)) and, for the K-quant min term,
// d·Σq per 16 values; Σ x² per column (RMSNorm prologue) is reduced over the workgroup while staging,
// inv_rms applied to the row sums at the end (it factors out of the dot product). The staging reads x
// once per workgroup from L2, so workgroups walk several row blocks (blk, blk + grid, ...) with x
// staged once — the host launches a few per SM.
//
// Work split. A row group is one subgroup (kG lanes) owning kR rows of one matrix (SwiGLU: kR gate
// rows + the same kR up rows, slots kR..); lanes stride over "parts" of the rows, the same part of
// every slot, so each activation load serves kNS rows:
//   Q4_K/Q5_K  part m (0..7) of a super-block: qs bytes 16m..16m+15 = values 64j+16h+i (low nibbles,
//              sub-block 2j) and 64j+32+16h+i (high nibbles, sub-block 2j+1), j = m/2, h = m%2, i < 16.
//   Q6_K       part p (0..15): ql bytes 8p.. = values 128n+32r+8l+i and +64 (n = p/8, r = p/4%2,
//              l = p%4, i < 8); codes q−32 made signed bytes, so no min term.
//   Q8_0       part q (0..3) of a 34-byte block: its int8 values 8q..8q+7.
// Rows are reduced with subgroupAdd; no barrier after the staging.
//
// MV_Q8_GLOBAL (matvec_q8p.comp, TROVE_MATVEC=q8p): the same kernel reading x̂ already quantized by
// matvec_q8_quant.comp into a scratch slot (binding 0, layout below) through the caches instead of
// staging it: no shared memory, no barrier, one row block per workgroup — for any cols.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_integer_dot_product : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;           // lanes per row group (the subgroup size)
layout(constant_id = 2) const uint kNB = 1u;           // batch columns
layout(constant_id = 3) const uint kR = 2u;            // rows per row group (per matrix)
layout(constant_id = 4) const uint kSwiGlu = 0u;       // 1: slots kR.. are the up rows of slots 0..kR-1
layout(constant_id = 5) const uint kTileVals = 4096u;  // staged values per batch column (>= cols, multiple of 256)
layout(constant_id = 6) const uint kMats = 3u;         // weight bindings in use (1..3)
layout(constant_id = 7) const uint kType0 = 12u;       // weight type id of each matrix (ggml ids)
layout(constant_id = 8) const uint kType1 = 12u;
layout(constant_id = 9) const uint kType2 = 12u;
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kNS = kR * (kSwiGlu + 1u);
const uint kQ8_0 = 8u, kQ4_K = 12u, kQ5_K = 13u, kQ6_K = 14u;
const uint kTypeMask = (1u << kType0) | (1u << kType1) | (1u << kType2);
bool has_type(uint t) { return (kTypeMask & (1u << t)) != 0u; }

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer NW { vec4 nw4[]; };
layout(std430, set = 0, binding = 2) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 2) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2q { uvec4 w2q[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2w { uint w2w[]; };
layout(std430, set = 0, binding = 5) buffer Y0 { float y0[]; };
layout(std430, set = 0, binding = 6) buffer Y1 { float y1[]; };
layout(std430, set = 0, binding = 7) buffer Y2 { float y2[]; };

// Same block as matvec_body.glsl (the host shares the struct).
layout(push_constant) uniform P {
  uint cols; uint flags; float eps; uint n_mats;
  uint ntiles; uint tile_vals; uint groups_x; uint grid;
  uvec4 type; uvec4 rows; uvec4 y_stride; uvec4 row_bytes; uvec4 wg_end;
} pc;

// Column b's int8 values (16 per uvec4) at SQ(sqi(b·kTileVals/16 + i)), its scales per 32 values at
// SD(b·kTileVals/64 ..) (two per vec2: a Q4_K/Q5_K part's two sub-blocks in one load), d·Σq per 16
// values at SS(b·kTileVals/64 ..) (four per vec4: both halves of both sub-blocks), per-subgroup Σ x²
// at sssq. MV_Q8_GLOBAL: the same arrays one after the other in the scratch slot (in floats: q at 0,
// d at kNB·T/4, sums at kNB·T·9/32, then inv_rms of each column at kNB·T·13/32; T = kTileVals).
#ifdef MV_Q8_GLOBAL
layout(std430, set = 0, binding = 0) readonly buffer GQ { uvec4 gq4[]; };
layout(std430, set = 0, binding = 0) readonly buffer GD { vec2 gd2[]; };
layout(std430, set = 0, binding = 0) readonly buffer GS { vec4 gs4[]; };
layout(std430, set = 0, binding = 0) readonly buffer GI { float gi[]; };
#define SQ(i) gq4[i]
#define SD(i) gd2[kNB * kTileVals / 8u + (i)]
#define SS(i) gs4[kNB * kTileVals * 9u / 128u + (i)]
uint sqi(uint i) { return i; }
#else
shared uvec4 sq[kNB * kTileVals / 16u];
shared vec2 sd[kNB * kTileVals / 64u];
shared vec4 ss[kNB * kTileVals / 64u];
shared float sssq[kGroups * kNB];
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

uvec4 wq(uint m, uint i) {
  if (kMats == 1u || m == 0u) return w0q[i];
  if (kMats == 2u || m == 1u) return w1q[i];
  return w2q[i];
}
uint ww(uint m, uint i) {
  if (kMats == 1u || m == 0u) return w0w[i];
  if (kMats == 2u || m == 1u) return w1w[i];
  return w2w[i];
}
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
// The 8 int8 values of column b starting at tile value v (a multiple of 8).
uvec2 x8(uint b, uint v) {
  const uvec4 q = SQ(sqi(b * (kTileVals / 16u) + (v >> 4u)));
  return (v & 8u) != 0u ? q.zw : q.xy;
}

#include "k4_scales.glsl"

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
    const uvec4 xl = SQ(sqi(b * (kTileVals / 16u) + (vl >> 4u))), xh = SQ(sqi(b * (kTileVals / 16u) + (vl >> 4u) + 2u));
    const vec2 dx = SD(b * (kTileVals / 64u) + (kl >> 1u));  // kl is even: (kl, kl + 1)
    const vec4 sx = SS(b * (kTileVals / 64u) + (kl >> 1u));  // halves of kl, then of kl + 1
    const float dl = dx.x, dh = dx.y, sl = sx[h], sh = sx[2u + h];
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
    const float dl = sd_at(b * (kTileVals / 32u) + (vl >> 5u)), dh = sd_at(b * (kTileVals / 32u) + (vl >> 5u) + 2u);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      if (!live[s]) continue;
      const int il = dp(lo[s].x, xl.x) + dp(lo[s].y, xl.y);
      const int ih = dp(hi[s].x, xh.x) + dp(hi[s].y, xh.y);
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
    const float dx = sd_at(b * (kTileVals / 32u) + bl);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      if (live[s]) acc[b][s] += c[s] * dx * float(dp(w[s].x, x.x) + dp(w[s].y, x.y));
    }
  }
}

// Every part of the live slots' rows (of `type`), strided over the lanes.
void walk(uint type, uint lane) {
  if (has_type(kQ4_K) && type == kQ4_K) {
    for (uint it = lane; it < (pc.cols >> 5u); it += kG) part_k45(false, it >> 3u, it & 7u);
  } else if (has_type(kQ5_K) && type == kQ5_K) {
    for (uint it = lane; it < (pc.cols >> 5u); it += kG) part_k45(true, it >> 3u, it & 7u);
  } else if (has_type(kQ6_K) && type == kQ6_K) {
    for (uint it = lane; it < (pc.cols >> 4u); it += kG) part_q6k(it >> 4u, it & 15u);
  } else if (has_type(kQ8_0) && type == kQ8_0) {
    for (uint it = lane; it < (pc.cols >> 3u); it += kG) part_q8(it >> 2u, it & 3u);
  }
}

#ifndef MV_Q8_GLOBAL
// Quantizes values 32k .. 32k+31 of column b into shared memory; returns their Σ x² (before norm_w).
float stage_block(uint b, uint k, bool norm) {
  vec4 v[8];
  float ssq = 0.0, amax = 0.0;
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    v[i] = x4[b * (pc.cols >> 2u) + 8u * k + i];
    ssq += dot(v[i], v[i]);
    if (norm) v[i] *= nw4[8u * k + i];
    const vec4 a = abs(v[i]);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
  }
  const float d = amax / 127.0, id = amax > 0.0 ? 127.0 / amax : 0.0;
  int sum[2] = int[2](0, 0);
  uint words[8];
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    const ivec4 q = ivec4(round(v[i] * id));
    sum[i >> 2u] += (q.x + q.y) + (q.z + q.w);
    words[i] = (uint(q.x) & 0xFFu) | ((uint(q.y) & 0xFFu) << 8u) | ((uint(q.z) & 0xFFu) << 16u) | (uint(q.w) << 24u);
  }
  const uint base = b * (kTileVals / 16u) + 2u * k;
  sq[sqi(base)] = uvec4(words[0], words[1], words[2], words[3]);
  sq[sqi(base + 1u)] = uvec4(words[4], words[5], words[6], words[7]);
  const uint kb = b * (kTileVals / 32u) + k;
  sd[kb >> 1u][kb & 1u] = d;
  ss[kb >> 1u][2u * (kb & 1u)] = d * float(sum[0]);
  ss[kb >> 1u][2u * (kb & 1u) + 1u] = d * float(sum[1]);
  return ssq;
}
#endif

void write_out(uint m, uint i, float v, float u, bool add) {
  if (kSwiGlu != 0u) {
    y0[i] = v / (1.0 + exp(-v)) * u;
  } else if (kMats == 1u || m == 0u) {
    y0[i] = add ? y0[i] + v : v;
  } else if (kMats == 2u || m == 1u) {
    y1[i] = add ? y1[i] + v : v;
  } else {
    y2[i] = add ? y2[i] + v : v;
  }
}

void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= blocks) return;  // grid padding: whole workgroups, before the barrier
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const bool norm = (pc.flags & 1u) != 0u, add = (pc.flags & 2u) != 0u;

  float inv[kNB];
#ifdef MV_Q8_GLOBAL
  [[unroll]] for (uint b = 0u; b < kNB; ++b) inv[b] = norm ? gi[kNB * kTileVals * 13u / 32u + b] : 1.0;
#else
  // Stage x̂ once for all the blocks this workgroup walks.
  const uint nblk = pc.cols >> 5u;
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    float ssq = 0.0;
    for (uint k = lid; k < nblk; k += kWG) ssq += stage_block(b, k, norm);
    ssq = subgroupAdd(ssq);
    if (lane == 0u) sssq[group * kNB + b] = ssq;
  }
  barrier();
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    inv[b] = 1.0;
    if (norm) {
      float t = 0.0;
      for (uint g = 0u; g < kGroups; ++g) t += sssq[g * kNB + b];
      inv[b] = inversesqrt(t / float(pc.cols) + pc.eps);
    }
  }
#endif

  for (uint blk = wg; blk < blocks; blk += pc.grid) {
    const uint m = blk < pc.wg_end.x ? 0u : (blk < pc.wg_end.y ? 1u : 2u);
    const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
    const uint r0 = ((blk - blk0) * kGroups + group) * kR;
    bool lv[kNS];
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint mat = kSwiGlu != 0u ? s / kR : m;
      const uint r = r0 + s % kR;
      lv[s] = r < pc.rows[mat];
      live[s] = lv[s];
      row_off[s] = lv[s] ? r * pc.row_bytes[mat] : 0u;
      [[unroll]] for (uint b = 0u; b < kNB; ++b) acc[b][s] = 0.0;
    }
    if (kSwiGlu == 0u) {
      if (kMats == 1u || m == 0u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = 0u;
        walk(kType0, lane);
      } else if (kMats == 2u || m == 1u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = 1u;
        walk(kType1, lane);
      } else {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = 2u;
        walk(kType2, lane);
      }
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = s / kR;
      if (kType0 == kType1) {
        walk(kType0, lane);
      } else {  // gate and up of different types: one pass each
        [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = lv[s] && s < kR;
        walk(kType0, lane);
        [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = lv[s] && s >= kR;
        walk(kType1, lane);
      }
    }
    // Every lane gets every total; lane t writes outputs t, t + kG, ... (slot-major over columns).
    [[unroll]] for (uint s = 0u; s < kR; ++s) {
      [[unroll]] for (uint b = 0u; b < kNB; ++b) {
        const float v = subgroupAdd(acc[b][s]) * inv[b];
        const float u = kSwiGlu != 0u ? subgroupAdd(acc[b][s + kR]) * inv[b] : 0.0;
        const uint r = r0 + s;
        if (lane != (s * kNB + b) % kG || r >= pc.rows[m]) continue;
        write_out(m, b * pc.y_stride[m] + r, v, u, add);
      }
    }
  }
}
