#version 460
#extension GL_GOOGLE_include_directive : require
// Decode MoE down + weighted sum + residual add without subgroup operations (lavapipe, devices
// without subgroup arithmetic): see moe_down_body.glsl.
#define MV_NO_SUBGROUP
#include "moe_down_body.glsl"
