// matvec_q8_block.glsl — one 32-value block of x̂ = x·norm_w quantized to the q8 forms' numbers: int8
// codes with d = max|x̂|/127 (q = round(x̂/d)), d·Σq per 16 values, and the block's Σ x² (before
// norm_w, for the RMSNorm). The one copy of this arithmetic: the staged kernels (matvec_q8_parts.glsl:
// stage_block in the MoE q8 kernels, stage_half in the dense q8 matvec) and the q8p form's activation
// pass (matvec_q8_quant.comp) all build on the two half-block functions below, so they give the same
// bits for the same x — a column's numbers must not depend on which form quantized it (greedy
// speculative decoding). Σ x² of a block is (Σ of values 0..15) + (Σ of 16..31), each summed in order.
#extension GL_EXT_control_flow_attributes : require

// Σ x² (before norm_w) and max|x̂| of 16 values; v becomes x̂ with `norm`.
void q8_half_stats(inout vec4 v[4], vec4 n[4], bool norm, out float ssq, out float amax) {
  ssq = 0.0;
  amax = 0.0;
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
    ssq += dot(v[i], v[i]);
    if (norm) v[i] *= n[i];
    const vec4 a = abs(v[i]);
    amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
  }
}

// The int8 codes of 16 values of x̂ at inverse scale id (4 per word, value 4i + j in byte j of word
// i), and their sum.
void q8_half_codes(vec4 v[4], float id, out uint w[4], out int sum) {
  sum = 0;
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
    const ivec4 q = ivec4(round(v[i] * id));
    sum += (q.x + q.y) + (q.z + q.w);
    w[i] = (uint(q.x) & 0xFFu) | ((uint(q.y) & 0xFFu) << 8u) | ((uint(q.z) & 0xFFu) << 16u) | (uint(q.w) << 24u);
  }
}

struct Q8Block {
  uint w[8];       // the 32 int8 codes
  float d, s0, s1; // the scale (times dscale) and d·Σq of values 0..15 and 16..31
  float ssq;       // Σ x² of the block, before norm_w
};

// A whole block in one invocation. v: the values x, four per vec4; n: the norm weights (read only
// with `norm`); dscale multiplies the scale (moe_down_q8.comp: the routing weight; 1 elsewhere).
Q8Block q8_block(vec4 v[8], vec4 n[8], bool norm, float dscale) {
  vec4 lo[4], hi[4], nlo[4], nhi[4];
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
    lo[i] = v[i];
    hi[i] = v[i + 4u];
    nlo[i] = n[i];
    nhi[i] = n[i + 4u];
  }
  float s_lo, s_hi, a_lo, a_hi;
  q8_half_stats(lo, nlo, norm, s_lo, a_lo);
  q8_half_stats(hi, nhi, norm, s_hi, a_hi);
  const float amax = max(a_lo, a_hi);
  Q8Block o;
  o.ssq = s_lo + s_hi;
  o.d = amax / 127.0 * dscale;
  const float id = amax > 0.0 ? 127.0 / amax : 0.0;
  uint wl[4], wh[4];
  int sum_lo, sum_hi;
  q8_half_codes(lo, id, wl, sum_lo);
  q8_half_codes(hi, id, wh, sum_hi);
  [[unroll]] for (uint i = 0u; i < 4u; ++i) {
    o.w[i] = wl[i];
    o.w[i + 4u] = wh[i];
  }
  o.s0 = o.d * float(sum_lo);
  o.s1 = o.d * float(sum_hi);
  return o;
}

#ifdef Q8_HALF_PAIRS
// The same numbers from two adjacent invocations (subgroup lanes 2j and 2j+1), each holding one half
// of the block (the even lane values 0..15): every invocation does half the loads and codes of
// q8_block. Both lanes must call it; they get the block's d and Σ x², and their own half's codes and
// d·Σq. Needs GL_KHR_shader_subgroup_shuffle.
struct Q8Half {
  uint w[4];
  float d, s;  // the block's scale (times dscale); d·Σq of this half
  float ssq;   // Σ x² of the whole block
};
Q8Half q8_half(vec4 v[4], vec4 n[4], bool norm, float dscale) {
  float ssq, amax;
  q8_half_stats(v, n, norm, ssq, amax);
  // Σ x² = lo + hi on both lanes (addition commutes exactly); max is exact.
  const float o_ssq = subgroupShuffleXor(ssq, 1u), o_amax = subgroupShuffleXor(amax, 1u);
  const bool odd = (gl_SubgroupInvocationID & 1u) != 0u;
  Q8Half o;
  o.ssq = odd ? o_ssq + ssq : ssq + o_ssq;
  const float m = max(amax, o_amax);
  o.d = m / 127.0 * dscale;
  const float id = m > 0.0 ? 127.0 / m : 0.0;
  int sum;
  q8_half_codes(v, id, o.w, sum);
  o.s = o.d * float(sum);
  return o;
}
#endif
