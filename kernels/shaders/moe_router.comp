#version 460
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
// The MoE router and its routing in one dispatch, for decode-sized steps (kernels/ops/moe_ffn.h
// MoeRoute::record_router). pc.mode 0 (MoeRouterCall::kNormRoute): for each token t of the step (at
// most kMaxT),
//   logits[t][e] = Σ_c router[e][c] · norm_w[c] · x[t][c] / sqrt(mean_c x[t][c]² + eps)
// — the FFN RMSNorm folded in, so x is the residual stream itself — then the token's top-k and its
// renormalised weights (moe_topk.glsl, the same code as moe_route.comp). Router weights f32.
// pc.mode 1 (kPlain): logits[t][e] = Σ_c router[e][c] · x[t][c], nothing else (no norm, no routing).
// pc.mode 2 (kBiasRouteRaw): logits[t][e] = Σ_c router[e][c] · x[t][c] + bias[t][e], then the top-k
// with the chosen logits themselves in `weights` (the consumer scales them: MoeFfnCall::weights_raw).
// pc.mode 3 (kBiasLogits): logits[t][e] = Σ_c router[e][c] · x[t][c] + bias[t][e], no routing (the
// experts' gate/up kernel routes: MoeFfnCall::route_logits).
// Modes 1–3 are the router beside the O projection (engine/runtime/moe_layer.h, "beside").
//
// One subgroup per expert row: its lanes walk the row in 16-byte loads, kU at once, and keep each
// token's dot and Σ x² (every subgroup sums x² itself: no shared memory, no barrier before the
// logits). The last workgroup to finish routes: every workgroup writes its logits, makes them visible
// (memoryBarrierBuffer), then one invocation counts the workgroup done (atomicAdd on `count`); the one
// that reads n_workgroups − 1 knows every logit is written, resets the counter to 0 for the next call
// and routes each token with one subgroup. So no second dispatch and no barrier between the router and
// the routing (a dependent dispatch costs ~7 µs on the H200). Calls that route must be separated by a
// barrier (they share the counter; a decode layer's next call is).
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
layout(std430, set = 0, binding = 7) readonly buffer B { float bias[]; };  // modes 2, 3: [tokens][n_experts]
layout(push_constant) uniform P { uint cols; uint tokens; uint n_experts; uint k; float eps; uint mode; } pc;

const uint kMaxT = 8u;  // tokens per call
layout(constant_id = 1) const uint kU = 8u;  // 16-byte loads per lane in flight per round (8: half a
                                             // 2048-column row; TROVE_MOE_ROUTER_LOADS)
// kSplit (TROVE_MOE_ROUTER_SPLIT=1, moe_ffn.cpp): one expert row per workgroup, its invocations
// splitting the columns (a 4096-column row in one round of loads at 128 invocations, 8 loads a lane,
// and n_experts workgroups over the SMs instead of n_experts / 4); the subgroups' sums meet in shared
// memory, added in subgroup order. A token's arithmetic does not depend on the step's other tokens.
layout(constant_id = 2) const uint kSplit = 0u;
const uint kMaxSubgroups = 32u;
shared float s_acc[kMaxT][kMaxSubgroups], s_ss[kMaxT][kMaxSubgroups];
shared bool s_last;

// Token t's logit of expert e from its dot `a` and Σ x² `q` (mode 0 scales by 1/rms; modes 2, 3 add
// the bias).
void write_logit(uint t, uint e, float a, float q) {
  if (pc.mode == 0u) {
    lg[t * pc.n_experts + e] = a * inversesqrt(q / float(pc.cols) + pc.eps);
  } else {
    lg[t * pc.n_experts + e] = pc.mode >= 2u ? a + bias[t * pc.n_experts + e] : a;
  }
}

// kSplit: expert row e over the whole workgroup.
void split_row(uint e, bool norm) {
  const uint lid = gl_LocalInvocationIndex, N = gl_WorkGroupSize.x, c4 = pc.cols / 4u;
  float acc[kMaxT], ss[kMaxT];
  [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
    acc[t] = 0.0;
    ss[t] = 0.0;
  }
  for (uint c = lid; c < c4; c += N * kU) {
    vec4 w[kU];
    [[unroll]] for (uint u = 0u; u < kU; ++u) {
      const uint i = c + u * N;
      w[u] = i < c4 ? (norm ? w4[e * c4 + i] * nw4[i] : w4[e * c4 + i]) : vec4(0.0);
    }
    [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
      if (t >= pc.tokens) break;
      [[unroll]] for (uint u = 0u; u < kU; ++u) {
        const uint i = c + u * N;
        const vec4 xv = i < c4 ? x4[t * c4 + i] : vec4(0.0);
        acc[t] += dot(w[u], xv);
        if (norm) ss[t] += dot(xv, xv);
      }
    }
  }
  [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
    if (t >= pc.tokens) break;
    const float a = subgroupAdd(acc[t]), q = norm ? subgroupAdd(ss[t]) : 0.0;
    if (subgroupElect()) {
      s_acc[t][gl_SubgroupID] = a;
      s_ss[t][gl_SubgroupID] = q;
    }
  }
  barrier();
  if (lid < pc.tokens) {
    float a = 0.0, q = 0.0;
    for (uint g = 0u; g < gl_NumSubgroups; ++g) {
      a += s_acc[lid][g];
      q += s_ss[lid][g];
    }
    write_logit(lid, e, a, q);
  }
  barrier();  // s_acc / s_ss are read before a next row overwrites them
}

#include "moe_topk.glsl"

void main() {
  const uint lane = gl_SubgroupInvocationID, S = gl_SubgroupSize, c4 = pc.cols / 4u;
  const bool norm = pc.mode == 0u;
  if (kSplit != 0u) {
    for (uint e = gl_WorkGroupID.x; e < pc.n_experts; e += gl_NumWorkGroups.x) split_row(e, norm);
  }
  // Rows strided over the dispatch's subgroups (one row each where the host's grid matches the
  // subgroup size; any subgroup size still covers every row).
  for (uint e = gl_WorkGroupID.x * gl_NumSubgroups + gl_SubgroupID; kSplit == 0u && e < pc.n_experts;
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
        w[u] = i < c4 ? (norm ? w4[e * c4 + i] * nw4[i] : w4[e * c4 + i]) : vec4(0.0);
      }
      [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
        if (t >= pc.tokens) break;
        [[unroll]] for (uint u = 0u; u < kU; ++u) {
          const uint i = c + u * S;
          const vec4 xv = i < c4 ? x4[t * c4 + i] : vec4(0.0);
          acc[t] += dot(w[u], xv);
          if (norm) ss[t] += dot(xv, xv);
        }
      }
    }
    [[unroll]] for (uint t = 0u; t < kMaxT; ++t) {
      if (t >= pc.tokens) break;
      const float a = subgroupAdd(acc[t]), q = norm ? subgroupAdd(ss[t]) : 0.0;
      if (lane == 0u) write_logit(t, e, a, q);
    }
  }
  // The last workgroup to get here routes every token.
  if (pc.mode == 1u || pc.mode == 3u) return;
  memoryBarrierBuffer();
  barrier();
  if (gl_LocalInvocationIndex == 0u) s_last = atomicAdd(count[0], 1u) == gl_NumWorkGroups.x - 1u;
  barrier();
  if (!s_last) return;
  memoryBarrierBuffer();
  if (gl_LocalInvocationIndex == 0u) count[0] = 0u;
  for (uint t = gl_SubgroupID; t < pc.tokens; t += gl_NumSubgroups) {
    route_token(t, pc.k, pc.n_experts, pc.mode == 2u);
  }
}
