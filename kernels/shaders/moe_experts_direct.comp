#version 460
#extension GL_GOOGLE_include_directive : require
// Expert-indexed matvec over the routing plan, the direct form (one subgroup per row group, inputs
// through the caches, subgroupAdd only): see moe_experts_body.glsl and kernels/ops/moe_ffn.h.
#define MV_DIRECT 1
#include "moe_experts_body.glsl"
