#version 460
// MoE down + routing-weighted sum + residual add, the q8 form (kernels/ops/moe_ffn.h, TROVE_MOE=q8 /
// MoeTuning::Form::kQ8): pair-indexed decode (MoeFfnCall::by_pair, <= 8 tokens),
//   x[t][r] += Σ_j w[t][j] · (down_e · h[t·k + j]),   e = ids[t·k + j], j < k
// as moe_down_direct.comp computes it, but with the SwiGLU rows h rounded to int8 (a scale per 32
// values) and integer dot products (matvec_q8_parts.glsl, the dense q8 matvec's code).
//
// Grid: y = tokens, x = workgroups of that token. A workgroup stages the token's k rows h[t·k + j] as
// k int8 columns in shared memory, the routing weight w_j folded into column j's scales (so the
// accumulators hold Σ_j w_j (down_e · h) directly), then walks the row blocks blk, blk + grid_x, ...
// (kWG/kG subgroups × kR rows of the hidden size). A row group's lanes take the parts of all k experts'
// rows as one list (item = j · parts + part, as in the direct form: a 768-value row is 24 Q4_K parts,
// fewer than a subgroup's lanes), selecting staged column j per item; subgroupAdd and one lane per row
// add the sum into x. One barrier (after the staging); a fixed order of every sum.
//
// kSplit > 1 (TROVE_MOE_Q8_DOWN_SPLIT, MoeTuning::down_split): kSplit subgroups share a row group's
// rows, subgroup sp taking items sp·kG + lane, + kSplit·kG, ...; their sums meet in shared memory
// (a barrier per row block) and are added in sp order — the dense q8 matvec's split rows
// (matvec_q8.glsl): at one token a row's 192 items (8 experts × 24 Q4_K parts) are 6 per lane.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;          // lanes per row group (the subgroup size)
layout(constant_id = 2) const uint kR = 1u;           // rows per row group
layout(constant_id = 3) const uint kTileVals = 768u;  // staged values per column (cols rounded up to 256)
layout(constant_id = 4) const uint kType0 = 14u;      // the down weights' type id
layout(constant_id = 5) const uint kK = 8u;           // staged columns: the top-k
layout(constant_id = 6) const uint kCols = 768u;      // = pc.cols: the parts loop gets a trip count known when compiled
layout(constant_id = 7) const uint kQ6Wide = 0u;        // 1: Q6_K rows in 32-value parts (part_q6k_wide)
layout(constant_id = 8) const uint kSplit = 1u;         // subgroups sharing one row group's rows (1, 2, 4)
#define MV_Q6_WIDE
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kRG = kGroups / kSplit;  // row groups per workgroup
const uint kNB = 1u;  // the parts multiply one column: the current item's expert (g_col)
const uint kNS = kR;
const uint kQ8Cols = kK;
const uint kTypeMask = 1u << kType0;

layout(std430, set = 0, binding = 0) readonly buffer H { vec4 x4[]; };
layout(std430, set = 0, binding = 0) readonly buffer HN { vec4 nw4[]; };  // never read (no norm)
layout(std430, set = 0, binding = 1) readonly buffer Wq { uvec4 w0q[]; };
layout(std430, set = 0, binding = 1) readonly buffer Ww { uint w0w[]; };
layout(std430, set = 0, binding = 2) readonly buffer Ids { uint ids[]; };
layout(std430, set = 0, binding = 3) readonly buffer Wt { float wt[]; };
layout(std430, set = 0, binding = 4) buffer Xr { float x[]; };

layout(push_constant) uniform P {
  uint rows; uint cols; uint rb; uint k;  // hidden, expert FFN width, row bytes of down, top-k (= kK)
  uint blocks; uint grid_x;               // row blocks; workgroups per token walking them
} pc;

uint g_col;  // the staged column (expert j of the token) the current part reads
uint q8_col(uint b) { return g_col; }
uvec4 wq(uint m, uint i) { return w0q[i]; }
uint ww(uint m, uint i) { return w0w[i]; }

#include "matvec_q8_parts.glsl"

shared uint s_ids[kK];  // the token's k expert ids: read once, not per part (no load chained before the weights')
shared float ssplit[kSplit > 1u ? kGroups * kR : 1u];  // kSplit > 1: each subgroup's row sums

void main() {
  const uint t = gl_WorkGroupID.y;
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint rg = group % kRG, sp = group / kRG;  // row group, and which share of its items
  const uint nblk = pc.cols >> 5u;
  for (uint i = lid; i < kK; i += kWG) s_ids[i] = ids[t * kK + i];
  for (uint i = lid; i < 2u * kK * nblk; i += kWG) {  // half a block per invocation (stage_half: adjacent pairs)
    const uint j = (i >> 1u) / nblk, kb = (i >> 1u) - j * nblk, pair = t * kK + j;
    stage_half(j, pair * (pc.cols >> 2u), 2u * kb + (i & 1u), false, wt[pair]);
  }
  barrier();
  const uint parts = q8_parts(kType0, kCols);
  for (uint blk = gl_WorkGroupID.x; blk < pc.blocks; blk += pc.grid_x) {
    const uint r0 = (blk * kRG + rg) * kR;
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      acc[0][s] = 0.0;
      slot_mat[s] = 0u;
    }
    for (uint it = sp * kG + lane; it < kK * parts; it += kSplit * kG) {
      const uint j = it / parts, p = it - j * parts, e = s_ids[j];
      g_col = j;
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        const uint r = r0 + s;
        live[s] = r < pc.rows;
        row_off[s] = live[s] ? (e * pc.rows + r) * pc.rb : 0u;
      }
      q8_part(kType0, p);
    }
    if (kSplit == 1u) {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        const float v = subgroupAdd(acc[0][s]);
        const uint r = r0 + s;
        if (lane == s % kG && r < pc.rows) x[t * pc.rows + r] += v;
      }
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        const float v = subgroupAdd(acc[0][s]);
        if (lane == 0u) ssplit[(sp * kRG + rg) * kR + s] = v;
      }
      barrier();
      if (sp == 0u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) {
          const uint r = r0 + s;
          if (lane != s % kG || r >= pc.rows) continue;
          float v = 0.0;
          for (uint q = 0u; q < kSplit; ++q) v += ssplit[(q * kRG + rg) * kR + s];
          x[t * pc.rows + r] += v;
        }
      }
      barrier();  // before the next block's sums overwrite these
    }
  }
}
