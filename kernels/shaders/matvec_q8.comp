#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec, the q8 form with x̂ quantized into shared memory by each workgroup: see
// matvec_q8.glsl and kernels/ops/matvec.h.
#include "matvec_q8.glsl"
