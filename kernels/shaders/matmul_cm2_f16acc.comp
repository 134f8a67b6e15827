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
// matmul_cm2.comp with f16 accumulators (TROVE_MATMUL_ACC=f16, kernels/ops/matmul.h): the tile, the
// decode functions and the bytes per flop are described in matmul_cm2_tile.glsl. Built for Vulkan 1.3.
#define CM2_ACC_F16 1
#include "matmul_cm2_tile.glsl"
