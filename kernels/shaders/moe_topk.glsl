// One token's top-k routing (moe_route.comp, moe_router.comp): the k best of its n_experts logits
// lg[t * n_experts ..] (ties → the smaller index, NaN below everything) and their softmax weights
// renormalised over the k chosen, written to ids[t * k + j] and wt[t * k + j]. Run by one whole
// subgroup (k rounds of subgroupMax / subgroupMin over the lanes' best remaining logit). The includer
// declares lg, ids and wt. k <= 32.
const float kInf = 1.0 / 0.0;
const uint kNone = 0xffffffffu;

void route_token(uint t, uint k, uint n_experts) {
  uint base = t * n_experts;
  float pv = kInf;  // the previous round's pick: value, index (none yet: every expert ranks below)
  uint pe = kNone;
  float top = 0.0, sum = 0.0;
  float cv[32];
  uint ce[32];
  [[unroll]] for (uint j = 0u; j < 32u; ++j) {
    if (j >= k) break;
    float bv = -kInf;
    uint be = kNone;
    for (uint e = gl_SubgroupInvocationID; e < n_experts; e += gl_SubgroupSize) {
      float v = lg[base + e];
      if (isnan(v)) v = -kInf;
      bool below_prev = pe == kNone || v < pv || (v == pv && e > pe);
      if (below_prev && (be == kNone || v > bv)) {
        bv = v;
        be = e;
      }
    }
    float m = subgroupMax(bv);
    uint pick = subgroupMin(be != kNone && bv == m ? be : kNone);
    pv = m;
    pe = pick;
    if (j == 0u) top = m;
    cv[j] = m;
    ce[j] = pick;
    sum += exp(m - top);
  }
  if (subgroupElect()) {
    [[unroll]] for (uint j = 0u; j < 32u; ++j) {
      if (j >= k) break;
      ids[t * k + j] = ce[j];
      wt[t * k + j] = exp(cv[j] - top) / sum;
    }
  }
}

