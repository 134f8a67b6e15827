#version 460
#extension GL_GOOGLE_include_directive : require
// Grouped matmul for MoE prefill through VK_KHR_cooperative_matrix: all experts of a layer in one
// dispatch, rows of x gathered by slot inside the shader, experts without slots free. The contract
// (W stacked per expert, expert_offsets, row_ids, y per slot): kernels/ops/matmul.h, GroupedMatmul;
// the tile: matmul_coopmat_tile.glsl.
#define MATMUL_GROUPED 1
#include "matmul_coopmat_tile.glsl"
