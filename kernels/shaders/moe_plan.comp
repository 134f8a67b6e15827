#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
// The routing plan of a step from its expert ids [tokens][k] (moe_plan.glsl has the layout and the
// algorithm), for steps too large for moe_route.comp to route in one workgroup. ONE workgroup.
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) readonly buffer I { uint ids[]; };
layout(std430, set = 0, binding = 1) buffer Plan { uint plan[]; };
layout(push_constant) uniform P {
  uint tokens; uint k; uint n_experts; uint build_plan;
  uint n_entries_off; uint offsets_off; uint entries_off; uint slot_pair_off; uint pair_slot_off; uint row_ids_off;
  uint slot_ids_off;
} pc;

uint plan_id(uint pair) { return ids[pair]; }
#include "moe_plan.glsl"

void main() {
  plan_build(pc.tokens, pc.k, pc.n_experts, pc.n_entries_off, pc.offsets_off, pc.entries_off, pc.slot_pair_off,
             pc.pair_slot_off, pc.row_ids_off, pc.slot_ids_off);
}
