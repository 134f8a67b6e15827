#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec chain, 1..8 batch columns (each step quantizes its input into a scratch, then every
// workgroup reads it): matvec_chain.glsl and kernels/ops/matvec_chain.h.
#define MV_CHAIN_BATCHED 1
#include "matvec_chain.glsl"
