#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
// ALU probe: two f16 FMAs in one instruction (f16vec2 fma: a <- fma(a, m, c) on both halves; m and c
// each two f16 in one word). alu_probe.glsl, kernels/ops/alu_probe.h.
#define T f16vec2
#define INIT(j) f16vec2(float((j) & 63u) / 64.0, 0.5 - float((j) & 7u) / 16.0)
#define STEP(a) fma(a, unpackFloat2x16(pc.m), unpackFloat2x16(pc.c))
#define WORD(a) packFloat2x16(a)
#include "alu_probe.glsl"
