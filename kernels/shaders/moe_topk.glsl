// One token's top-k routing (moe_route.comp, moe_router.comp; top_k alone: moe_experts_q8.comp): the
// k best of its n_experts logits lg[t * n_experts ..] (ties → the smaller index, NaN below
// everything) and their softmax weights renormalised over the k chosen, written to ids[t * k + j] and
// wt[t * k + j] (raw: the chosen logits themselves, for a consumer that scales them first —
// MoeFfnCall::weights_raw). Run by one whole subgroup (k rounds of subgroupMax / subgroupMin over the
// lanes' best remaining logit). The includer declares lg, ids and wt. k <= 32.
const float kInf = 1.0 / 0.0;
const uint kNone = 0xffffffffu;

const uint kPerLane = 8u;  // logits a lane holds in registers (all of them when n_experts <= 8 · subgroup)

// Expert e with logit v (NaN already -inf) ranks below the previous pick (pv, pe) and above the lane's
// best so far (bv, be): it becomes the lane's best.
void consider(float v, uint e, float pv, uint pe, inout float bv, inout uint be) {
  const bool below_prev = pe == kNone || v < pv || (v == pv && e > pe);
  if (below_prev && (be == kNone || v > bv)) {
    bv = v;
    be = e;
  }
}

// Token t's k picks on every lane of the subgroup: the logits cv[j] (descending) and experts ce[j],
// j < k (route_token below, and moe_experts_q8.comp when it routes its own tokens).
void top_k(uint t, uint k, uint n_experts, out float cv[32], out uint ce[32]) {
  const uint base = t * n_experts, lane = gl_SubgroupInvocationID, S = gl_SubgroupSize;
  // The logits are read once into registers (k rounds re-reading them cost k memory round trips).
  const bool held = n_experts <= kPerLane * S;
  float r[kPerLane];
  [[unroll]] for (uint i = 0u; i < kPerLane; ++i) {
    const uint e = lane + i * S;
    const float v = held && e < n_experts ? lg[base + e] : -kInf;
    r[i] = isnan(v) ? -kInf : v;
  }
  float pv = kInf;  // the previous round's pick: value, index (none yet: every expert ranks below)
  uint pe = kNone;
  [[unroll]] for (uint j = 0u; j < 32u; ++j) {
    if (j >= k) break;
    float bv = -kInf;
    uint be = kNone;
    if (held) {
      [[unroll]] for (uint i = 0u; i < kPerLane; ++i) {
        const uint e = lane + i * S;
        if (e < n_experts) consider(r[i], e, pv, pe, bv, be);
      }
    } else {
      for (uint e = lane; e < n_experts; e += S) {
        float v = lg[base + e];
        if (isnan(v)) v = -kInf;
        consider(v, e, pv, pe, bv, be);
      }
    }
    float m = subgroupMax(bv);
    uint pick = subgroupMin(be != kNone && bv == m ? be : kNone);
    pv = m;
    pe = pick;
    cv[j] = m;
    ce[j] = pick;
  }
}

void route_token(uint t, uint k, uint n_experts, bool raw) {
  float cv[32];
  uint ce[32];
  top_k(t, k, n_experts, cv, ce);
  const float top = cv[0];
  float sum = 0.0;
  [[unroll]] for (uint j = 0u; j < 32u; ++j) {
    if (j >= k) break;
    sum += exp(cv[j] - top);
  }
  if (subgroupElect()) {
    [[unroll]] for (uint j = 0u; j < 32u; ++j) {
      if (j >= k) break;
      ids[t * k + j] = ce[j];
      wt[t * k + j] = raw ? cv[j] : exp(cv[j] - top) / sum;
    }
  }
}
