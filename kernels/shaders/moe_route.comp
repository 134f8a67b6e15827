#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
// MoE routing (kernels/ops/moe_ffn.h, MoeRoute): for each token, the top-k of its n_experts router
// logits and their softmax weights renormalised over the k chosen (Qwen3-MoE's norm_topk_prob):
//   ids[t][j]  the j-th best expert (ties → the smaller index)
//   w[t][j]    exp(l_j - l_0) / sum_i<k exp(l_i - l_0)
// Selecting on logits is selecting on softmax probabilities (monotone); the renormalised weights
// equal llama.cpp's p_j / sum p_i exactly in real arithmetic. A NaN logit ranks below everything.
//
// One subgroup per token (tokens strided over all subgroups of the dispatch): k rounds, each a
// subgroupMax of the lanes' best remaining logit and a subgroupMin of the indices holding it. The
// order (value descending, index ascending) is total, so round j takes the best expert ranking after
// round j-1's pick; nothing needs marking. k <= 32, n_experts <= 256.
//
// With build_plan = 1 the host dispatches ONE workgroup (decode-sized steps): after routing every
// token it builds the routing plan in the same dispatch (moe_plan.glsl), saving a dispatch and a
// barrier per layer. Otherwise moe_plan.comp builds it next.
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer L { float lg[]; };
layout(std430, set = 0, binding = 1) coherent buffer I { uint ids[]; };
layout(std430, set = 0, binding = 2) writeonly buffer W { float wt[]; };
layout(std430, set = 0, binding = 3) buffer Plan { uint plan[]; };
layout(push_constant) uniform P {
  uint tokens; uint k; uint n_experts; uint build_plan;
  uint n_entries_off; uint offsets_off; uint entries_off; uint slot_pair_off; uint pair_slot_off; uint row_ids_off;
  uint slot_ids_off;
} pc;

uint plan_id(uint pair) { return ids[pair]; }
#include "moe_plan.glsl"

#include "moe_topk.glsl"

void main() {
  uint stride = gl_NumWorkGroups.x * gl_NumSubgroups;
  for (uint t = gl_WorkGroupID.x * gl_NumSubgroups + gl_SubgroupID; t < pc.tokens; t += stride) {
    route_token(t, pc.k, pc.n_experts, false);
  }
  if (pc.build_plan != 0u) {
    memoryBarrierBuffer();
    barrier();
    plan_build(pc.tokens, pc.k, pc.n_experts, pc.n_entries_off, pc.offsets_off, pc.entries_off, pc.slot_pair_off,
               pc.pair_slot_off, pc.row_ids_off, pc.slot_ids_off);
  }
}
