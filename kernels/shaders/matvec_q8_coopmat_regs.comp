#version 460
// The q8 coopmat form's register kernel (kernels/ops/matvec.h; TROVE_MATVEC_Q8CM_REGS=1, an A/B form
// beside matvec_q8_coopmat.comp): the same int8 MMAs (16 rows × 32 values × 8 columns, Q4_K), but each
// lane writes its own elements of A straight from its 4-byte code loads and scales its own elements of
// the products — no shared memory and no barrier inside the K loop. The shared-memory kernel's runs were
// bound by their chain (codes → shared → MMA → shared → scales, a barrier between each; H100 2026-12-07:
// taking any one link out saved about as much as any other), and a barrier waits for every load in
// flight, so loading ahead could not help it.
//
// Which elements a lane holds is the implementation's (VK_KHR_cooperative_matrix); Matvec::create probes
// it (matvec_q8_coopmat_probe.comp) and passes the table in binding 1 (lt):
//   lt[4l + g]        lane l's A elements 4g..4g+3: row | k0 << 8 — one row, values k0..k0+3 (k0 % 4 == 0)
//   lt[128 + 4l + e]  its product elements e: row | column << 8, elements 0 and 1 in one row, 2 and 3 in
//                     another, elements 0 and 2 in one column, 1 and 3 in another
// (the host refuses the kernel on a layout without these properties). A Q4_K sub-block pair's 32 code
// bytes of a row hold value k of sub-block 2j in the low nibble of byte k and of 2j + 1 in the high one,
// so one word load at byte k0 gives a lane's 4 elements of both A matrices.
//
// Work split as matvec_q8_coopmat.comp's: kRT tiles of 16 rows (SwiGLU: of gate and of up), kSplit
// subgroups walking the 64-value runs, their sums added in order through shared memory at the end.
#extension GL_GOOGLE_include_directive : require
#include "matvec_q8_coopmat.glsl"

shared vec4 sred[kSplit > 1u ? kSplit * kT * 32u : 1u];  // each lane's 4 sums of each tile, per subgroup

void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= blocks) return;  // grid padding: whole workgroups, before the barrier
  const uint lid = gl_LocalInvocationID.x, sp = lid / 32u, lane = lid % 32u;
  const bool norm = (pc.flags & 1u) != 0u, add = (pc.flags & 2u) != 0u;
  const uint m = wg < pc.wg_end.x ? 0u : (wg < pc.wg_end.y ? 1u : 2u);
  const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
  const uint rbase = (wg - blk0) * 16u * kRT;  // the workgroup's first row

  // This lane's elements (the probed layout).
  uint ga_row[4], ga_k0[4];
  [[unroll]] for (uint g = 0u; g < 4u; ++g) {
    const uint t = lt[4u * lane + g];
    ga_row[g] = t & 0xFFu;
    ga_k0[g] = t >> 8u;
  }
  const uint e0 = lt[128u + 4u * lane], e1 = lt[128u + 4u * lane + 1u], e2 = lt[128u + 4u * lane + 2u];
  const uint c_row[2] = uint[2](e0 & 0xFFu, e2 & 0xFFu);  // rows of elements 0, 1 and of 2, 3
  const uint c_col[2] = uint[2](e0 >> 8u, e1 >> 8u);      // columns of elements 0, 2 and of 1, 3

  // Tile i = s·kRT + t: set s (the rows, or gate / up), rows 16t.. of the workgroup's.
  uint mat[kT], a_off[kT][4], c_q[kT][2];
  bool a_live[kT][4], c_live[kT][2];
  [[unroll]] for (uint i = 0u; i < kT; ++i) {
    mat[i] = kSwiGlu != 0u ? i / kRT : m;
    const uint r0 = rbase + 16u * (i % kRT);
    [[unroll]] for (uint g = 0u; g < 4u; ++g) {
      a_live[i][g] = r0 + ga_row[g] < pc.rows[mat[i]];
      a_off[i][g] = a_live[i][g] ? (r0 + ga_row[g]) * pc.row_bytes[mat[i]] + ga_k0[g] : 0u;
    }
    [[unroll]] for (uint h = 0u; h < 2u; ++h) {
      c_live[i][h] = r0 + c_row[h] < pc.rows[mat[i]];
      c_q[i][h] = c_live[i][h] ? (r0 + c_row[h]) * (pc.row_bytes[mat[i]] >> 4u) : 0u;
    }
  }
  vec4 acc[kT];
  [[unroll]] for (uint i = 0u; i < kT; ++i) acc[i] = vec4(0.0);

  const coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator> zero =
      coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator>(0);
  const uint nit = pc.cols >> 6u;
  for (uint it = sp; it < nit; it += kSplit) {
    const uint sb = it >> 2u, j = it & 3u;
    const uint kl = sb * 8u + 2u * j;  // the pair's first 32-value block (even)
    coopmat<int8_t, gl_ScopeSubgroup, 32, 8, gl_MatrixUseB> b0, b1;
    coopMatLoad(b0, gq4, kl * 2u, kTileVals / 16u, gl_CooperativeMatrixLayoutColumnMajor);
    coopMatLoad(b1, gq4, kl * 2u + 2u, kTileVals / 16u, gl_CooperativeMatrixLayoutColumnMajor);
    vec2 dx[2];
    vec4 sx[2];  // (block kl half 0, kl + 1 half 0, kl half 1, kl + 1 half 1): d·Σq
    [[unroll]] for (uint h = 0u; h < 2u; ++h) {
      const uint b = c_col[h];
      dx[h] = gd2[kCols * kTileVals / 8u + b * (kTileVals / 64u) + (kl >> 1u)];
      sx[h] = gs4[(kCols * kTileVals * 9u / 32u + b * (kTileVals / 16u) + 2u * kl) >> 2u];
    }
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA> a0, a1;
      [[unroll]] for (uint g = 0u; g < 4u; ++g) {
        const uint w = a_live[i][g] ? mv_ww(mat[i], (a_off[i][g] + sb * 144u + 16u + 32u * j) >> 2u) : 0u;
        [[unroll]] for (uint b = 0u; b < 4u; ++b) {
          a0[4u * g + b] = int8_t(int((w >> (8u * b)) & 0x0Fu));
          a1[4u * g + b] = int8_t(int((w >> (8u * b + 4u)) & 0x0Fu));
        }
      }
      coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator> p0, p1;
      p0 = coopMatMulAdd(a0, b0, zero);
      p1 = coopMatMulAdd(a1, b1, zero);
      vec4 k[2];  // per product row: d·sc (2j, 2j + 1), dmin·m (2j, 2j + 1)
      [[unroll]] for (uint h = 0u; h < 2u; ++h) {
        const uvec4 hd = c_live[i][h] ? mv_wq(mat[i], c_q[i][h] + sb * 9u) : uvec4(0u);
        uint sc, mn;
        k4_scales(hd, j, sc, mn);
        const vec2 dm = unpackHalf2x16(hd.x);
        k[h] = vec4(dm.x * float(sc & 0xFFu), dm.x * float(sc >> 8u), dm.y * float(mn & 0xFFu),
                    dm.y * float(mn >> 8u));
      }
      [[unroll]] for (uint e = 0u; e < 4u; ++e) {
        const vec4 kr = k[e >> 1u];
        const uint c = e & 1u;
        acc[i][e] += (kr.x * dx[c].x * float(p0[e]) - kr.z * (sx[c].x + sx[c].z)) +
                     (kr.y * dx[c].y * float(p1[e]) - kr.w * (sx[c].y + sx[c].w));
      }
    }
  }

  if (kSplit > 1u) {
    [[unroll]] for (uint i = 0u; i < kT; ++i) sred[(sp * kT + i) * 32u + lane] = acc[i];
    barrier();
    if (sp != 0u) return;
    [[unroll]] for (uint i = 0u; i < kT; ++i) {
      for (uint g = 1u; g < kSplit; ++g) acc[i] += sred[(g * kT + i) * 32u + lane];
    }
  }
  [[unroll]] for (uint t = 0u; t < kRT; ++t) {
    [[unroll]] for (uint e = 0u; e < 4u; ++e) {
      const uint r = rbase + 16u * t + c_row[e >> 1u], b = c_col[e & 1u];
      if (!c_live[t][e >> 1u] || b >= kNB) continue;
      const float inv = norm ? gi[kCols * kTileVals * 13u / 32u + b] : 1.0;
      const float u = kSwiGlu != 0u ? acc[min(kRT + t, kT - 1u)][e] * inv : 0.0;
      mv_write(m, b * pc.y_stride[m] + r, acc[t][e] * inv, u, add);
    }
  }
}
