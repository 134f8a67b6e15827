#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec, batch 1..8, first reduction stage with subgroupAdd: see matvec_body.glsl and
// kernels/ops/matvec.h.
#include "matvec_body.glsl"
