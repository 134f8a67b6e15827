#version 460
// Decode matvec of 2..8 batch columns on the int8 matrix units, the "q8 coopmat" form (kernels/ops/matvec.h,
// TROVE_MATVEC_BATCHED=q8coopmat; an A/B form, not a default): Q4_K weights, x̂ quantized by
// matvec_q8_quant.comp into a scratch slot laid out for 8 columns (kCols) whatever the call's batch.
//
// Why: the q8 forms (matvec_q8.glsl) combine every weight code with every batch column in packed dot
// products, so a column costs as many instructions as the first — at 8 columns a step costs ~2.5× a
// one-column step. Here one MMA of the subgroup (16 × 8 × 32 int8 → int32, VK_KHR_cooperative_matrix)
// takes 16 rows × 32 values × all 8 columns: the lanes only unpack the codes once, into shared memory.
//
// Work split. A workgroup owns kRT tiles of 16 rows of one matrix (SwiGLU: kRT tiles of gate rows and
// the same rows of up); its kSplit subgroups walk the 64-value runs (a Q4_K sub-block pair) it = sp,
// sp + kSplit, ... of those rows, each run's codes, scales and x̂ loaded one run ahead. Per run and tile,
// lane l takes row l/2 of the tile and code bytes 16·(l%2)..+15 of the pair's 32 (one 16-byte load):
// the low nibbles (sub-block 2j) and the high ones (2j + 1) go to two 16 × 32 int8 tiles in shared
// memory, which the subgroup loads as A; B is x̂ of the two sub-blocks (32 × 8, column-major, straight
// from the scratch, once for all tiles). The int32 products go back through shared memory (16 × 8 int32
// row-major, so lane l reads row l/2, columns 4·(l%2)..+3 as one ivec4) and the lane scales them:
//   acc[c] += d·sc·dx[c]·P[c] − dmin·m·(d·Σq)[c]   for each of the two sub-blocks
// (the Q4_K min term with x̂'s sums per 16 values, as matvec_q8_parts.glsl). The subgroups' sums meet in
// shared memory and subgroup 0 adds them in order, applies inv_rms (the RMSNorm prologue) and writes.
// A column gets the same numbers at every batch (the MMA always takes 8 columns, and a column's float
// sums are its own), but not the q8 forms' bits (its sums run in another order): a step in this form does
// not equal one-token steps bit for bit, so it is not for speculative verification.
#extension GL_GOOGLE_include_directive : require
#include "matvec_q8_coopmat.glsl"

// Per subgroup and tile: the two 16 × 32 int8 A tiles (32 uvec4 each), which the two 16 × 8 int32
// products then overwrite (each A is in registers before its MMA runs); after the last run, each lane's
// 4 column sums of each tile (the split subgroups' meeting place).
shared uvec4 sa[kSplit * kT * 64u];

void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= blocks) return;  // grid padding: whole workgroups, before the barrier
  const uint lid = gl_LocalInvocationID.x, sp = lid / 32u, lane = lid % 32u;
  const uint hh = lane & 1u;
  const bool norm = (pc.flags & 1u) != 0u, add = (pc.flags & 2u) != 0u;
  // Measurements with WRONG results (TROVE_MATVEC_Q8CM_SKIP, the host's): 4 no weight loads (constant
  // codes and scales), 8 B from shared memory instead of the scratch, 16 no scales (the products summed
  // as they are), 32 no MMA (the codes summed instead).
  const bool no_w = (pc.flags & 4u) != 0u, b_shared = (pc.flags & 8u) != 0u;
  const bool no_scales = (pc.flags & 16u) != 0u, no_mma = (pc.flags & 32u) != 0u;
  const uint m = wg < pc.wg_end.x ? 0u : (wg < pc.wg_end.y ? 1u : 2u);
  const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
  const uint r0 = (wg - blk0) * 16u * kRT + lane / 2u;  // this lane's row in tile 0

  // Tile i = s·kRT + t: set s (the rows, or gate / up), rows 16t.. of the workgroup's.
  uint mat[kT], row_q[kT];
  bool live[kT];
  [[unroll]] for (uint i = 0u; i < kT; ++i) {
    mat[i] = kSwiGlu != 0u ? i / kRT : m;
    const uint r = r0 + 16u * (i % kRT);
    live[i] = r < pc.rows[mat[i]];
    row_q[i] = live[i] ? r * (pc.row_bytes[mat[i]] >> 4u) : 0u;  // Q4_K rows: 144 bytes a super-block
  }
  vec4 acc[kT];
  [[unroll]] for (uint i = 0u; i < kT; ++i) acc[i] = vec4(0.0);

  const coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator> zero =
      coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator>(0);
  const uint nit = pc.cols >> 6u;
  // Run `it`'s header and codes of every tile (loaded one run ahead).
  uvec4 hd[kT], q[kT];
  [[unroll]] for (uint i = 0u; i < kT; ++i) {
    const uint at = row_q[i] + (sp >> 2u) * 9u;
    const bool ld = live[i] && !no_w && sp < nit;
    hd[i] = ld ? mv_wq(mat[i], at) : uvec4(0x3C003C00u, 0x01010101u, 0x01010101u, 0x01010101u);
    q[i] = ld ? mv_wq(mat[i], at + 1u + 2u * (sp & 3u) + hh) : uvec4(lane * 0x01010101u);
  }
  // B (x̂ of the run's two 32-value blocks, 32 × 8 each) and the lane's columns' scales, one run ahead
  // too: run it's are loaded while run it - kSplit is computed (the last loads repeat the last run).
  coopmat<int8_t, gl_ScopeSubgroup, 32, 8, gl_MatrixUseB> b0, b1;
  vec2 dx[4];
  vec4 sx[4];  // (block kl half 0, kl + 1 half 0, kl half 1, kl + 1 half 1): d·Σq
  const uint base0 = sp * kT * 64u;
  {
    const uint kl = (min(sp, nit - 1u) >> 2u) * 8u + 2u * (min(sp, nit - 1u) & 3u);
    if (b_shared) {
      coopMatLoad(b0, sa, base0, 2u, gl_CooperativeMatrixLayoutColumnMajor);
      coopMatLoad(b1, sa, base0 + 32u, 2u, gl_CooperativeMatrixLayoutColumnMajor);
    } else {
      coopMatLoad(b0, gq4, kl * 2u, kTileVals / 16u, gl_CooperativeMatrixLayoutColumnMajor);
      coopMatLoad(b1, gq4, kl * 2u + 2u, kTileVals / 16u, gl_CooperativeMatrixLayoutColumnMajor);
    }
    [[unroll]] for (uint c = 0u; c < 4u; ++c) {
      const uint b = 4u * hh + c;
      dx[c] = gd2[kCols * kTileVals / 8u + b * (kTileVals / 64u) + (kl >> 1u)];
      sx[c] = gs4[(kCols * kTileVals * 9u / 32u + b * (kTileVals / 16u) + 2u * kl) >> 2u];
    }
  }
  for (uint it = sp; it < nit; it += kSplit) {
    const uint j = it & 3u;
    // The next run's weights, B and scales, all in flight while this run is computed.
    const uint nx = it + kSplit, nsb = nx >> 2u, nj = nx & 3u;
    uvec4 hn[kT], qn[kT];
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      const uint at = row_q[i] + nsb * 9u;
      const bool ld = live[i] && !no_w && nx < nit;
      hn[i] = ld ? mv_wq(mat[i], at) : hd[i];
      qn[i] = ld ? mv_wq(mat[i], at + 1u + 2u * nj + hh) : q[i];
    }
    const uint nc = min(nx, nit - 1u), nkl = (nc >> 2u) * 8u + 2u * (nc & 3u);
    coopmat<int8_t, gl_ScopeSubgroup, 32, 8, gl_MatrixUseB> b0n, b1n;
    if (b_shared) {
      coopMatLoad(b0n, sa, base0, 2u, gl_CooperativeMatrixLayoutColumnMajor);
      coopMatLoad(b1n, sa, base0 + 32u, 2u, gl_CooperativeMatrixLayoutColumnMajor);
    } else {
      coopMatLoad(b0n, gq4, nkl * 2u, kTileVals / 16u, gl_CooperativeMatrixLayoutColumnMajor);
      coopMatLoad(b1n, gq4, nkl * 2u + 2u, kTileVals / 16u, gl_CooperativeMatrixLayoutColumnMajor);
    }
    vec2 dxn[4];
    vec4 sxn[4];
    [[unroll]] for (uint c = 0u; c < 4u; ++c) {
      const uint b = 4u * hh + c;
      dxn[c] = gd2[kCols * kTileVals / 8u + b * (kTileVals / 64u) + (nkl >> 1u)];
      sxn[c] = gs4[(kCols * kTileVals * 9u / 32u + b * (kTileVals / 16u) + 2u * nkl) >> 2u];
    }
    subgroupBarrier();  // the last run's tiles have been loaded by every lane
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      const uint base = (sp * kT + i) * 64u;
      sa[base + lane] = q[i] & 0x0F0F0F0Fu;
      sa[base + 32u + lane] = (q[i] >> 4u) & 0x0F0F0F0Fu;
    }
    subgroupMemoryBarrierShared();
    subgroupBarrier();
    if (!no_mma) {
      [[unroll]] for (uint i = 0u; i < kT; ++i) {
        const uint base = (sp * kT + i) * 64u;
        coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA> a0, a1;
        coopMatLoad(a0, sa, base, 2u, gl_CooperativeMatrixLayoutRowMajor);
        coopMatLoad(a1, sa, base + 32u, 2u, gl_CooperativeMatrixLayoutRowMajor);
        coopMatStore(coopMatMulAdd(a0, b0, zero), sa, base, 2u, gl_CooperativeMatrixLayoutRowMajor);
        coopMatStore(coopMatMulAdd(a1, b1, zero), sa, base + 32u, 2u, gl_CooperativeMatrixLayoutRowMajor);
      }
      subgroupMemoryBarrierShared();
      subgroupBarrier();
    }
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      const uint base = (sp * kT + i) * 64u;
      const ivec4 p0 = ivec4(no_mma ? q[i] : sa[base + lane]);
      const ivec4 p1 = ivec4(no_mma ? q[i] >> 4u : sa[base + 32u + lane]);
      if (no_scales) {
        acc[i] += vec4(p0 + p1);
        continue;
      }
      uint sc, mn;
      k4_scales(hd[i], j, sc, mn);
      const vec2 dm = unpackHalf2x16(hd[i].x);
      const vec4 k = vec4(dm.x * float(sc & 0xFFu), dm.x * float(sc >> 8u), dm.y * float(mn & 0xFFu),
                          dm.y * float(mn >> 8u));
      [[unroll]] for (uint c = 0u; c < 4u; ++c) {
        acc[i][c] += (k.x * dx[c].x * float(p0[c]) - k.z * (sx[c].x + sx[c].z)) +
                     (k.y * dx[c].y * float(p1[c]) - k.w * (sx[c].y + sx[c].w));
      }
    }
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      hd[i] = hn[i];
      q[i] = qn[i];
    }
    b0 = b0n;
    b1 = b1n;
    dx = dxn;
    sx = sxn;
  }

  if (kSplit > 1u) {
    // Into this subgroup's own region (its last products are read: the lanes passed the loop's end).
    subgroupBarrier();
    [[unroll]] for (uint i = 0u; i < kT; ++i) sa[(sp * kT + i) * 64u + lane] = floatBitsToUint(acc[i]);
    barrier();
    if (sp != 0u) return;
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      for (uint g = 1u; g < kSplit; ++g) acc[i] += uintBitsToFloat(sa[(g * kT + i) * 64u + lane]);
    }
  }
  [[unroll]] for (uint t = 0u; t < kRT; ++t) {
    if (!live[t]) continue;
    const uint r = r0 + 16u * t;
    [[unroll]] for (uint c = 0u; c < 4u; ++c) {
      const uint b = 4u * hh + c;
      if (b >= kNB) continue;
      const float inv = norm ? gi[kCols * kTileVals * 13u / 32u + b] : 1.0;
      const float u = kSwiGlu != 0u ? acc[min(kRT + t, kT - 1u)][c] * inv : 0.0;
      mv_write(m, b * pc.y_stride[m] + r, acc[t][c] * inv, u, add);
    }
  }
}
