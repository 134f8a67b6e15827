#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_integer_dot_product : require
// ALU probe: the packed 4 × int8 dot product the q8 matvecs use (dotPacked4x8EXT), with its sum:
// a <- a + dot(bytes of a, bytes of m) (signed, wrapping). alu_probe.glsl, kernels/ops/alu_probe.h.
#define T uint
#define INIT(j) (0x9e3779b9u ^ ((j) * 2654435761u))
#define STEP(a) ((a) + uint(dotPacked4x8EXT(int(a), int(pc.m))))
#define WORD(a) (a)
#include "alu_probe.glsl"
