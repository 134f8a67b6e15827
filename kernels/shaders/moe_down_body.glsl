// moe_down_body.glsl — decode MoE down projection fused with the routing-weighted sum and the
// residual add (kernels/ops/moe_ffn.h, steps of <= 8 tokens):
//   x[t][row] += sum_j w[t][j] * (down_e · h[slot(t, j)]),   e = ids[t][j], j < k (in that order)
// Compiled three times: moe_down.comp (first reduction stage with subgroupAdd), moe_down_nosg.comp and
// moe_down_direct.comp (MV_DIRECT, below). Per-type inner loops: matvec_core.glsl.
//
// Grid: x = row blocks of kWG/32 · kR rows of the hidden size, y = tokens. A workgroup stages the k
// SwiGLU rows h[slot(t, j)] of its token (tile by tile of the expert FFN width), then its row groups
// run the k experts' rows over them one after another — the staged column of expert j is selected
// through g_col, so matvec_core runs with one batch column — adding w_j × each lane's partial dot to
// the lane's running sum. One reduction at the end gives each row's sum over all k experts, and one
// invocation adds it into x: no atomics, a fixed order of the sum (bit-identical runs).
// Bytes: k expert rows of the down type per output row (the weights), k · ffn · 4 staged from L2 per
// workgroup, 4 read + 4 written per output.
//
// Direct form (MV_DIRECT; GPUs with subgroup arithmetic): a row group is one subgroup (kG = its
// size) and its lanes take the PARTS of all k experts' rows as one list (item = j · parts + part), so
// an expert row of 768 values — 24 Q4_K parts, fewer than a subgroup's lanes — does not leave lanes
// idle, and each lane has k times more independent loads in flight. A lane reads its part's inputs
// h[slot(t, j)] straight from memory (L1/L2) scaled by w_j, so the accumulators hold Σ_j w_j (down_e·h)
// directly; subgroupAdd and one lane per row add it into x. No shared memory, no barriers.
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
layout(constant_id = 2) const uint kR = 1u;            // rows per row group
layout(constant_id = 3) const uint kTileVals = 768u;   // staged values per expert column (multiple of 256)
layout(constant_id = 4) const uint kType0 = 14u;       // the down weights' type id
layout(constant_id = 5) const uint kMvUnrollCols = 1u;
layout(constant_id = 6) const uint kSG = 1u;           // subgroup size of the first reduction stage (1 = none)
layout(constant_id = 7) const uint kK = 8u;            // columns staged: the top-k (<= 32)
const uint kMvTypeMask = 1u << kType0;
const uint kNB = 1u;  // matvec_core sees one column: the current expert's (g_col)
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kSubs = kG / kSG;
const uint kNS = kR;
const uint kNV = kNS;

layout(std430, set = 0, binding = 0) readonly buffer H { vec4 h4[]; };
layout(std430, set = 0, binding = 1) readonly buffer Wq { uvec4 wq[]; };
layout(std430, set = 0, binding = 1) readonly buffer Ww { uint ww[]; };
layout(std430, set = 0, binding = 2) readonly buffer Ids { uint ids[]; };
layout(std430, set = 0, binding = 3) readonly buffer Wt { float wt[]; };
layout(std430, set = 0, binding = 4) readonly buffer Plan { uint plan[]; };
layout(std430, set = 0, binding = 5) buffer Xr { float x[]; };
layout(push_constant) uniform P {
  uint rows; uint cols; uint rb; uint k;  // hidden, expert FFN width, row bytes of down, top-k (<= kK)
  uint pair_slot_off; uint ntiles; uint tile_vals;
  uint by_pair;  // direct form: h row = the pair (no plan; MoeFfnCall::by_pair)
} pc;

float mv_acc[kNB][kNS];
uint mv_row[kNS];
uint mv_mat[kNS];
bool mv_live[kNS];
uvec4 mv_wq(uint m, uint i) { return wq[i]; }
uint mv_ww(uint m, uint i) { return ww[i]; }

#ifdef MV_DIRECT
uint g_hrow;  // vec4 index of the current item's input row h[slot(t, j)]
float g_w;    // and its routing weight w_j
vec4 mv_x4(uint b, uint v) { return h4[g_hrow + v] * g_w; }
#else
const uint kXs = kK * kTileVals / 4u;
const uint kStage = kXs + kK * kTileVals / 32u;
const uint kRed = (kWG / kSG * kNV + 3u) / 4u;
shared vec4 sm[kStage + kRed];
uint g_col;  // the staged column (expert j of the token) matvec_core reads as column 0
vec4 mv_x4(uint b, uint v) { return sm[g_col * (kTileVals / 4u) + v]; }
float sm_f(uint i) { return sm[i >> 2u][i & 3u]; }
void sm_set(uint i, float v) { sm[i >> 2u][i & 3u] = v; }
float mv_xs(uint b, uint e) { return sm_f(4u * kXs + g_col * (kTileVals / 8u) + e); }
#endif

#include "matvec_core.glsl"

#ifdef MV_DIRECT
void main() {
  const uint t = gl_WorkGroupID.y;
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint r0 = (gl_WorkGroupID.x * kGroups + group) * kR;
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    mv_acc[0][s] = 0.0;
    mv_mat[s] = 0u;
  }
  const uint parts = mv_parts(kType0, pc.cols);
  for (uint it = lane; it < pc.k * parts; it += kG) {
    const uint j = it / parts, p = it - j * parts, pair = t * pc.k + j, e = ids[pair];
    g_w = wt[pair];
    g_hrow = (pc.by_pair != 0u ? pair : plan[pc.pair_slot_off + pair]) * (pc.cols >> 2u);
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint r = r0 + s;
      mv_live[s] = r < pc.rows;
      mv_row[s] = mv_live[s] ? (e * pc.rows + r) * pc.rb : 0u;
    }
    mv_part(kType0, p);
  }
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    const float v = subgroupAdd(mv_acc[0][s]);
    const uint r = r0 + s;
    if (lane == s % kG && r < pc.rows) x[t * pc.rows + r] += v;
  }
}
#else
void store_partial(uint group, uint lane, uint v_index, float v) {
#ifndef MV_NO_SUBGROUP
  if (kSG > 1u) v = subgroupAdd(v);
#endif
  if (lane % kSG == 0u) sm_set(4u * kStage + (group * kNV + v_index) * kSubs + lane / kSG, v);
}
float partial_sum(uint group, uint v_index) {
  const uint base = 4u * kStage + (group * kNV + v_index) * kSubs;
  float t = 0.0;
  for (uint k = 0u; k < kSubs; ++k) t += sm_f(base + k);
  return t;
}

void main() {
  const uint t = gl_WorkGroupID.y;
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint r0 = (gl_WorkGroupID.x * kGroups + group) * kR;
  float sum[kNS];
  [[unroll]] for (uint s = 0u; s < kNS; ++s) {
    sum[s] = 0.0;
    mv_mat[s] = 0u;
  }
  for (uint tile = 0u; tile < pc.ntiles; ++tile) {
    const uint first = tile * pc.tile_vals, nvals = min(pc.tile_vals, pc.cols - first);
    if (tile > 0u) barrier();  // every row group is done with the previous tile
    // Stage the tile of h[slot(t, j)] for every j < k, 8 values per invocation, and their sums.
    for (uint i = lid; i < pc.k * (nvals >> 3u); i += kWG) {
      const uint j = i / (nvals >> 3u), e = i - j * (nvals >> 3u);
      const uint gi = plan[pc.pair_slot_off + t * pc.k + j] * (pc.cols >> 2u) + (first >> 2u) + 2u * e;
      const vec4 a = h4[gi], c = h4[gi + 1u];
      sm[j * (kTileVals / 4u) + 2u * e] = a;
      sm[j * (kTileVals / 4u) + 2u * e + 1u] = c;
      sm_set(4u * kXs + j * (kTileVals / 8u) + e, dot(a + c, vec4(1.0)));
    }
    barrier();
    for (uint j = 0u; j < pc.k; ++j) {
      const uint pair = t * pc.k + j, e = ids[pair];
      const float w = wt[pair];
      g_col = j;
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        const uint r = r0 + s;
        mv_live[s] = r < pc.rows;
        mv_row[s] = mv_live[s] ? (e * pc.rows + r) * pc.rb : 0u;
        mv_acc[0][s] = 0.0;
        mv_mat[s] = 0u;
      }
      mv_tile(kType0, first, nvals, lane);
      [[unroll]] for (uint s = 0u; s < kNS; ++s) sum[s] += w * mv_acc[0][s];
    }
  }
  [[unroll]] for (uint s = 0u; s < kNS; ++s) store_partial(group, lane, s, sum[s]);
  barrier();
  for (uint s = lane; s < kR; s += kG) {
    const uint r = r0 + s;
    if (r < pc.rows) x[t * pc.rows + r] += partial_sum(group, s);
  }
}
#endif  // MV_DIRECT
