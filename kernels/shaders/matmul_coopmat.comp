#version 460
#extension GL_GOOGLE_include_directive : require
// Matmul on the matrix units through VK_KHR_cooperative_matrix (tensor cores on NVIDIA, WMMA on AMD,
// XMX on Intel): y[b][r] = sum_c W[r][c] * x[b][c] for every weight type, for batches (prefill,
// batched decode). The tile, who loads what and the bytes per flop: matmul_coopmat_tile.glsl. Built
// only with glslang >= 14; used where the device offers a 16×16×16 f16×f16→f32 subgroup shape with
// 32-wide subgroups (kernels/ops/matmul.cpp).
#include "matmul_coopmat_tile.glsl"
