#version 460
#extension GL_GOOGLE_include_directive : require
// matmul_coopmat.comp with f16 accumulators (TROVE_MATMUL_ACC=f16, kernels/ops/matmul.h), where the
// device offers a 16×16×16 f16×f16→f16 subgroup shape: the tile, who loads what and the bytes per
// flop are in matmul_coopmat_tile.glsl.
#define KHR_ACC_F16 1
#include "matmul_coopmat_tile.glsl"
