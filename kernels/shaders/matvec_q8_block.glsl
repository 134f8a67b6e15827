// matvec_q8_block.glsl — one 32-value block of x̂ = x·norm_w quantized to the q8 forms' numbers: int8
// codes with d = max|x̂|/127 (q = round(x̂/d)), d·Σq per 16 values, and the block's Σ x² (before
// norm_w, for the RMSNorm), half a block per invocation. The one copy of this arithmetic: the staged
// kernels (matvec_q8_parts.glsl, stage_half: the dense q8 matvec and the MoE q8 kernels) and the q8p
// form's activation pass (matvec_q8_quant.comp) all call q8_half, so they give the same bits for the
// same x — a column's numbers must not depend on which form quantized it (greedy speculative
// decoding). Σ x² of a block is (Σ of values 0..15) + (Σ of 16..31), each summed in order.
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

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

// A block quantized by two adjacent invocations (subgroup lanes 2j and 2j+1), each holding one half
// (the even lane values 0..15, the odd one 16..31). Both lanes must call it; they get the block's d
// (times dscale: moe_down_q8.comp's routing weight, 1 elsewhere) and Σ x², and their own half's codes
// and d·Σq.
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
