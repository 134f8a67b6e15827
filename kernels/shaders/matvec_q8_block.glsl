// matvec_q8_block.glsl — one 32-value block of x̂ = x·norm_w quantized to the q8 forms' numbers: int8
// codes with d = max|x̂|/127 (q = round(x̂/d)), d·Σq per 16 values, and the block's Σ x² (before
// norm_w, for the RMSNorm). The one copy of this arithmetic: the staged kernels (matvec_q8_parts.glsl,
// stage_block: the dense q8 matvec and the MoE q8 kernels) and the q8p form's activation pass
// (matvec_q8_quant.comp) both call it, so they give the same bits for the same x — a column's numbers
// must not depend on which form quantized it (greedy speculative decoding).
#extension GL_EXT_control_flow_attributes : require

struct Q8Block {
  uint w[8];       // the 32 int8 codes, 4 per word, value 4i + j in byte j of word i
  float d, s0, s1; // the scale (times dscale) and d·Σq of values 0..15 and 16..31
  float ssq;       // Σ x² of the block, before norm_w
};

// v: the block's values x, four per vec4; n: its norm weights (read only with `norm`); dscale
// multiplies the scale (moe_down_q8.comp: the routing weight; 1 elsewhere).
Q8Block q8_block(vec4 v[8], vec4 n[8], bool norm, float dscale) {
  Q8Block o;
  o.ssq = 0.0;
  float amax = 0.0;
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    o.ssq += dot(v[i], v[i]);
    if (norm) v[i] *= n[i];
    const vec4 a = abs(v[i]);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
  }
  o.d = amax / 127.0 * dscale;
  const float id = amax > 0.0 ? 127.0 / amax : 0.0;
  int sum[2] = int[2](0, 0);
  [[unroll]] for (uint i = 0u; i < 8u; ++i) {
    const ivec4 q = ivec4(round(v[i] * id));
    sum[i >> 2u] += (q.x + q.y) + (q.z + q.w);
    o.w[i] = (uint(q.x) & 0xFFu) | ((uint(q.y) & 0xFFu) << 8u) | ((uint(q.z) & 0xFFu) << 16u) | (uint(q.w) << 24u);
  }
  o.s0 = o.d * float(sum[0]);
  o.s1 = o.d * float(sum[1]);
  return o;
}
