// matvec_q8_coopmat.glsl — what the two q8 coopmat kernels share (kernels/ops/matvec.h, "q8 coopmat
// form"): matvec_q8_coopmat.comp (the int8 tiles through shared memory) and matvec_q8_coopmat_regs.comp
// (built in registers from the device's element layout): constants, the scratch and layout bindings, and
// matvec_io.glsl (weights, outputs, push block, epilogues — the q8 forms' too).
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require
#extension GL_GOOGLE_include_directive : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kNB = 8u;           // batch columns written (1..8)
layout(constant_id = 2) const uint kSwiGlu = 0u;       // 1: the up rows of matrix 1 beside the gate rows
layout(constant_id = 3) const uint kTileVals = 4096u;  // values per staged column (cols rounded up to 256)
layout(constant_id = 4) const uint kMats = 1u;         // weight bindings in use (1..3)
layout(constant_id = 5) const uint kRT = 1u;           // tiles of 16 rows a workgroup owns (1, 2, 4)
const uint kSplit = gl_WorkGroupSize.x / 32u;          // subgroups of 32 lanes sharing the rows
const uint kCols = 8u;                                 // columns the scratch slot is laid out for
const uint kSets = kSwiGlu + 1u;                       // row sets: the rows (or gate), up
const uint kT = kSets * kRT;                           // A tiles a run (pairs of them: sub-blocks 2j, 2j + 1)

// The scratch slot (matvec_q8_quant.comp's layout with B = kCols, T = kTileVals), in floats: int8 values
// at 0 (column b at b·T/4), scales at 8·T/4 + b·T/32, sums at 8·T·9/32 + b·T/16, inv_rms at 8·T·13/32 + b;
// the register kernel's is that pass's push flag 4 layout (the same regions, ordered per run).
layout(std430, set = 0, binding = 0) readonly buffer GQ { uvec4 gq4[]; };
layout(std430, set = 0, binding = 0) readonly buffer GD { vec2 gd2[]; };
layout(std430, set = 0, binding = 0) readonly buffer GS { vec4 gs4[]; };
layout(std430, set = 0, binding = 0) readonly buffer GI { float gi[]; };
// Binding 1: the regs kernel's element layout table (matvec_q8_coopmat_regs.comp); the scratch again for
// the other.
layout(std430, set = 0, binding = 1) readonly buffer LT { uint lt[]; };
#include "matvec_io.glsl"

#include "k4_scales.glsl"
