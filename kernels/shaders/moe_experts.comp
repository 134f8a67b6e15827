#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
// Expert-indexed matvec over the routing plan (kernels/ops/moe_ffn.h): every selected expert of every
// token in ONE dispatch, the expert ids read here from the plan that moe_route.comp / moe_plan.comp
// wrote on the GPU (no host round trip).
//
// Grid: x = row tiles of kRows rows, y = plan work entries. An entry is (expert e, slots first ..
// first+count-1), count <= 8, all routed to e (the plan groups an expert's slots into entries of up
// to 8), so each expert's weight rows are read once per 8 slots — once per step in decode (T <= 8
// tokens never give an expert more than 8 slots). Workgroups past the plan's entry count exit at once
// (the host sizes y for the worst case), so experts with no tokens cost nothing.
//
// Modes (specialization constant kSwiGlu):
//   1: A = gate [E][rows][cols], B = up (same shape; types kTypeA / kTypeB), input row of slot s =
//      token slot_pair[s] / k of x [tokens][cols]; y[s][row] = silu(A·x) * (B·x)      (gate/up + SwiGLU)
//   0: A only; input row of slot s = x[s] ([slots][cols], the SwiGLU output); y[s][row] = A·x  (down)
// A subgroup owns one row at a time (rows of the tile strided over the subgroups), its lanes stride
// over the row's 64-value units (moe_unit.glsl: every loaded byte used, 16-byte loads where the
// format's alignment allows), partial sums reduced with subgroupAdd. Per entry and row: (bytes of A
// and B rows) read once, count × cols × 4 bytes of activations from L1/L2.
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint kTypeA = 12u;
layout(constant_id = 1) const uint kTypeB = 12u;
layout(constant_id = 2) const uint kSwiGlu = 1u;
layout(constant_id = 3) const uint kRows = 4u;  // rows per workgroup: 128 / subgroup size
// Slots multiplied per pass over the weights: the plan's entry size (8) on GPUs; 1 on CPU devices
// (lavapipe), where the unrolled 8-column code takes LLVM most of a minute to compile.
layout(constant_id = 4) const uint kCols = 8u;

layout(std430, set = 0, binding = 0) readonly buffer WA { uint wa[]; };
layout(std430, set = 0, binding = 0) readonly buffer WA4 { uvec4 wa4[]; };
layout(std430, set = 0, binding = 1) readonly buffer WB { uint wb[]; };
layout(std430, set = 0, binding = 1) readonly buffer WB4 { uvec4 wb4[]; };
layout(std430, set = 0, binding = 2) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 3) readonly buffer Plan { uint plan[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P {
  uint rows; uint cols; uint rb_a; uint rb_b;  // output rows per expert, input columns, row bytes of A / B
  uint k;                                      // top-k (pair p = token * k + j)
  uint x_by_slot;                              // 0: x row = token of the slot, 1: x row = the slot
  uint n_entries_off; uint entries_off; uint slot_pair_off;  // plan offsets (uint words)
} pc;

#define UNIT_FN unit_a
#define UNIT_LOAD8 load8_a
#define UNIT_W(i) wa[i]
#define UNIT_W4(i) wa4[i]
#include "moe_unit.glsl"
#undef UNIT_FN
#undef UNIT_LOAD8
#undef UNIT_W
#undef UNIT_W4
#define UNIT_FN unit_b
#define UNIT_LOAD8 load8_b
#define UNIT_W(i) wb[i]
#define UNIT_W4(i) wb4[i]
#include "moe_unit.glsl"

float dot8(vec4 v[8], uint xb) {
  vec4 s = v[0] * x4[xb];
  for (uint i = 1u; i < 8u; ++i) s += v[i] * x4[xb + i];
  return (s.x + s.y) + (s.z + s.w);
}

// Whether the hi chunk of a unit can lie past the row's end (rows of 32 mod 64 values): never for
// the K-quants (256-value blocks), so their pipelines carry no test.
bool full_units(uint type) { return type == kQ4_K || type == kQ5_K || type == kQ6_K; }

void main() {
  uint entry = gl_WorkGroupID.y;
  if (entry >= plan[pc.n_entries_off]) return;
  uint expert = plan[pc.entries_off + 2u * entry], packed = plan[pc.entries_off + 2u * entry + 1u];
  uint first = packed & 0xffffffu, count = packed >> 24;
  uint xq = pc.cols >> 2;  // vec4s per input row
  uint units = unit_count(pc.cols);
  for (uint r = gl_SubgroupID; r < kRows; r += gl_NumSubgroups) {
    uint row = gl_WorkGroupID.x * kRows + r;
    if (row >= pc.rows) break;
    uint grow = expert * pc.rows + row;
    uint ra = grow * pc.rb_a, rb = grow * pc.rb_b;
    // The entry's slots kCols at a time (one pass on GPUs: kCols = the entry size).
    for (uint j0 = 0u; j0 < count; j0 += kCols) {
      uint xrow[kCols];
      [[unroll]] for (uint j = 0u; j < kCols; ++j) {
        uint s = first + min(j0 + j, count - 1u);
        xrow[j] = (pc.x_by_slot != 0u ? s : plan[pc.slot_pair_off + s] / pc.k) * xq;
      }
      uint nj = min(kCols, count - j0);
      float acc_a[kCols], acc_b[kCols];
      [[unroll]] for (uint j = 0u; j < kCols; ++j) { acc_a[j] = 0.0; acc_b[j] = 0.0; }
      for (uint u = gl_SubgroupInvocationID; u < units; u += gl_SubgroupSize) {
        vec4 lo[8], hi[8];
        uint cl, ch;
        unit_a(kTypeA, ra, u, pc.cols, lo, hi, cl, ch);
        bool has_hi = full_units(kTypeA) || ch < pc.cols;
        [[unroll]] for (uint j = 0u; j < kCols; ++j) {
          if (j >= nj) break;
          acc_a[j] += dot8(lo, xrow[j] + (cl >> 2));
          if (has_hi) acc_a[j] += dot8(hi, xrow[j] + (ch >> 2));
        }
        if (kSwiGlu != 0u) {
          unit_b(kTypeB, rb, u, pc.cols, lo, hi, cl, ch);
          has_hi = full_units(kTypeB) || ch < pc.cols;
          [[unroll]] for (uint j = 0u; j < kCols; ++j) {
            if (j >= nj) break;
            acc_b[j] += dot8(lo, xrow[j] + (cl >> 2));
            if (has_hi) acc_b[j] += dot8(hi, xrow[j] + (ch >> 2));
          }
        }
      }
      [[unroll]] for (uint j = 0u; j < kCols; ++j) {
        if (j >= nj) break;
        float a = subgroupAdd(acc_a[j]);
        float o = a;
        if (kSwiGlu != 0u) o = a / (1.0 + exp(-a)) * subgroupAdd(acc_b[j]);
        if (subgroupElect()) y[(first + j0 + j) * pc.rows + row] = o;
      }
    }
  }
}
