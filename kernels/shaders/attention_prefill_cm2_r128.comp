#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_control_flow_attributes : require
// Prefill flash attention on NV cooperative matrix 2, 128 query rows per workgroup of 256 invocations: attention_prefill_cm2.glsl.
#define ATT_CM2_ROWS 128u
#define ATT_CM2_WG 256
#include "attention_prefill_cm2.glsl"
