#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec chain, one batch column (x̂ staged in shared memory per step): matvec_chain.glsl and
// kernels/ops/matvec_chain.h.
#include "matvec_chain.glsl"
