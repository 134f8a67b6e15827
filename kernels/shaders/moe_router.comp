#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
// The MoE router and its routing in one dispatch, for decode-sized steps (kernels/ops/moe_ffn.h
// MoeRoute::record_router): for each token t of the step (at most kMaxT),
//   logits[t][e] = Σ_c router[e][c] · norm_w[c] · x[t][c] / sqrt(mean_c x[t][c]² + eps)
// — the FFN RMSNorm folded in, so x is the residual stream itself — then the token's top-k and its
// renormalised weights (moe_topk.glsl, the same code as moe_route.comp). Router weights f32.
//
// One subgroup per expert row: its lanes walk the row in 16-byte loads, kU at once, and keep each
// token's dot and Σ x² (every subgroup sums x² itself: no shared memory, no barrier before the
// logits). The last workgroup to finish routes: every workgroup writes its logits, makes them visible
// (memoryBarrierBuffer), then one invocation counts the workgroup done (atomicAdd on `count`); the one
// that reads n_workgroups − 1 knows every logit is written, resets the counter to 0 for the next call
// and routes each token with one subgroup. So no second dispatch and no barrier between the router and
// the routing (a dependent dispatch costs ~7 µs on the H200). Calls must be separated by a barrier
// (they share the counter; a decode layer's next call is).
//
// Limits (the op checks): cols a multiple of 4, tokens 1..kMaxT, n_experts <= 256, k <= 32.
layout(local_size_x_id = 0) in;  // 128 unless TROVE_MOE_ROUTER_WG (kernels/ops/moe_ffn.cpp)
layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };     // [tokens][cols / 4]
layout(std430, set = 0, binding = 1) readonly buffer N { vec4 nw4[]; };    // [cols / 4]
layout(std430, set = 0, binding = 2) readonly buffer R { vec4 w4[]; };     // [n_experts][cols / 4]
layout(std430, set = 0, binding = 3) coherent buffer L { float lg[]; };    // [tokens][n_experts]
layout(std430, set = 0, binding = 4) writeonly buffer I { uint ids[]; };   // [tokens][k]
layout(std430, set = 0, binding = 5) writeonly buffer W { float wt[]; };   // [tokens][k]
layout(std430, set = 0, binding = 6) coherent buffer C { uint count[]; };  // [1], 0 between calls
layout(push_constant) uniform P { uint cols; uint tokens; uint n_experts; uint k; float eps; } pc;

const uint kMaxT = 8u;  // tokens per call
layout(constant_id = 1) const uint kU = 8u;  // 16-byte loads per lane in flight per round (8: half a
                                             // 2048-column row; TROVE_MOE_ROUTER_LOADS)
shared bool s_last;

#include "moe_topk.glsl"

void main() {
  const uint lane = gl_SubgroupInvocationID, S = gl_SubgroupSize, c4 = pc.cols / 4u;
  // Rows strided over the dispatch's subgroups (one row each where the host's grid matches the
  // subgroup size; any subgroup size still covers every row).
  for (uint e = gl_WorkGroupID.x * gl_NumSubgroups + gl_SubgroupID; e < pc.n_experts;
       e += gl_NumWorkGroups.x * gl_NumSubgroups) {  // uniform over the subgroup
    float acc[kMaxT], ss[kMaxT];
    [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
      acc[t] = 0.0;
      ss[t] = 0.0;
    }
    for (uint c = lane; c < c4; c += S * kU) {
      vec4 w[kU];
      [[unroll]] for (uint u = 0u; u < kU; ++u) {
        const uint i = c + u * S;
        w[u] = i < c4 ? w4[e * c4 + i] * nw4[i] : vec4(0.0);
      }
      [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
        if (t >= pc.tokens) break;
        [[unroll]] for (uint u = 0u; u < kU; ++u) {
          const uint i = c + u * S;
          const vec4 xv = i < c4 ? x4[t * c4 + i] : vec4(0.0);
          acc[t] += dot(w[u], xv);
          ss[t] += dot(xv, xv);
        }
      }
    }
    [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
      if (t >= pc.tokens) break;
      const float a = subgroupAdd(acc[t]), q = subgroupAdd(ss[t]);
      if (lane == 0u) lg[t * pc.n_experts + e] = a * inversesqrt(q / float(pc.cols) + pc.eps);
    }
  }
  // The last workgroup to get here routes every token.
  memoryBarrierBuffer();
  barrier();
  if (gl_LocalInvocationIndex == 0u) s_last = atomicAdd(count[0], 1u) == gl_NumWorkGroups.x - 1u;
  barrier();
  if (!s_last) return;
  memoryBarrierBuffer();
  if (gl_LocalInvocationIndex == 0u) count[0] = 0u;
  for (uint t = gl_SubgroupID; t < pc.tokens; t += gl_NumSubgroups) route_token(t, pc.k, pc.n_experts);
}
