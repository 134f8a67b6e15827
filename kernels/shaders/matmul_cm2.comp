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
// Matmul on the tensor cores through VK_NV_cooperative_matrix2: the tile, the decode functions and
// the bytes per flop are described in matmul_cm2_tile.glsl. Built for Vulkan 1.3 (names *cm2*).
#include "matmul_cm2_tile.glsl"
