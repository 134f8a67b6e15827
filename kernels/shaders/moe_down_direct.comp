#version 460
#extension GL_GOOGLE_include_directive : require
// Decode MoE down + weighted sum + residual add, the direct form (the k experts' row parts spread over
// one subgroup's lanes, inputs through the caches, subgroupAdd only): see moe_down_body.glsl and
// kernels/ops/moe_ffn.h.
#define MV_DIRECT 1
#include "moe_down_body.glsl"
