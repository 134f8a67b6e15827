#version 460
// Stochastic sampling per row of logits: temperature, then top-k (k ≤ 64; candidates by descending
// logit, ties → smaller index), min-p (keep p ≥ min_p · p_max), top-p (smallest prefix with
// cumulative p ≥ top_p), then one draw u ∈ [0,1) from a counter-based RNG (PCG hash of seed and row,
// the same function as ref::sample_uniform).
// The workgroup form of sample_f32.comp (same rules, same draws: the same candidates in the same
// order, the same serial arithmetic after them), for vocabulary-sized rows (ops::Sampler picks it).
// One workgroup of kWG (constant 0) per row. The candidates are found in k passes over the row, the
// whole workgroup each time: pass j takes the largest logit strictly after candidate j−1 in the order
// (logit descending, index ascending) — vec4 loads with 8 in flight when ncols is a multiple of 4 —
// and a shared-memory (value, index) tree picks it (ties → smaller index; NaN is never a candidate).
// The serial tail (softmax over ≤ 64 candidates, min-p, top-p, the draw) runs in invocation 0.
// (sample_f32.comp is one invocation per row walking the row k times with a k-long "taken" check per
// logit: O(k² · ncols) serial work, ~10^8 steps for the 151,936-entry Qwen3 head; it stays for short
// rows, where a workgroup per row costs more.) A row of NaN draws token 0.
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint kWG = 256u;
layout(std430, binding = 0) readonly buffer L { float l[]; };
layout(std430, binding = 0) readonly buffer L4 { vec4 l4[]; };
layout(std430, binding = 1) writeonly buffer O { uint o[]; };
// Decode replay (engine steps recorded once): the seed is seeds[pc.seed], written by the host before
// each step, instead of the push constant itself.
layout(constant_id = 1) const bool kSeedFromBuffer = false;
layout(std430, binding = 2) readonly buffer S { uint seeds[]; };
// out_at: the first row's element of binding 1 (the host binds it from an aligned offset below).
layout(push_constant) uniform P { uint ncols; uint rows; uint top_k; float temperature; float top_p; float min_p; uint seed; uint out_at; } pc;
const uint kNone = 0xffffffffu, kU = 8u;
shared float bv[kWG];
shared uint bi[kWG];
shared uint cand[64];
uint pcg(uint v) { uint s = v * 747796405u + 2891336453u; uint w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u; return (w >> 22u) ^ w; }

// Takes (v, i) if it comes after (pv, pi) in the candidate order and beats the best so far.
void take(float v, uint i, float pv, uint pi, inout float best, inout uint besti) {
  const bool after = pi == kNone || v < pv || (v == pv && i > pi);
  if (after && !isnan(v) && (besti == kNone || v > best)) { best = v; besti = i; }
}

void main() {
  const uint row = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
  const uint base = row * pc.ncols;
  const uint k = min(min(pc.top_k, 64u), pc.ncols);
  float pv = 0.0;
  uint pi = kNone, found = 0u;
  for (uint j = 0u; j < k; ++j) {
    float best = -1.0 / 0.0;
    uint besti = kNone;
    if (pc.ncols % 4u == 0u) {
      const uint n4 = pc.ncols / 4u, base4 = base / 4u;
      for (uint i0 = t; i0 < n4; i0 += kWG * kU) {
        vec4 v[kU];
        [[unroll]] for (uint u = 0u; u < kU; ++u) {
          const uint i = i0 + u * kWG;
          v[u] = i < n4 ? l4[base4 + i] : vec4(0.0);
        }
        [[unroll]] for (uint u = 0u; u < kU; ++u) {
          const uint i = i0 + u * kWG;
          if (i < n4) {
            take(v[u].x, 4u * i, pv, pi, best, besti);
            take(v[u].y, 4u * i + 1u, pv, pi, best, besti);
            take(v[u].z, 4u * i + 2u, pv, pi, best, besti);
            take(v[u].w, 4u * i + 3u, pv, pi, best, besti);
          }
        }
      }
    } else {
      for (uint i = t; i < pc.ncols; i += kWG) take(l[base + i], i, pv, pi, best, besti);
    }
    bv[t] = best;
    bi[t] = besti;
    barrier();
    for (uint stride = kWG / 2u; stride > 0u; stride >>= 1) {
      if (t < stride) {
        const float v2 = bv[t + stride];
        const uint i2 = bi[t + stride];
        if (i2 != kNone && (bi[t] == kNone || v2 > bv[t] || (v2 == bv[t] && i2 < bi[t]))) { bv[t] = v2; bi[t] = i2; }
      }
      barrier();
    }
    pv = bv[0];
    pi = bi[0];
    barrier();  // bv/bi are rewritten by the next pass
    if (pi == kNone) break;  // fewer than k logits that are not NaN
    if (t == 0u) cand[j] = pi;
    found = j + 1u;
  }
  barrier();
  if (t != 0u) return;
  if (found == 0u) {  // every logit NaN: nothing to draw from
    o[pc.out_at + row] = 0u;
    return;
  }
  float p[64];
  const float mx = l[base + cand[0]];
  float sum = 0.0;
  for (uint j = 0u; j < found; ++j) { p[j] = exp((l[base + cand[j]] - mx) / pc.temperature); sum += p[j]; }
  uint keep = 0u; float cum = 0.0;
  for (uint j = 0u; j < found; ++j) {
    const float pj = p[j] / sum;
    if (j > 0u && pj < pc.min_p * (p[0] / sum)) break;
    keep = j + 1u; cum += pj;
    if (cum >= pc.top_p) break;
  }
  float tot = 0.0;
  for (uint j = 0u; j < keep; ++j) tot += p[j];
  const uint seed = kSeedFromBuffer ? seeds[pc.seed] : pc.seed;
  const float u = float(pcg(seed ^ pcg(row)) >> 8) * (1.0 / 16777216.0) * tot;
  uint pick = cand[keep - 1u];
  float acc = 0.0;
  for (uint j = 0u; j < keep; ++j) { acc += p[j]; if (u < acc) { pick = cand[j]; break; } }
  o[pc.out_at + row] = pick;
}
