// matvec_body.glsl — the decode matvec kernel, batch 1..8 (contract: kernels/ops/matvec.h; per-type
// inner loops: matvec_core.glsl). Compiled twice: matvec.comp (first reduction stage with subgroupAdd)
// and matvec_nosg.comp (MV_NO_SUBGROUP: shared memory only; devices without subgroup arithmetic, and
// lavapipe, where subgroup operations cost seconds of LLVM compile per pipeline).
//
//   y_m[b][r] (= or +=) inv_rms[b] · Σ_c W_m[r][c] · x[b][c] · norm_w[c]    for 1..3 matrices W_m
//   sharing x (without the RMSNorm prologue norm_w = 1 and inv_rms = 1); SwiGLU: y_0 = silu(g) · u
//   with g and u the products of W_0 (gate) and W_1 (up).
//
// Work split. Rows are cut into blocks of kWG/32 · kR rows of one matrix: a workgroup of kWG
// invocations is kWG/32 row groups of kG = 32 lanes, each owning kR consecutive rows (SwiGLU: kR gate
// rows and the same kR up rows). Lanes stride over parts of the rows (matvec_core.glsl), the same part
// of every row of the group, so each staged activation read serves kR (or 2 kR) rows.
//
// Activations. x·norm_w (f32) and the sum of every 8 staged values live in shared memory, staged
// cooperatively by the workgroup. inv_rms factors out of the dot product (Σ W·x·w·s = s · Σ W·x·w):
// Σ x² is accumulated while staging and applied to the row sums at the end.
//  - x fits one tile (batch · cols · 4.5 bytes within shared memory): staged once, then the
//    workgroup walks row blocks wg, wg + grid, ... (the host launches about two workgroups per SM), so
//    x and norm_w are read from L2 once per workgroup, not once per 16–32 rows.
//  - otherwise one block per workgroup, x staged tile by tile (barrier, stage, barrier, compute),
//    the row sums carried in registers across tiles.
//
// Reduction of a block: every lane's partial sums (each slot × batch column, and Σ x²) are first
// added within the subgroup (subgroupAdd, matvec.comp) and written to shared memory per subgroup;
// one lane per output (row, batch column) then adds its row group's per-subgroup partials and writes
// y — two barriers, no log-step tree. Without subgroups every lane's partials go to shared memory.
//
// Direct form (matvec_direct.comp, MV_DIRECT; GPUs with 32-lane subgroups): the row group is one
// subgroup; every lane reads the activations of its parts from x (and norm_w) through the caches —
// x is a few KiB to 48 KiB per column, L1-resident after the first row group touches it — and adds
// their squares for the RMSNorm as it goes (a row group's parts cover every column exactly once, so
// its lanes together see all of x); the Σ x corrections come from the same loaded values. Row sums
// and Σ x² are reduced with subgroupAdd and written by the lanes directly: no shared memory, no
// barrier, so small workgroups keep many loads in flight per SM and one workgroup takes one block.
//
// Specialization on the matrices' types and count: a pipeline carries only the code its call needs
// (every type path and every choice between weight bindings costs registers on GPUs and compile
// time on lavapipe).
//
// Bytes per call: Σ_m rows_m · row_bytes_m (weights, read once) + workgroups · batch · cols · 4 of x
// (and as much of norm_w) from L2 + batch · rows · 4 per output (twice for kAdd).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#if defined(MV_DIRECT) && defined(MV_NO_SUBGROUP)
#error "the direct form reduces with subgroupAdd"
#endif
#ifndef MV_NO_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;           // lanes per row group
layout(constant_id = 2) const uint kNB = 1u;           // batch columns
layout(constant_id = 3) const uint kR = 2u;            // rows per row group (per matrix)
layout(constant_id = 4) const uint kSwiGlu = 0u;       // 1: slots kR.. are the up rows of slots 0..kR-1
layout(constant_id = 5) const uint kTileVals = 4096u;  // staged values per batch column (multiple of 256)
layout(constant_id = 6) const uint kMats = 3u;         // weight bindings in use (1..3)
layout(constant_id = 7) const uint kType0 = 12u;       // weight type id of each matrix (ggml ids)
layout(constant_id = 8) const uint kType1 = 12u;
layout(constant_id = 9) const uint kType2 = 12u;
layout(constant_id = 10) const uint kMvUnrollCols = 1u;  // 0 on CPU devices (matvec_core.glsl: MV_COLS)
layout(constant_id = 11) const uint kSG = 1u;          // subgroup size for the first reduction stage (divides kG; 1 = none)
const uint kMvTypeMask = (1u << kType0) | (1u << kType1) | (1u << kType2);  // code compiled in
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kSubs = kG / kSG;             // partials per row group and value after the first stage
const uint kNS = kR * (kSwiGlu + 1u);    // row slots per row group
const uint kNV = kNS * kNB + kNB;        // values per lane at the end: the slots' sums and Σ x²

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer NW { vec4 nw4[]; };
#include "matvec_io.glsl"

// Shared memory, as vec4: [0, kStage) the staged values (column b at b·kTileVals/4) and then the
// 8-value sums (column b at float 4·kXs + b·kTileVals/8); [kStage, ..) the reduction: partials at
// float 4·kStage + (group·kNV + v)·kSubs + sub, then each row group's Σ x² at red2 + group·kNB + b.
#ifndef MV_DIRECT
const uint kXs = kNB * kTileVals / 4u;
const uint kStage = kXs + kNB * kTileVals / 32u;
const uint kRed = (kWG / kSG * kNV + kGroups * kNB + 3u) / 4u;
shared vec4 sm[kStage + kRed];
#endif

float mv_acc[kNB][kNS];
uint mv_row[kNS];
uint mv_mat[kNS];
bool mv_live[kNS];

float mv_ssq[kNB];  // this invocation's share of Σ x² per batch column

#ifdef MV_DIRECT
bool mv_norm = false;  // x̂ = x · norm_w (the RMSNorm prologue's weight; inv_rms is applied at the end)
// Values 4v .. 4v+3 of column b, straight from x (the direct form has one tile: all of cols). Each
// value is loaded once per row group, so its square goes into Σ x² here.
vec4 mv_x4(uint b, uint v) {
  vec4 a = x4[b * (pc.cols >> 2u) + v];
  mv_ssq[b] += dot(a, a);
  if (mv_norm) a *= nw4[v];
  return a;
}
#else
vec4 mv_x4(uint b, uint v) { return sm[b * (kTileVals / 4u) + v]; }
float sm_f(uint i) { return sm[i >> 2u][i & 3u]; }
void sm_set(uint i, float v) { sm[i >> 2u][i & 3u] = v; }
float mv_xs(uint b, uint e) { return sm_f(4u * kXs + b * (kTileVals / 8u) + e); }
#endif

#include "matvec_core.glsl"

#ifdef MV_DIRECT
// One block of rows per workgroup; see "Direct form" above.
void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint blk = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (blk >= blocks) return;
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  mv_norm = (pc.flags & 1u) != 0u;
  const bool add = (pc.flags & 2u) != 0u;
  const uint m = blk < pc.wg_end.x ? 0u : (blk < pc.wg_end.y ? 1u : 2u);
  const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
  const uint r0 = ((blk - blk0) * kGroups + group) * kR;
  [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_ssq[b] = 0.0;
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    const uint mat = kSwiGlu != 0u ? s / kR : m;
    const uint r = r0 + s % kR;
    mv_live[s] = r < pc.rows[mat];
    mv_row[s] = mv_live[s] ? r * pc.row_bytes[mat] : 0u;
    [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_acc[b][s] = 0.0;
  }
  if (kSwiGlu == 0u) {
    if (kMats == 1u || m == 0u) {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 0u;
      mv_tile(kType0, 0u, pc.cols, lane);
    } else if (kMats == 2u || m == 1u) {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 1u;
      mv_tile(kType1, 0u, pc.cols, lane);
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 2u;
      mv_tile(kType2, 0u, pc.cols, lane);
    }
  } else {
    [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = s / kR;
    if (kType0 == kType1) {
      mv_tile(kType0, 0u, pc.cols, lane);
    } else {  // gate and up of different types: one pass each; Σ x² from the first pass only
      bool live[kNS];
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        live[s] = mv_live[s];
        mv_live[s] = live[s] && s < kR;
      }
      mv_tile(kType0, 0u, pc.cols, lane);
      float ssq[kNB];
      [[unroll]] for (uint b = 0u; b < kNB; ++b) ssq[b] = mv_ssq[b];
      [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s] && s >= kR;
      mv_tile(kType1, 0u, pc.cols, lane);
      [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_ssq[b] = ssq[b];
    }
  }
  // Every lane gets every total; lane t writes outputs t, t + 32, ... (slot-major over batch columns).
  float inv[kNB];
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    inv[b] = 1.0;
    if (mv_norm) inv[b] = inversesqrt(subgroupAdd(mv_ssq[b]) / float(pc.cols) + pc.eps);
  }
  [[unroll]] for (uint s = 0u; s < kR; ++s) {
    [[unroll]] for (uint b = 0u; b < kNB; ++b) {
      const float v = subgroupAdd(mv_acc[b][s]) * inv[b];
      const float u = kSwiGlu != 0u ? subgroupAdd(mv_acc[b][s + kR]) * inv[b] : 0.0;
      const uint r = r0 + s;
      if (lane != (s * kNB + b) % kG || r >= pc.rows[m]) continue;
      mv_write(m, b * pc.y_stride[m] + r, v, u, add);
    }
  }
}
#else
// Stages x·norm_w of column b for tile values first .. first+nvals, 8 per invocation, and their sums.
void stage_column(uint b, uint first, uint nvals, bool norm) {
  const uint lid = gl_LocalInvocationID.x;
  for (uint e = lid; e < (nvals >> 3u); e += kWG) {
    const uint gi = b * (pc.cols >> 2u) + (first >> 2u) + 2u * e;
    vec4 a = x4[gi], c = x4[gi + 1u];
    mv_ssq[b] += dot(a, a) + dot(c, c);
    if (norm) {
      a *= nw4[(first >> 2u) + 2u * e];
      c *= nw4[(first >> 2u) + 2u * e + 1u];
    }
    sm[b * (kTileVals / 4u) + 2u * e] = a;
    sm[b * (kTileVals / 4u) + 2u * e + 1u] = c;
    sm_set(4u * kXs + b * (kTileVals / 8u) + e, dot(a + c, vec4(1.0)));
  }
}

// Adds v over the lanes of one subgroup (matvec.comp) and stores it, from the subgroup's first lane,
// as partial `sub` of value `v_index` of row group `group`.
void store_partial(uint group, uint lane, uint v_index, float v) {
#ifndef MV_NO_SUBGROUP
  if (kSG > 1u) v = subgroupAdd(v);
#endif
  if (lane % kSG == 0u) sm_set(4u * kStage + (group * kNV + v_index) * kSubs + lane / kSG, v);
}
// Value index: v = s·kNB + b (slot-major, so the up row of output task (s, b) is v + kR·kNB), then
// kNS·kNB + b for Σ x².
void store_partials(uint b, uint group, uint lane) {
  [[unroll]] for (uint s = 0u; s < kNS; ++s) store_partial(group, lane, s * kNB + b, mv_acc[b][s]);
  store_partial(group, lane, kNS * kNB + b, mv_ssq[b]);
}
float partial_sum(uint group, uint v_index) {
  const uint base = 4u * kStage + (group * kNV + v_index) * kSubs;
  float t = 0.0;
  for (uint k = 0u; k < kSubs; ++k) t += sm_f(base + k);
  return t;
}

void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= blocks) return;  // grid padding: whole workgroups, before any barrier
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const bool norm = (pc.flags & 1u) != 0u, add = (pc.flags & 2u) != 0u;
  // With x in one tile it is staged for the first block only (the host may then launch fewer
  // workgroups than blocks); otherwise each workgroup has one block and stages tile after tile.
  const bool staged_once = pc.ntiles == 1u;
  [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_ssq[b] = 0.0;
  for (uint blk = wg; blk < blocks; blk += pc.grid) {
    const uint m = blk < pc.wg_end.x ? 0u : (blk < pc.wg_end.y ? 1u : 2u);
    const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
    const uint r0 = ((blk - blk0) * kGroups + group) * kR;
    bool live[kNS];
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint mat = kSwiGlu != 0u ? s / kR : m;
      const uint r = r0 + s % kR;
      live[s] = r < pc.rows[mat];
      mv_live[s] = live[s];
      mv_row[s] = live[s] ? r * pc.row_bytes[mat] : 0u;
      [[unroll]] for (uint b = 0u; b < kNB; ++b) mv_acc[b][s] = 0.0;
    }
    for (uint t = 0u; t < pc.ntiles; ++t) {
      const uint first = t * pc.tile_vals, nvals = min(pc.tile_vals, pc.cols - first);
      if (!staged_once || blk == wg) {
        if (t > 0u) barrier();  // every row group is done with the previous tile
        MV_COLS(stage_column(b, first, nvals, norm))
        barrier();
      }
      // The passes over the tile. The matrix index of every slot is set to a constant right before
      // each instance of mv_tile, so that its weight loads compile to one binding.
      if (kSwiGlu == 0u) {
        if (kMats == 1u || m == 0u) {
          [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 0u;
          mv_tile(kType0, first, nvals, lane);
        } else if (kMats == 2u || m == 1u) {
          [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 1u;
          mv_tile(kType1, first, nvals, lane);
        } else {
          [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = 2u;
          mv_tile(kType2, first, nvals, lane);
        }
      } else {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = s / kR;
        if (kType0 == kType1) {
          mv_tile(kType0, first, nvals, lane);
        } else {  // gate and up of different types: one pass each
          [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s] && s < kR;
          mv_tile(kType0, first, nvals, lane);
          [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s] && s >= kR;
          mv_tile(kType1, first, nvals, lane);
          [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = live[s];
        }
      }
    }

    // Reduce and write the block.
    MV_COLS(store_partials(b, group, lane))
    barrier();
    const uint red2 = 4u * kStage + kWG / kSG * kNV;  // float index of the per-group Σ x²
    if (norm) {
      for (uint b = lane; b < kNB; b += kG) sm_set(red2 + group * kNB + b, partial_sum(group, kNS * kNB + b));
    }
    barrier();
    for (uint task = lane; task < kR * kNB; task += kG) {  // output (s, b), s < kR: one lane each
      const uint s = task / kNB, b = task % kNB, r = r0 + s;
      if (r >= pc.rows[m]) continue;
      float inv = 1.0;
      if (norm) {
        float total = 0.0;
        for (uint g = 0u; g < kGroups; ++g) total += sm_f(red2 + g * kNB + b);
        inv = inversesqrt(total / float(pc.cols) + pc.eps);
      }
      const float v = partial_sum(group, task) * inv;
      const float u = kSwiGlu != 0u ? partial_sum(group, task + kR * kNB) * inv : 0.0;
      mv_write(m, b * pc.y_stride[m] + r, v, u, add);
    }
    barrier();  // the reduction area is read before the next block writes it
  }
}
#endif  // MV_DIRECT
