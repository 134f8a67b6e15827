// Token t's routing weights from the raw router logits its top-k left in wt[t * k + j] (the router
// beside the O projection, moe_router.comp mode 2: logits before the FFN RMSNorm's 1/rms, which is
// only known once the residual stream is complete): with s = that 1/rms,
//   wt[t * k + j] = exp(s · (z_j − z_0)) / Σ_i exp(s · (z_i − z_0)),   z_0 the largest (picked first)
// — the softmax over the chosen renormalised, as moe_topk.glsl writes it for scaled logits. Run by one
// invocation per token (MoeFfnCall::weights_raw: the gate/up kernel's first row group of pair j = 0,
// after its Σ x²). The includer declares wt (read-write). k <= 32.
void scale_raw_weights(uint t, uint k, float s) {
  float e[32];
  const float z0 = wt[t * k];
  float sum = 0.0;
  [[unroll]] for (uint j = 0u; j < 32u; ++j) {
    if (j >= k) break;
    e[j] = exp(s * (wt[t * k + j] - z0));
    sum += e[j];
  }
  [[unroll]] for (uint j = 0u; j < 32u; ++j) {
    if (j >= k) break;
    wt[t * k + j] = e[j] / sum;
  }
}
