#version 460
// MoE gate/up + SwiGLU, the q8 form (kernels/ops/moe_ffn.h, TROVE_MOE=q8 / MoeTuning::Form::kQ8):
// pair-indexed decode (MoeFfnCall::by_pair, <= 8 tokens) with the RMSNorm prologue optional,
//   h[pair][r] = silu(gate_e · x̂) · (up_e · x̂),   e = ids[pair], x̂ = x[pair / k] · norm_w / rms
// as moe_experts_direct.comp computes it, but with x̂ rounded to int8 (a scale per 32 values) and the
// weight codes combined with it by integer dot products — matvec_q8_parts.glsl, the dense q8 matvec's
// code (4 multiply-adds per instruction, no per-value conversions, 4x fewer activation bytes).
//
// Grid: y = the (token, j) pairs, x = workgroups of that pair. A workgroup stages its token's x̂ once
// in shared memory (Σ x² on the way, reduced over the workgroup: inv_rms factors out of the dot
// products and is applied to the row sums), then walks the row blocks blk, blk + grid_x, ... (a block
// = kWG/kG subgroups × kR gate rows + the same kR up rows). A row group is one subgroup; its lanes
// stride over the parts of the rows; rows reduced with subgroupAdd. One barrier (after the staging).
// pc.route (MoeFfnCall::route_logits): the token's experts are not in `ids` yet — every subgroup takes
// the token's top-k from the router logits (binding 7) itself (moe_topk.glsl's top_k: the same picks
// as the router's own routing, and no barrier before the first weight loads), and pair j = 0's first
// workgroup writes the k ids and chosen logits for down (then scales the logits, pc.raw_wt).
// Weight types Q4_K, Q5_K, Q6_K, Q8_0 (gate and up may differ: then one pass each).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;           // lanes per row group (the subgroup size)
layout(constant_id = 2) const uint kR = 1u;            // gate rows (and up rows) per row group
layout(constant_id = 3) const uint kTileVals = 2048u;  // staged values (cols rounded up to 256)
layout(constant_id = 4) const uint kType0 = 12u;       // gate and up weight type ids (ggml)
layout(constant_id = 5) const uint kType1 = 12u;
layout(constant_id = 6) const uint kCols = 2048u;      // = pc.cols: the parts loops get a trip count known when compiled
layout(constant_id = 7) const uint kQ6Wide = 0u;        // 1: Q6_K rows in 32-value parts (part_q6k_wide)
layout(constant_id = 8) const uint kTouch = 0u;         // weight sectors each invocation loads before the staging (0..8)
#define MV_Q6_WIDE
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kNB = 1u;  // one token per pair
const uint kNS = 2u * kR;
const uint kQ8Cols = 1u;
const uint kTypeMask = (1u << kType0) | (1u << kType1);

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 1) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 2) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 2) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 3) buffer Ids { uint ids[]; };  // written here with pc.route
layout(std430, set = 0, binding = 4) writeonly buffer Y { float y[]; };
layout(std430, set = 0, binding = 5) readonly buffer NW { vec4 nw4[]; };
layout(std430, set = 0, binding = 6) buffer Wt { float wt[]; };  // pc.raw_wt: routing weights scaled here
layout(std430, set = 0, binding = 7) readonly buffer L { float lg[]; };  // pc.route: [tokens][n_experts]

layout(push_constant) uniform P {
  uint rows; uint cols; uint rb0; uint rb1;  // rows per expert (ffn), columns (hidden), row bytes of gate / up
  uint k; uint pairs;                        // top-k; tokens · k
  uint blocks; uint grid_x;                  // row blocks per pair; workgroups per pair walking them
  uint norm; float eps;                      // 1: x is the residual stream, RMSNorm with nw4 applied here
  uint raw_wt;                               // 1: binding 6 holds raw router logits (moe_scale_weights.glsl)
  uint route; uint n_experts;                // 1: route here from the logits in binding 7
} pc;

uint q8_col(uint b) { return 0u; }
uvec4 wq(uint m, uint i) { return m == 0u ? w0q[i] : w1q[i]; }
uint ww(uint m, uint i) { return m == 0u ? w0w[i] : w1w[i]; }

#include "matvec_q8_parts.glsl"
#include "moe_scale_weights.glsl"
#include "moe_topk.glsl"

shared float sssq[kGroups];

void main() {
  const uint pair = gl_WorkGroupID.y;
  if (pair >= pc.pairs) return;
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  uint expert;
  if (pc.route != 0u) {
    const uint t = pair / pc.k, j = pair % pc.k;
    float cv[32];
    uint ce[32];
    top_k(t, pc.k, pc.n_experts, cv, ce);
    expert = ce[0];
    [[unroll]] for (uint i = 1u; i < 32u; ++i) {
      if (i >= pc.k) break;
      if (i == j) expert = ce[i];
    }
    if (gl_WorkGroupID.x == 0u && lid == 0u && j == 0u) {
      [[unroll]] for (uint i = 0u; i < 32u; ++i) {
        if (i >= pc.k) break;
        ids[t * pc.k + i] = ce[i];
        wt[t * pc.k + i] = cv[i];
      }
    }
  } else {
    expert = ids[pair];
  }
  const bool norm = pc.norm != 0u;
  // kTouch (TROVE_MOE_Q8_TOUCH): one word of each of kTouch 32-byte sectors of the workgroup's first row
  // block (gate and up rows in turn) loaded before the staging, one register a word, and used only after
  // it, in `junk` (0 at run time: pc.norm is 0 or 1) offsetting the block loop — so the expert's rows
  // come from memory into the caches while x̂ is staged.
  uint touched[kTouch != 0u ? kTouch : 1u];
  if (kTouch != 0u) {
    const uint rstart = gl_WorkGroupID.x * kGroups * kR;
    const uint nrows = rstart < pc.rows ? min(kGroups * kR, pc.rows - rstart) : 0u;
    [[unroll]] for (uint k = 0u; k < kTouch; ++k) {
      const uint mat = k & 1u, rb = mat == 0u ? pc.rb0 : pc.rb1;
      const uint i = (k >> 1u) * kWG + lid;
      touched[k] = i < nrows * rb / 32u ? ww(mat, (expert * pc.rows + rstart) * rb / 4u + 8u * i) : 0u;
    }
  }

  float ssq = 0.0;
  const uint xrow = (pair / pc.k) * (pc.cols >> 2u);
  // Half a block per invocation (stage_half: adjacent pairs): at 2048 columns 128 invocations work, not 64.
  for (uint h = lid; h < 2u * (pc.cols >> 5u); h += kWG) ssq += stage_half(0u, xrow, h, norm, 1.0);
  ssq = subgroupAdd(ssq);
  if (lane == 0u) sssq[group] = ssq;
  barrier();
  float inv = 1.0;
  if (norm) {
    float t = 0.0;
    for (uint g = 0u; g < kGroups; ++g) t += sssq[g];
    inv = inversesqrt(t / float(pc.cols) + pc.eps);
  }
  // The token's routing weights, once: pair j = 0's first workgroup.
  if (pc.raw_wt != 0u && gl_WorkGroupID.x == 0u && lid == 0u && pair % pc.k == 0u) {
    scale_raw_weights(pair / pc.k, pc.k, inv);
  }

  uint junk = 0u;
  [[unroll]] for (uint k = 0u; k < kTouch; ++k) junk ^= touched[k];
  junk &= pc.norm >> 1u;
  for (uint blk = gl_WorkGroupID.x + junk; blk < pc.blocks; blk += pc.grid_x) {
    const uint r0 = (blk * kGroups + group) * kR;
    bool lv[kNS];
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint mat = s / kR, r = r0 + s % kR;
      lv[s] = r < pc.rows;
      live[s] = lv[s];
      slot_mat[s] = mat;
      row_off[s] = lv[s] ? (expert * pc.rows + r) * (mat == 0u ? pc.rb0 : pc.rb1) : 0u;
      acc[0][s] = 0.0;
    }
    if (kType0 == kType1) {
      walk(kType0, lane, kCols);
    } else {  // gate and up of different types: one pass each
      [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = lv[s] && s < kR;
      walk(kType0, lane, kCols);
      [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = lv[s] && s >= kR;
      walk(kType1, lane, kCols);
    }
    // Every lane gets every total; lane s % kG writes row r0 + s.
    [[unroll]] for (uint s = 0u; s < kR; ++s) {
      const float v = subgroupAdd(acc[0][s]) * inv, u = subgroupAdd(acc[0][s + kR]) * inv;
      const uint r = r0 + s;
      if (lane == s % kG && r < pc.rows) y[pair * pc.rows + r] = v / (1.0 + exp(-v)) * u;
    }
  }
}
