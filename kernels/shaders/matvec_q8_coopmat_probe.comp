#version 460
// Which elements of a subgroup's int8 16 × 32 A matrix and int32 16 × 8 accumulator each lane holds
// (kernels/ops/matvec.cpp, the q8 coopmat form's register kernel). VK_KHR_cooperative_matrix leaves that
// layout to the implementation; Matvec::create runs this once and builds matvec_q8_coopmat_regs.comp's
// table from it, or refuses the register kernel when the layout lacks what it needs.
//   in (binding 0, as uvec4): A with A[r][k] = r (row-major, 32 uvec4), A with A[r][k] = k (32 more), then
//     C with C[r][c] = 8r + c (int32 row-major, 32 uvec4).
//   out (binding 1, uint): lane l's A elements i at 16l + i as row | k << 8; its C elements e at
//     512 + 4l + e as C's value; the element counts at 640 (A) and 641 (C).
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require

layout(local_size_x = 32) in;
layout(std430, set = 0, binding = 0) readonly buffer In { uvec4 in4[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { uint o[]; };

void main() {
  const uint lane = gl_SubgroupInvocationID;
  coopmat<int8_t, gl_ScopeSubgroup, 16, 32, gl_MatrixUseA> ar, ak;
  coopmat<int32_t, gl_ScopeSubgroup, 16, 8, gl_MatrixUseAccumulator> c;
  coopMatLoad(ar, in4, 0u, 2u, gl_CooperativeMatrixLayoutRowMajor);
  coopMatLoad(ak, in4, 32u, 2u, gl_CooperativeMatrixLayoutRowMajor);
  coopMatLoad(c, in4, 64u, 2u, gl_CooperativeMatrixLayoutRowMajor);
  const uint na = uint(ar.length()), nc = uint(c.length());
  for (uint i = 0u; i < na && i < 16u; ++i) o[16u * lane + i] = uint(int(ar[i])) | (uint(int(ak[i])) << 8u);
  for (uint e = 0u; e < nc && e < 4u; ++e) o[512u + 4u * lane + e] = uint(c[e]);
  if (lane == 0u) {
    o[640] = na;
    o[641] = nc;
  }
}
