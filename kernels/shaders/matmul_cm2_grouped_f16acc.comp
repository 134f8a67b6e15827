#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_8bit_storage : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
// Grouped matmul for MoE prefill on NV cooperative matrix 2: all experts of a layer in one dispatch;
// matmul_cm2_grouped.comp with f16 accumulators (TROVE_MATMUL_ACC=f16, kernels/ops/matmul.h).
// Contract: kernels/ops/matmul.h (GroupedMatmulCall); the workgroup → (expert, slot tile) mapping as
// in the KHR form (matmul_coopmat_tile.glsl); x rows gathered by a decode function on B (row ids of
// the tile in shared memory), results written per element to their slots (coopMatPerElementNV).
#define MATMUL_GROUPED 1
#define CM2_ACC_F16 1
#include "matmul_cm2_tile.glsl"
