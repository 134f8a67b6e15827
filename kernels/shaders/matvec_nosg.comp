#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec, batch 1..8, without subgroup operations (devices without subgroup arithmetic, and
// lavapipe, where they cost seconds of compile per pipeline): see matvec_body.glsl.
#define MV_NO_SUBGROUP 1
#include "matvec_body.glsl"
