#version 460
#extension GL_GOOGLE_include_directive : require
// Expert-indexed matvec over the routing plan, first reduction stage with subgroupAdd: see
// moe_experts_body.glsl and kernels/ops/moe_ffn.h.
#include "moe_experts_body.glsl"
