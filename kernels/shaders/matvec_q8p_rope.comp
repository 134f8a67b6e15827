#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec, the q8p form (matvec_q8p.comp) of a Q, K, V call with the attention prologue — q/k
// RMSNorm, RoPE, the KV write — in its epilogue: matvec_q8_rope.glsl and kernels/ops/matvec.h.
#define MV_Q8_GLOBAL 1
#define MV_ROPE_KV 1
#include "matvec_q8.glsl"
