#version 460
// Merges split-K decode partials ([token][head][split][head_dim + 2]: acc, m, l; written by
// attention_decode_v2.comp) with the splits spread over the workgroup instead of walked by every
// invocation (attention_combine.comp): one workgroup of 128 per (head, token).
//   1. M = max_s m_s and L = Σ_s l_s e^(m_s − M) over the splits with l_s > 0 (a slice past the last key
//      has l = 0, m = -inf and weighs nothing), invocations over splits, reduced in shared memory; each
//      split's weight w_s = e^(m_s − M) kept in shared memory (0 for an empty split).
//   2. o = Σ_s acc_s w_s / L: head_dim / 2 invocations per split group (two dims each), 128 / (head_dim / 2)
//      groups taking every ng-th split, 8 splits' loads in flight; the groups summed in shared memory.
// head_dim even, 4 ≤ head_dim ≤ 256; n_splits ≤ kMaxS (attention.cpp checks).
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = 128) in;
layout(std430, set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(std430, set = 0, binding = 0) readonly buffer Part2 { vec2 part2[]; };
layout(std430, set = 0, binding = 1) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint head_dim; uint n_heads; uint n_splits; } pc;

const uint kWG = 128u, kMaxS = 1024u;
shared float w[kMaxS];
shared vec2 red[kWG];

void main() {
  const uint h = gl_WorkGroupID.x, tok = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  const uint D = pc.head_dim, stride = D + 2u, S = pc.n_splits;
  const uint base = (tok * pc.n_heads + h) * S * stride;
  // 1. (max, sum) pairs over the splits.
  float mt = -1.0 / 0.0;
  for (uint s = t; s < S; s += kWG) {
    if (part[base + s * stride + D + 1u] > 0.0) mt = max(mt, part[base + s * stride + D]);
  }
  red[t] = vec2(mt, 0.0);
  barrier();
  for (uint r = kWG / 2u; r > 0u; r >>= 1u) {
    if (t < r) red[t].x = max(red[t].x, red[t + r].x);
    barrier();
  }
  const float M = red[0].x;
  barrier();
  float lt = 0.0;
  for (uint s = t; s < S; s += kWG) {
    const float l = part[base + s * stride + D + 1u];
    const float e = l > 0.0 ? exp(part[base + s * stride + D] - M) : 0.0;
    w[s] = e;
    lt += l * e;
  }
  red[t] = vec2(0.0, lt);
  barrier();
  for (uint r = kWG / 2u; r > 0u; r >>= 1u) {
    if (t < r) red[t].y += red[t + r].y;
    barrier();
  }
  const float L = red[0].y;
  barrier();
  // 2. The weighted sum: invocation t takes dims 2 dp, 2 dp + 1 of splits grp, grp + ng, ...
  const uint hd = D / 2u, ng = kWG / hd, dp = t % hd, grp = t / hd;
  vec2 a = vec2(0.0);
  if (grp < ng) {
    const uint b2 = base / 2u + dp, st2 = stride / 2u;  // base and stride are even
    for (uint s0 = grp; s0 < S; s0 += 8u * ng) {
      vec2 v[8];
      [[unroll]] for (uint u = 0u; u < 8u; ++u) {
        const uint s = s0 + u * ng;
        v[u] = s < S && w[s] > 0.0 ? part2[b2 + s * st2] : vec2(0.0);
      }
      [[unroll]] for (uint u = 0u; u < 8u; ++u) {
        const uint s = s0 + u * ng;
        if (s < S) a += v[u] * w[s];
      }
    }
  }
  red[t] = a;
  barrier();
  if (t < hd) {
    for (uint g = 1u; g < ng; ++g) a += red[g * hd + t];
    o[(tok * pc.n_heads + h) * D + 2u * dp] = a.x / L;
    o[(tok * pc.n_heads + h) * D + 2u * dp + 1u] = a.y / L;
  }
}
