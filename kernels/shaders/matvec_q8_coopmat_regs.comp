#version 460
// The q8 coopmat form's register kernel (kernels/ops/matvec.h; the default for steps of 8 one-token
// streams, TROVE_MATVEC_Q8CM_REGS=1 elsewhere): the int8 MMAs of matvec_q8_coopmat.comp (16 rows × 32
// values × 8 columns, Q4_K), but each lane writes its own elements of A straight from its code loads and
// scales its own elements of the products — no shared memory and no barrier inside the K loop.
//
// Which elements a lane holds is the implementation's (VK_KHR_cooperative_matrix); Matvec::create probes
// it (matvec_q8_coopmat_probe.comp) and passes the table in binding 1 (lt):
//   lt[4l + g]        lane l's A elements 4g..4g+3: row | k0 << 8 — one row, values k0..k0+3 (k0 % 4 == 0);
//                     two rows' values k0.. and k0 + 16.. (k0 < 16): groups h and h + 2 of one row, or
//                     2h and 2h + 1 (NVIDIA's; lt[256] = 1)
//   lt[128 + 4l + e]  its product elements e: row | column << 8, elements 0 and 1 in one row, 2 and 3 in
//                     another, elements 0 and 2 in one column, 1 and 3 in another
// (the host refuses the kernel on a layout without these properties).
//
// Loads, in as few cache lines as the data allows: a load of a row's 4 bytes by 32 lanes touched 8 lines
// for 128 bytes. A Q4_K sub-block pair's 32 code bytes of a row hold value k of sub-block 2j in the low
// nibble of byte k and of 2j + 1 in the high one. The MMA sums over k in any order, so K is permuted: A's
// value k is the row's byte π(k) (π(4a + i) = 8a + i, π(16 + 4a + i) = 8a + 4 + i), and the activation
// pass stores B in that order (matvec_q8_quant.comp, push flag 4) — a lane's two groups of a row are then
// one 8-byte load, and a run's two 32 × 8 B matrices, its columns' scales and sums each lie together. A
// super-block's header (scales) is loaded once for its four runs. On the H100 this took the 8B's calls
// of 8 columns from 71.0 / 35.9 / 58.3 µs to 62.0 / 24.4 / 38.7 (gate+up, qkv, down in bench_kernels)
// and 8 streams from 992 to 1,034 tok/s (2026-12-07 16:07, docs/performance.md).
//
// Work split: kRT tiles of 16 rows (SwiGLU: of gate and of up) a workgroup, kSplit subgroups walking its
// super-blocks, their sums added in order through shared memory at the end. Nothing is loaded ahead:
// with the next run's operands loaded ahead the kernel was slower (H100 2026-12-07 14:26, the older
// layout; likely the registers they hold, which were not counted; docs/performance.md).
#extension GL_GOOGLE_include_directive : require
#include "matvec_q8_coopmat.glsl"

// kMeasure 1: the push flags 4, 16, 32 and 128 below apply (TROVE_MATVEC_Q8CM_SKIP set); 0 (the engine's
// calls): their branches are compiled out. kAhead 1 (TROVE_MATVEC_Q8CM_AHEAD=1): the next super-block's
// headers and its first run's codes are loaded while this one's first run is computed (a loop-carried
// load the compiler cannot hoist; the runs of one super-block are unrolled, so their loads it can).
layout(constant_id = 6) const uint kMeasure = 0u;
layout(constant_id = 7) const uint kAhead = 0u;

// The header no_w reads: d = dmin = 1, every scale and min 1.
const uvec4 kConstHeader = uvec4(0x3C003C00u, 0x01010101u, 0x01010101u, 0x01010101u);

shared vec4 sred[kSplit > 1u ? kSplit * kT * 32u : 1u];  // each lane's 4 sums of each tile, per subgroup

// Binding 2..4 (the weights) as 8-byte words, for the lanes' code loads.
layout(std430, set = 0, binding = 2) readonly buffer W0d { uvec2 w0d[]; };
layout(std430, set = 0, binding = 3) readonly buffer W1d { uvec2 w1d[]; };
layout(std430, set = 0, binding = 4) readonly buffer W2d { uvec2 w2d[]; };
uvec2 mv_wd(uint m, uint i) {
  if (kMats == 1u || m == 0u) return w0d[i];
  if (kMats == 2u || m == 1u) return w1d[i];
  return w2d[i];
}

// One run's operands (run = sub-block pair j of super-block sb: 64 values of each row).
struct Run {
  uvec2 w[kT][2];  // the lane's code bytes of its two A rows (g = 0, 1): values π(k0), 8 bytes
  coopmat<int8_t, gl_ScopeSubgroup, 32, 8, gl_MatrixUseB> b0, b1;  // x̂ of blocks 2j, 2j + 1 (permuted)
  vec2 dx[2];  // the lane's columns' (c_col) scales of blocks 2j, 2j + 1
  vec4 sx[2];  // their d·Σq: (block 2j half 0, 2j + 1 half 0, 2j half 1, 2j + 1 half 1)
};

// A's elements 4g..4g+3 from code word WD: low nibbles into a0, high ones into a1 (masked a word at a
// time: each element a byte of a masked word).
#define A_FROM_WORD(G, WD)                                          \
  {                                                                 \
    const uint lo = (WD) & 0x0F0F0F0Fu, hi = ((WD) >> 4u) & 0x0F0F0F0Fu; \
    [[unroll]] for (uint b = 0u; b < 4u; ++b) {                     \
      a0[4u * (G) + b] = int8_t(lo >> (8u * b));                    \
      a1[4u * (G) + b] = int8_t(hi >> (8u * b));                    \
    }                                                               \
  }

void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= blocks) return;  // grid padding: whole workgroups, before the barrier
  const uint lid = gl_LocalInvocationID.x, sp = lid / 32u, lane = lid % 32u;
  const bool norm = (pc.flags & 1u) != 0u, add = (pc.flags & 2u) != 0u;
  // Measurements with WRONG results (TROVE_MATVEC_Q8CM_SKIP, the host's), as in matvec_q8_coopmat.comp:
  // 4 no weight loads (constant codes and headers), 16 no scales (the products summed as they are), 32 no
  // MMA (the elements of A and B summed instead), 128 no A built from the codes (A a matrix of one value
  // of the lane's code word: what writing A's elements costs); 8 (B from shared memory) does not apply here.
  const bool no_w = kMeasure != 0u && (pc.flags & 4u) != 0u;
  const bool no_scales = kMeasure != 0u && (pc.flags & 16u) != 0u;
  const bool no_mma = kMeasure != 0u && (pc.flags & 32u) != 0u;
  const bool no_a = kMeasure != 0u && (pc.flags & 128u) != 0u;
  const uint m = wg < pc.wg_end.x ? 0u : (wg < pc.wg_end.y ? 1u : 2u);
  const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
  const uint rbase = (wg - blk0) * 16u * kRT;  // the workgroup's first row

  // This lane's elements (the probed layout): its A rows (groups 0 and 1; 2 and 3 are 16 values on) and
  // their first value, and its product rows and columns.
  const bool adj = lt[256] != 0u;  // groups 2h, 2h + 1 one row (else h, h + 2)
  const uint t0 = lt[4u * lane], t1 = lt[4u * lane + (adj ? 2u : 1u)];
  const uint a_row[2] = uint[2](t0 & 0xFFu, t1 & 0xFFu);
  const uint a_byte[2] = uint[2](2u * (t0 >> 8u), 2u * (t1 >> 8u));  // π(k0) = 2·k0 for k0 < 16
  const uint e0 = lt[128u + 4u * lane], e1 = lt[128u + 4u * lane + 1u], e2 = lt[128u + 4u * lane + 2u];
  const uint c_row[2] = uint[2](e0 & 0xFFu, e2 & 0xFFu);  // rows of elements 0, 1 and of 2, 3
  const uint c_col[2] = uint[2](e0 >> 8u, e1 >> 8u);      // columns of elements 0, 2 and of 1, 3

  // Tile i = s·kRT + t: set s (the rows, or gate / up), rows 16t.. of the workgroup's. Offsets in 8-byte
  // words (codes) and 16-byte words (headers) of super-block 0.
  uint mat[kT], a_off[kT][2], c_q[kT][2];
  bool a_live[kT][2], c_live[kT][2];
  [[unroll]] for (uint i = 0u; i < kT; ++i) {
    mat[i] = kSwiGlu != 0u ? i / kRT : m;
    const uint r0 = rbase + 16u * (i % kRT);
    [[unroll]] for (uint h = 0u; h < 2u; ++h) {
      a_live[i][h] = r0 + a_row[h] < pc.rows[mat[i]] && !no_w;
      a_off[i][h] = a_live[i][h] ? ((r0 + a_row[h]) * pc.row_bytes[mat[i]] + 16u + a_byte[h]) >> 3u : 0u;
      c_live[i][h] = r0 + c_row[h] < pc.rows[mat[i]];
      c_q[i][h] = c_live[i][h] ? (r0 + c_row[h]) * (pc.row_bytes[mat[i]] >> 4u) : 0u;
    }
  }
  vec4 acc[kT];
  [[unroll]] for (uint i = 0u; i < kT; ++i) acc[i] = vec4(0.0);

  const coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator> zero =
      coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator>(0);
  const uint nsb = pc.cols >> 8u;
  const uint SX = kCols * kTileVals * 9u / 32u, DX = kCols * kTileVals / 4u;  // floats
  // Loads run (sb, j): sb < nsb. Its codes into W (LOAD_CODES), or (kAhead, j = 0) from wn.
  #define LOAD_CODES(W, SB, J)                                                                             \
    [[unroll]] for (uint i = 0u; i < kT; ++i) {                                                            \
      [[unroll]] for (uint h = 0u; h < 2u; ++h)                                                            \
        W[i][h] = a_live[i][h] ? mv_wd(mat[i], a_off[i][h] + (SB) * 18u + 4u * (J))                        \
                               : uvec2(lane * 0x01010101u);                                                \
    }
  #define LOAD_RUN(R, SB, J)                                                                               \
    {                                                                                                      \
      const uint kl_ = (SB) * 8u + 2u * (J);                                                               \
      if (kAhead != 0u && (J) == 0u) {                                                                     \
        [[unroll]] for (uint i = 0u; i < kT; ++i) R.w[i] = wn[i];                                          \
      } else {                                                                                             \
        LOAD_CODES(R.w, SB, J)                                                                             \
      }                                                                                                    \
      coopMatLoad(R.b0, gq4, kl_ * 2u * kCols, 2u, gl_CooperativeMatrixLayoutColumnMajor);                 \
      coopMatLoad(R.b1, gq4, (kl_ + 1u) * 2u * kCols, 2u, gl_CooperativeMatrixLayoutColumnMajor);          \
      [[unroll]] for (uint h = 0u; h < 2u; ++h) {                                                          \
        R.dx[h] = gd2[(DX + (kl_ >> 1u) * 2u * kCols + 2u * c_col[h]) >> 1u];                              \
        R.sx[h] = gs4[(SX + (kl_ >> 1u) * 4u * kCols + 4u * c_col[h]) >> 2u];                              \
      }                                                                                                    \
    }
  #define LOAD_HEADERS(HD, SB)                                                                             \
    [[unroll]] for (uint i = 0u; i < kT; ++i) {                                                            \
      [[unroll]] for (uint h = 0u; h < 2u; ++h)                                                            \
        HD[i][h] = c_live[i][h] && !no_w ? mv_wq(mat[i], c_q[i][h] + (SB) * 9u) : kConstHeader;            \
    }

  Run cur;
  uvec4 hd[kT][2], hdn[kT][2];
  uvec2 wn[kT][2];  // kAhead: the codes of the next super-block's first run
  if (kAhead != 0u) {
    const uint s0 = min(sp, nsb - 1u);
    LOAD_HEADERS(hd, s0)
    LOAD_CODES(wn, s0, 0u)
  }
  for (uint sb = sp; sb < nsb; sb += kSplit) {
    if (kAhead == 0u) LOAD_HEADERS(hd, sb)
    const uint nx = min(sb + kSplit, nsb - 1u);  // the last super-block's loads repeat it (not used)
    [[unroll]] for (uint j = 0u; j < 4u; ++j) {
      LOAD_RUN(cur, sb, j)
      if (kAhead != 0u && j == 0u) {
        LOAD_HEADERS(hdn, nx)
        LOAD_CODES(wn, nx, 0u)
      }
      [[unroll]] for (uint i = 0u; i < kT; ++i) {
        // A from the code bytes: low nibbles (sub-block 2j), high ones (2j + 1). Load h holds the lane's
        // groups of one row: groups h and h + 2 (x, y) in one element order, 2h and 2h + 1 in the other
        // (adj, NVIDIA's).
        coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA> a0, a1;
        if (no_a) {
          a0 = coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA>(int8_t(cur.w[i][0].x & 0x0Fu));
          a1 = coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA>(int8_t(cur.w[i][1].y & 0x0Fu));
        } else {
          [[unroll]] for (uint g = 0u; g < 4u; ++g) {
            const uvec2 pw = adj ? cur.w[i][g >> 1u] : cur.w[i][g & 1u];
            const uint wd = (adj ? (g & 1u) : (g >> 1u)) == 0u ? pw.x : pw.y;
            A_FROM_WORD(g, wd)
          }
        }
        coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator> p0, p1;
        if (no_mma) {  // the elements of A and B summed instead
          [[unroll]] for (uint e = 0u; e < 4u; ++e) {
            p0[e] = int(a0[e]) + int(cur.b0[e]);
            p1[e] = int(a1[e]) + int(cur.b1[e]);
          }
        } else {
          p0 = coopMatMulAdd(a0, cur.b0, zero);
          p1 = coopMatMulAdd(a1, cur.b1, zero);
        }
        if (no_scales) {
          [[unroll]] for (uint e = 0u; e < 4u; ++e) acc[i][e] += float(p0[e]) + float(p1[e]);
          continue;
        }
        vec4 k[2];  // per product row: d·sc (2j, 2j + 1), dmin·m (2j, 2j + 1)
        [[unroll]] for (uint h = 0u; h < 2u; ++h) {
          uint sc, mn;
          k4_scales(hd[i][h], j, sc, mn);
          const vec2 dm = unpackHalf2x16(hd[i][h].x);
          k[h] = vec4(dm.x * float(sc & 0xFFu), dm.x * float(sc >> 8u), dm.y * float(mn & 0xFFu),
                      dm.y * float(mn >> 8u));
        }
        [[unroll]] for (uint e = 0u; e < 4u; ++e) {
          const vec4 kr = k[e >> 1u];
          const uint c = e & 1u;
          acc[i][e] += (kr.x * cur.dx[c].x * float(p0[e]) - kr.z * (cur.sx[c].x + cur.sx[c].z)) +
                       (kr.y * cur.dx[c].y * float(p1[e]) - kr.w * (cur.sx[c].y + cur.sx[c].w));
        }
      }
    }
    if (kAhead != 0u) {
      [[unroll]] for (uint i = 0u; i < kT; ++i) hd[i] = hdn[i];
    }
  }
  #undef LOAD_RUN
  #undef LOAD_CODES
  #undef LOAD_HEADERS

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
