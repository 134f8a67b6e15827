// attention_combine_v2.glsl — the merge of decode v2's split-K partials for one (token, head), shared
// by attention_combine_v2.comp (its own dispatch, one workgroup per head and token) and
// attention_decode_v2.comp's fused form (TROVE_ATTENTION_COMBINE=fused: the last slice workgroup of a
// (token, head group) merges its heads), so both give the same bits:
//   1. M = max_s m_s and L = Σ_s l_s e^(m_s − M) over the splits with l_s > 0 (a slice past the last key
//      has l = 0, m = -inf and weighs nothing), invocations over splits, reduced in shared memory; each
//      split's weight w_s = e^(m_s − M) kept in shared memory (0 for an empty split).
//   2. o = Σ_s acc_s w_s / L: head_dim / 2 invocations per split group (two dims each), 128 / (head_dim / 2)
//      groups taking every ng-th split, 8 splits' loads in flight; the groups summed in shared memory.
// The includer declares `part` (float) and `part2` (vec2) over the partials [.. split][head_dim + 2],
// `o` (float), kCombineMaxS (the shared weights' size, >= n_splits) and kCombineRed (128; 1 where the
// merge never runs, so that the includer's shared memory does not grow), and runs 128 invocations.
// head_dim even, 4 <= head_dim <= 256. Workgroup-uniform: it has barriers.
shared float cw[kCombineMaxS];
shared vec2 cred[kCombineRed];

// Partials of this (token, head) at part[base ..] (base even), S of them, head_dim D; o[obase ..] = the merged row.
void combine_splits(uint base, uint S, uint D, uint obase) {
  const uint kWG = 128u, t = gl_LocalInvocationID.x, stride = D + 2u;
  // 1. (max, sum) pairs over the splits.
  float mt = -1.0 / 0.0;
  for (uint s = t; s < S; s += kWG) {
    if (part[base + s * stride + D + 1u] > 0.0) mt = max(mt, part[base + s * stride + D]);
  }
  cred[t] = vec2(mt, 0.0);
  barrier();
  for (uint r = kWG / 2u; r > 0u; r >>= 1u) {
    if (t < r) cred[t].x = max(cred[t].x, cred[t + r].x);
    barrier();
  }
  const float M = cred[0].x;
  barrier();
  float lt = 0.0;
  for (uint s = t; s < S; s += kWG) {
    const float l = part[base + s * stride + D + 1u];
    const float e = l > 0.0 ? exp(part[base + s * stride + D] - M) : 0.0;
    cw[s] = e;
    lt += l * e;
  }
  cred[t] = vec2(0.0, lt);
  barrier();
  for (uint r = kWG / 2u; r > 0u; r >>= 1u) {
    if (t < r) cred[t].y += cred[t + r].y;
    barrier();
  }
  const float L = cred[0].y;
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
        v[u] = s < S && cw[s] > 0.0 ? part2[b2 + s * st2] : vec2(0.0);
      }
      [[unroll]] for (uint u = 0u; u < 8u; ++u) {
        const uint s = s0 + u * ng;
        if (s < S) a += v[u] * cw[s];
      }
    }
  }
  cred[t] = a;
  barrier();
  if (t < hd) {
    for (uint g = 1u; g < ng; ++g) a += cred[g * hd + t];
    o[obase + 2u * dp] = a.x / L;
    o[obase + 2u * dp + 1u] = a.y / L;
  }
  barrier();  // cw and cred are free for the next head
}
