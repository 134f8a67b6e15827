#version 460
#extension GL_GOOGLE_include_directive : require
// Decode MoE down + weighted sum + residual add, first reduction stage with subgroupAdd: see
// moe_down_body.glsl and kernels/ops/moe_ffn.h.
#include "moe_down_body.glsl"
