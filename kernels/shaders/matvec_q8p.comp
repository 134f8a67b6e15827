#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec, the q8 form reading x̂ already quantized by matvec_q8_quant.comp (TROVE_MATVEC=q8p):
// see matvec_q8.glsl and kernels/ops/matvec.h.
#define MV_Q8_GLOBAL 1
#include "matvec_q8.glsl"
