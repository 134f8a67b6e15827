#version 460
#extension GL_GOOGLE_include_directive : require
// ALU probe: f32 FMA (kOp 0: a <- fma(a, m, c), a carried as bits) or 32-bit integer multiply-add
// (kOp 1: a <- a·m + c, wrapping). alu_probe.glsl, kernels/ops/alu_probe.h.
layout(constant_id = 0) const uint kOp = 0u;
#define T uint
#define INIT(j) (kOp == 0u ? floatBitsToUint(float((j) & 1023u) / 1024.0) : 0x9e3779b9u ^ ((j) * 2654435761u))
#define STEP(a) (kOp == 0u ? floatBitsToUint(fma(uintBitsToFloat(a), uintBitsToFloat(pc.m), uintBitsToFloat(pc.c))) \
                           : (a) * pc.m + pc.c)
#define WORD(a) (a)
#include "alu_probe.glsl"
