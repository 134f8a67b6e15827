#version 460
// Stochastic sampling per row of logits: temperature, then top-k (k ≤ 64; candidates by descending
// logit, ties → smaller index), min-p (keep p ≥ min_p · p_max), top-p (smallest prefix with
// cumulative p ≥ top_p), then one draw u ∈ [0,1) from a counter-based RNG (PCG hash of seed and row,
// the same function as ref::sample_uniform). One invocation per row: the candidate pass is serial,
// which is fine for decode batches; a parallel top-k is future work.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer L { float l[]; };
layout(std430, binding = 1) writeonly buffer O { uint o[]; };
// Decode replay (engine steps recorded once): the seed is seeds[pc.seed], written by the host before
// each step, instead of the push constant itself.
layout(constant_id = 0) const bool kSeedFromBuffer = false;
layout(std430, binding = 2) readonly buffer S { uint seeds[]; };
// out_at: the first row's element of binding 1 (the host binds it from an aligned offset below).
layout(push_constant) uniform P { uint ncols; uint rows; uint top_k; float temperature; float top_p; float min_p; uint seed; uint out_at; } pc;
uint pcg(uint v) { uint s = v * 747796405u + 2891336453u; uint w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u; return (w >> 22u) ^ w; }
void main() {
  uint row = gl_GlobalInvocationID.x;
  if (row >= pc.rows) return;
  uint base = row * pc.ncols;
  uint k = min(min(pc.top_k, 64u), pc.ncols);
  uint cand[64];
  float p[64];
  for (uint j = 0u; j < k; ++j) {
    uint bi = 0xffffffffu; float bv = 0.0;
    for (uint e = 0u; e < pc.ncols; ++e) {
      bool taken = false;
      for (uint q = 0u; q < j; ++q) taken = taken || cand[q] == e;
      float v = l[base + e];
      if (!taken && (bi == 0xffffffffu || v > bv)) { bv = v; bi = e; }
    }
    cand[j] = bi;
  }
  float mx = l[base + cand[0]];
  float sum = 0.0;
  for (uint j = 0u; j < k; ++j) { p[j] = exp((l[base + cand[j]] - mx) / pc.temperature); sum += p[j]; }
  uint keep = 0u; float cum = 0.0;
  for (uint j = 0u; j < k; ++j) {
    float pj = p[j] / sum;
    if (j > 0u && pj < pc.min_p * (p[0] / sum)) break;
    keep = j + 1u; cum += pj;
    if (cum >= pc.top_p) break;
  }
  float tot = 0.0;
  for (uint j = 0u; j < keep; ++j) tot += p[j];
  const uint seed = kSeedFromBuffer ? seeds[pc.seed] : pc.seed;
  float u = float(pcg(seed ^ pcg(row)) >> 8) * (1.0 / 16777216.0) * tot;
  uint pick = cand[keep - 1u];
  float acc = 0.0;
  for (uint j = 0u; j < keep; ++j) { acc += p[j]; if (u < acc) { pick = cand[j]; break; } }
  o[pc.out_at + row] = pick;
}
