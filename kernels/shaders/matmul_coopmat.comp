#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
// Matmul on the matrix units (VK_KHR_cooperative_matrix; tensor cores on NVIDIA): y[b][r] =
// sum_c W[r][c] * x[b][c] for every weight type, for batches (prefill, batched decode). A workgroup of
// 4 subgroups computes a 64-row × 64-column tile of y: per chunk of 32 values, 64 invocations
// dequantize one weight row's chunk each (dequant_chunk.glsl) into shared memory as f16, the other
// 64 convert one batch column's activations to f16; then each subgroup multiplies its 32×32 quarter
// as 2×2 16×16×16 f16 products accumulated in f32. Results go through shared memory so partial tiles
// are written with bounds checks. Built only with glslang >= 14; used only where the device offers a
// 16×16×16 f16×f16→f32 subgroup shape (kernels/ops/matmul.cpp).
layout(local_size_x = 128) in;
layout(std430, set = 0, binding = 0) readonly buffer W { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer X16 { uvec2 xh[]; };  // the same binding, f16 activations
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P {
  uint rows; uint cols; uint batch; uint type; uint row_bytes; uint tpr; uint y_stride; uint rpt;
} pc;

#include "dequant_chunk.glsl"

// f16 activations (a specialization constant, so the f32 path pays nothing for it).
layout(constant_id = 0) const uint kXF16 = 0u;

// Activations 4i .. 4i+3 (f32, or f16 when kXF16: four halves per uvec2, the same index).
vec4 x_at(uint i) {
  if (kXF16 != 0u) {
    uvec2 h = xh[i];
    return vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
  }
  return x4[i];
}

const uint BM = 64u, BN = 64u, BK = 32u;
const uint AS = BK + 8u;   // shared strides (elements), padded against bank conflicts
const uint CS = BM + 4u;
shared float16_t As[BM * AS];  // [row][k]
shared float16_t Bs[BN * AS];  // [batch column][k]: B (k × n) column-major
shared float Cs[BN * CS];      // [batch column][row]: C (m × n) column-major

void main() {
  uint t = gl_LocalInvocationID.x, sg = gl_SubgroupID;
  uint r0 = gl_WorkGroupID.x * BM, b0 = gl_WorkGroupID.y * BN;
  uint sm = (sg & 1u) * 32u, sn = (sg >> 1) * 32u;  // this subgroup's quarter
  coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> acc[2][2];
  for (uint i = 0u; i < 2u; ++i)
    for (uint j = 0u; j < 2u; ++j) acc[i][j] = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
  uint chunks = pc.cols / BK;
  for (uint k = 0u; k < chunks; ++k) {
    if (t < BM) {
      uint r = r0 + t;
      vec4 v[8];
      if (r < pc.rows) {
        dequant_chunk(pc.type, r * pc.row_bytes, k, v);
      } else {
        for (uint i = 0u; i < 8u; ++i) v[i] = vec4(0.0);
      }
      for (uint i = 0u; i < 8u; ++i)
        for (uint e = 0u; e < 4u; ++e) As[t * AS + 4u * i + e] = float16_t(v[i][e]);
    } else {
      uint n = t - BM, b = b0 + n;
      for (uint i = 0u; i < 8u; ++i) {
        vec4 xv = b < pc.batch ? x_at((b * pc.cols >> 2) + 8u * k + i) : vec4(0.0);
        for (uint e = 0u; e < 4u; ++e) Bs[n * AS + 4u * i + e] = float16_t(xv[e]);
      }
    }
    barrier();
    for (uint kk = 0u; kk < BK; kk += 16u) {
      coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a[2];
      coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> bm[2];
      for (uint i = 0u; i < 2u; ++i)
        coopMatLoad(a[i], As, (sm + 16u * i) * AS + kk, AS, gl_CooperativeMatrixLayoutRowMajor);
      for (uint j = 0u; j < 2u; ++j)
        coopMatLoad(bm[j], Bs, (sn + 16u * j) * AS + kk, AS, gl_CooperativeMatrixLayoutColumnMajor);
      for (uint i = 0u; i < 2u; ++i)
        for (uint j = 0u; j < 2u; ++j) acc[i][j] = coopMatMulAdd(a[i], bm[j], acc[i][j]);
    }
    barrier();
  }
  for (uint i = 0u; i < 2u; ++i)
    for (uint j = 0u; j < 2u; ++j)
      coopMatStore(acc[i][j], Cs, (sn + 16u * j) * CS + sm + 16u * i, CS, gl_CooperativeMatrixLayoutColumnMajor);
  barrier();
  for (uint e = t; e < BM * BN; e += 128u) {
    uint n = e / BM, m = e % BM;
    if (r0 + m < pc.rows && b0 + n < pc.batch) y[(b0 + n) * pc.y_stride + r0 + m] = Cs[n * CS + m];
  }
}
