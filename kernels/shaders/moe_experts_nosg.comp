#version 460
#extension GL_GOOGLE_include_directive : require
// Expert-indexed matvec over the routing plan without subgroup operations (lavapipe, devices without
// subgroup arithmetic): see moe_experts_body.glsl.
#define MV_NO_SUBGROUP
#include "moe_experts_body.glsl"
