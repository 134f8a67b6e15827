// moe_experts_body.glsl — the expert-indexed matvec over a routing plan (kernels/ops/moe_ffn.h):
// every selected expert of every token of a step in ONE dispatch, the expert ids read from the plan
// that moe_route.comp / moe_plan.comp wrote on the GPU (no host round trip). Compiled three times:
// moe_experts.comp (first reduction stage with subgroupAdd), moe_experts_nosg.comp (shared memory
// only: lavapipe, devices without subgroup arithmetic) and moe_experts_direct.comp (MV_DIRECT, below).
// The per-type inner loops are the decode matvec's (matvec_core.glsl), so both run at the same bytes
// per clock.
//
// Grid: x = row blocks of kWG/32 · kR rows, y = plan work entries. An entry is (expert e, slots
// first .. first+count-1), count <= 8, all routed to e, so an expert's rows are read once per entry —
// once per step in decode (<= 8 tokens never give an expert more than 8 slots). Workgroups past the
// plan's entry count exit at once (the host sizes y for the worst case): unused experts cost nothing.
//
// Modes (kSwiGlu):
//   1: W0 = gate [E][rows][cols], W1 = up (types kType0 / kType1); the input row of slot s is token
//      slot_pair[s] / k of x [tokens][cols]; y[s][row] = silu(W0·x) * (W1·x)     (gate/up + SwiGLU)
//   0: W0 only; the input row of slot s is x[s] ([slots][cols]: the SwiGLU output); y[s][row] = W0·x
// The entry's slots are the batch columns of matvec_core: staged (x rows gathered by slot) in tiles of
// kTileVals values, kNB columns per pass over the weights (kNB = min(8, tokens) on GPUs, so decode
// stages exactly its one row; a pass per kNB slots otherwise). Columns past the entry's count are
// staged as zeros and never written.
//
// Reduction as in matvec_body.glsl: per-lane partials (subgroupAdd first where kSG > 1) to shared
// memory, one lane per output (row, column) adds its row group's partials. Fixed order: bit-identical
// results run to run.
//
// Direct form (MV_DIRECT; GPUs with subgroup arithmetic, the decode matvec's matvec_direct.comp
// design): a row group is one subgroup (kG = the subgroup size), every lane reads its parts' inputs
// from x through the caches (an input row is 8 KiB at the 30B-A3B's hidden 2048: L1-resident after
// the first row group), the row sums are reduced with subgroupAdd and written by the lanes — no shared
// memory, no barriers, one tile (the whole row).
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
layout(constant_id = 2) const uint kNB = 1u;           // slots (batch columns) per pass
layout(constant_id = 3) const uint kR = 1u;            // rows per row group (per matrix)
layout(constant_id = 4) const uint kSwiGlu = 1u;       // 1: slots kR.. are the up rows of slots 0..kR-1
layout(constant_id = 5) const uint kTileVals = 2048u;  // staged values per column (multiple of 256)
layout(constant_id = 6) const uint kType0 = 12u;       // weight type ids (ggml) of W0 and W1
layout(constant_id = 7) const uint kType1 = 12u;
layout(constant_id = 8) const uint kMvUnrollCols = 1u;  // 0 on CPU devices (matvec_core.glsl: MV_COLS)
layout(constant_id = 9) const uint kSG = 1u;           // subgroup size of the first reduction stage (1 = none)
const uint kMvTypeMask = (1u << kType0) | (1u << kType1);
const uint kMats = kSwiGlu + 1u;
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kSubs = kG / kSG;
const uint kNS = kR * kMats;   // row slots per row group
const uint kNV = kNS * kNB;    // values per lane at the end

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 1) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 2) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 2) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 3) readonly buffer Plan { uint plan[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Y { float y[]; };
layout(std430, set = 0, binding = 5) readonly buffer NW { vec4 nw4[]; };  // pc.norm: the RMSNorm weights

layout(push_constant) uniform P {
  uint rows; uint cols; uint rb0; uint rb1;  // output rows per expert, input columns, row bytes of W0 / W1
  uint k;                                    // top-k (pair p = token * k + j)
  uint x_by_slot;                            // 0: x row = token of the slot, 1: x row = the slot
  uint n_entries_off; uint entries_off; uint slot_pair_off;  // plan offsets (uint words)
  uint ntiles; uint tile_vals;
  uint norm; float eps;  // direct form: x is the residual stream, RMSNorm with weights nw4 applied here
  uint raw_wt;           // direct form, by pair: binding 6 holds raw router logits to scale
                         // (moe_scale_weights.glsl)
} pc;

float mv_acc[kNB][kNS];
uint mv_row[kNS];
uint mv_mat[kNS];
bool mv_live[kNS];
uint g_xrow[kNB];  // vec4 index of each column's input row (valid columns only)
uint g_ncols;      // valid columns of the current pass

uvec4 mv_wq(uint m, uint i) { return kMats == 1u || m == 0u ? w0q[i] : w1q[i]; }
uint mv_ww(uint m, uint i) { return kMats == 1u || m == 0u ? w0w[i] : w1w[i]; }
#ifdef MV_DIRECT
layout(std430, set = 0, binding = 6) buffer Wt { float wt[]; };  // pc.raw_wt: routing weights, scaled here
#include "moe_scale_weights.glsl"
// With pc.norm the input is the residual stream: x̂ = x · norm_w here, Σ x² per column on the way (each
// value is loaded once per pass of a row group, which covers every column), inv_rms applied at the end.
bool g_norm = false;
float g_ssq[kNB];
vec4 mv_x4(uint b, uint v) {
  vec4 a = x4[g_xrow[b] + v];
  if (g_norm) {
    g_ssq[b] += dot(a, a);
    a *= nw4[v];
  }
  return a;
}
#else
// Shared memory, as vec4: [0, kStage) staged values (column b at b·kTileVals/4) and their 8-value
// sums (column b at float 4·kXs + b·kTileVals/8); [kStage, ..) the partials at float
// 4·kStage + (group·kNV + v)·kSubs + sub.
const uint kXs = kNB * kTileVals / 4u;
const uint kStage = kXs + kNB * kTileVals / 32u;
const uint kRed = (kWG / kSG * kNV + 3u) / 4u;
shared vec4 sm[kStage + kRed];
vec4 mv_x4(uint b, uint v) { return sm[b * (kTileVals / 4u) + v]; }
float sm_f(uint i) { return sm[i >> 2u][i & 3u]; }
void sm_set(uint i, float v) { sm[i >> 2u][i & 3u] = v; }
float mv_xs(uint b, uint e) { return sm_f(4u * kXs + b * (kTileVals / 8u) + e); }
#endif

#include "matvec_core.glsl"

bool g_live[kNS];  // the row group's slots whose row exists (mv_live narrows it per pass)
// The byte offsets of the row group's rows r0 .. r0+kR-1 in expert `expert` (gate rows, then up rows
// with SwiGLU), and which of them exist.
void expert_rows(uint expert, uint r0) {
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    const uint mat = kSwiGlu != 0u ? s / kR : 0u;
    const uint r = r0 + s % kR;
    g_live[s] = r < pc.rows;
    mv_live[s] = g_live[s];
    mv_row[s] = g_live[s] ? (expert * pc.rows + r) * (mat == 0u ? pc.rb0 : pc.rb1) : 0u;
  }
}

// The gate/up (or single) pass over the tile, with the matrix of every slot set to a constant right
// before mv_tile, so that each weight load compiles to one binding (as matvec_body.glsl does).
void experts_tile(uint first, uint nvals, uint lane) {
  [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_mat[s] = kSwiGlu != 0u ? s / kR : 0u;
  if (kSwiGlu == 0u || kType0 == kType1) {
    mv_tile(kType0, first, nvals, lane);
  } else {  // gate and up of different types: one pass each
    [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = g_live[s] && s < kR;
    mv_tile(kType0, first, nvals, lane);
#ifdef MV_DIRECT
    float ssq[kNB];  // Σ x² from the first pass only
    [[unroll]] for (uint b = 0u; b < kNB; ++b) ssq[b] = g_ssq[b];
#endif
    [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = g_live[s] && s >= kR;
    mv_tile(kType1, first, nvals, lane);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) mv_live[s] = g_live[s];
#ifdef MV_DIRECT
    [[unroll]] for (uint b = 0u; b < kNB; ++b) g_ssq[b] = ssq[b];
#endif
  }
}

#ifndef MV_DIRECT
// Stages column b's tile values first .. first+nvals (zeros past the pass's valid columns), 8 per
// invocation, and their sums.
void stage_column(uint b, uint first, uint nvals) {
  const uint lid = gl_LocalInvocationID.x;
  const bool valid = b < g_ncols;
  for (uint e = lid; e < (nvals >> 3u); e += kWG) {
    vec4 a = vec4(0.0), c = vec4(0.0);
    if (valid) {
      const uint gi = g_xrow[b] + (first >> 2u) + 2u * e;
      a = x4[gi];
      c = x4[gi + 1u];
    }
    sm[b * (kTileVals / 4u) + 2u * e] = a;
    sm[b * (kTileVals / 4u) + 2u * e + 1u] = c;
    sm_set(4u * kXs + b * (kTileVals / 8u) + e, dot(a + c, vec4(1.0)));
  }
}

void store_partial(uint group, uint lane, uint v_index, float v) {
#ifndef MV_NO_SUBGROUP
  if (kSG > 1u) v = subgroupAdd(v);
#endif
  if (lane % kSG == 0u) sm_set(4u * kStage + (group * kNV + v_index) * kSubs + lane / kSG, v);
}
// Value index v = s·kNB + b (slot-major: the up row of output task (s, b) is v + kR·kNB).
void store_partials(uint b, uint group, uint lane) {
  [[unroll]] for (uint s = 0u; s < kNS; ++s) store_partial(group, lane, s * kNB + b, mv_acc[b][s]);
}
float partial_sum(uint group, uint v_index) {
  const uint base = 4u * kStage + (group * kNV + v_index) * kSubs;
  float t = 0.0;
  for (uint k = 0u; k < kSubs; ++k) t += sm_f(base + k);
  return t;
}

void main() {
  const uint entry = gl_WorkGroupID.y;
  if (entry >= plan[pc.n_entries_off]) return;  // whole workgroups, before any barrier
  const uint expert = plan[pc.entries_off + 2u * entry], packed = plan[pc.entries_off + 2u * entry + 1u];
  const uint first_slot = packed & 0xffffffu, count = packed >> 24;
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint r0 = (gl_WorkGroupID.x * kGroups + group) * kR;
  expert_rows(expert, r0);
  for (uint j0 = 0u; j0 < count; j0 += kNB) {
    g_ncols = min(kNB, count - j0);
    [[unroll]] for (uint b = 0u; b < kNB; ++b) {
      const uint s = first_slot + j0 + min(b, g_ncols - 1u);
      g_xrow[b] = (pc.x_by_slot != 0u ? s : plan[pc.slot_pair_off + s] / pc.k) * (pc.cols >> 2u);
      [[unroll]] for (uint q = 0u; q < kNS; ++q) mv_acc[b][q] = 0.0;
    }
    for (uint t = 0u; t < pc.ntiles; ++t) {
      const uint first = t * pc.tile_vals, nvals = min(pc.tile_vals, pc.cols - first);
      if (t > 0u || j0 > 0u) barrier();  // every row group is done with the previous tile / pass
      MV_COLS(stage_column(b, first, nvals))
      barrier();
      experts_tile(first, nvals, lane);
    }
    MV_COLS(store_partials(b, group, lane))
    barrier();
    for (uint task = lane; task < kR * kNB; task += kG) {  // output (s, b), s < kR: one lane each
      const uint s = task / kNB, b = task % kNB, r = r0 + s;
      if (r >= pc.rows || b >= g_ncols) continue;
      const float v = partial_sum(group, task);
      const uint i = (first_slot + j0 + b) * pc.rows + r;
      if (kSwiGlu != 0u) {
        y[i] = v / (1.0 + exp(-v)) * partial_sum(group, task + kR * kNB);
      } else {
        y[i] = v;
      }
    }
  }
}
#else  // MV_DIRECT
// pc.x_by_slot == 2 (MoeFfnCall::by_pair, decode): no plan — grid row `entry` is the (token, j) pair,
// binding 3 holds the ids (expert = plan[pair]), the input row is the token (pair / k), the output row
// the pair; pc.n_entries_off carries the number of pairs.
void main() {
  const uint entry = gl_WorkGroupID.y;
  const bool by_pair = pc.x_by_slot == 2u;
  if (entry >= (by_pair ? pc.n_entries_off : plan[pc.n_entries_off])) return;
  uint expert, first_slot, count;
  if (by_pair) {
    expert = plan[entry];
    first_slot = entry;
    count = 1u;
  } else {
    expert = plan[pc.entries_off + 2u * entry];
    const uint packed = plan[pc.entries_off + 2u * entry + 1u];
    first_slot = packed & 0xffffffu;
    count = packed >> 24;
  }
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint r0 = (gl_WorkGroupID.x * kGroups + group) * kR;
  g_norm = pc.norm != 0u;
  expert_rows(expert, r0);
  for (uint j0 = 0u; j0 < count; j0 += kNB) {
    g_ncols = min(kNB, count - j0);
    [[unroll]] for (uint b = 0u; b < kNB; ++b) {
      const uint s = first_slot + j0 + min(b, g_ncols - 1u);
      g_xrow[b] = (by_pair ? s / pc.k : pc.x_by_slot != 0u ? s : plan[pc.slot_pair_off + s] / pc.k) * (pc.cols >> 2u);
      g_ssq[b] = 0.0;
      [[unroll]] for (uint q = 0u; q < kNS; ++q) mv_acc[b][q] = 0.0;
    }
    experts_tile(0u, pc.cols, lane);
    float inv[kNB];
    [[unroll]] for (uint b = 0u; b < kNB; ++b) {
      inv[b] = 1.0;
      if (g_norm) inv[b] = inversesqrt(subgroupAdd(g_ssq[b]) / float(pc.cols) + pc.eps);
    }
    // The token's routing weights, once: pair j = 0's first row group (by pair, one column a pass).
    if (pc.raw_wt != 0u && by_pair && gl_WorkGroupID.x == 0u && group == 0u && lane == 0u &&
        first_slot % pc.k == 0u) {
      scale_raw_weights(first_slot / pc.k, pc.k, inv[0]);
    }
    // Every lane gets every total; lane (s·kNB + b) % kG writes output (s, b).
    [[unroll]] for (uint s = 0u; s < kR; ++s) {
      [[unroll]] for (uint b = 0u; b < kNB; ++b) {
        const float v = subgroupAdd(mv_acc[b][s]) * inv[b];
        const float u = kSwiGlu != 0u ? subgroupAdd(mv_acc[b][s + kR]) * inv[b] : 0.0;
        const uint r = r0 + s;
        if (lane != (s * kNB + b) % kG || r >= pc.rows || b >= g_ncols) continue;
        const uint i = (first_slot + j0 + b) * pc.rows + r;
        y[i] = kSwiGlu != 0u ? v / (1.0 + exp(-v)) * u : v;
      }
    }
  }
}
#endif  // MV_DIRECT
