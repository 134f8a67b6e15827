// matvec_q8_rope.glsl — the attention prologue as the epilogue of the Q, K, V matvec (MV_ROPE_KV:
// matvec_q8_rope.comp and matvec_q8p_rope.comp; kernels/ops/matvec.h, MatvecRopeKv). The same
// arithmetic as qk_rope_kv.comp, per head h of matrix m (0: q, 1: k, 2: v) and batch column b:
//   q:  q_out[b, h, :]              = rope(rmsnorm(y0[b, h, :]) · q_norm_w)       (f32)
//   k:  pool K[slot[b], h, :]       = f16(rope(rmsnorm(y1[b, h, :]) · k_norm_w))
//   v:  pool V[slot[b], h, :]       = f16(y2[b, h, :])
// without the dispatch of its own, which waited for the whole matvec behind a barrier (a dependent
// dispatch costs ~7 µs on the H200, once per layer).
//
// Who does it: the last workgroup to finish one of a head's row blocks. A head's rows are head_dim /
// (rows per block) whole blocks (the host checks). After each block every workgroup makes its rows
// visible (memoryBarrierBuffer) and one invocation counts the block done in rope_count[head]; the one
// that reads blocks_per_head − 1 knows the head's rows are all written, resets the count to 0 for the
// next call (calls must be separated by a barrier, as a decode layer's are) and runs the head's
// prologue for every batch column: invocation i < head_dim/2 of each group of head_dim/2 owns the RoPE
// pair (i, i + head_dim/2) of one column; Σ x² by subgroupAdd, then over the column's subgroups in
// order. K words pack elements (2w, 2w + 1): an even pair and the next one (the neighbouring lane,
// subgroupShuffleXor) make one word of the first half and one of the second.
//
// Needs (the host checks): kSwiGlu 0, 3 matrices, head_dim a multiple of 4 and of the rows per block,
// head_dim/2 a multiple of kG and a divisor of the workgroup size.
#extension GL_KHR_shader_subgroup_shuffle : require

layout(std430, set = 0, binding = 8) coherent buffer RC { uint rope_count[]; };  // per head (q, k, v); 0 between calls
layout(std430, set = 0, binding = 9) readonly buffer RQW { float rq_w[]; };
layout(std430, set = 0, binding = 10) readonly buffer RKW { float rk_w[]; };
layout(std430, set = 0, binding = 11) readonly buffer RPos { int rpos[]; };
layout(std430, set = 0, binding = 12) readonly buffer RTurns { uvec2 rturns[]; };  // {lo, hi} per pair, as qk_rope_kv.comp
layout(std430, set = 0, binding = 13) readonly buffer RSlot { uint rslot[]; };
layout(std430, set = 0, binding = 14) buffer RPool { uint rpool[]; };
layout(std430, set = 0, binding = 15) writeonly buffer RQO { float rq_out[]; };

shared bool s_rope_last;
shared float s_rope_ssq[kGroups];

float rope_y(uint m, uint i) { return m == 0u ? y0[i] : (m == 1u ? y1[i] : y2[i]); }

// The prologue of head hh of matrix m for every batch column (all invocations call it).
void rope_kv_head(uint m, uint hh) {
  const uint D = pc.rope.x, half_d = D >> 1u, bt = pc.rope.y;
  const float eps = uintBitsToFloat(pc.rope.z);
  const uint n_kv = pc.rows[1] / D;
  const uint lid = gl_LocalInvocationID.x, i = lid % half_d;
  const uint per = kWG / half_d;  // columns at once
  const uint sgs = half_d / kG;   // subgroups per column
  const uint k_words = n_kv * bt * half_d;  // one pool block's K in words (kernels/kv_layout.h)
  for (uint b0 = 0u; b0 < kNB; b0 += per) {  // uniform
    const uint b = b0 + lid / half_d;
    const bool on = b < kNB;
    const uint base = b * pc.y_stride[m] + hh * D;
    float x0 = 0.0, x1 = 0.0;
    if (on) {
      x0 = m == 2u ? y2[base + 2u * i] : rope_y(m, base + i);
      x1 = m == 2u ? y2[base + 2u * i + 1u] : rope_y(m, base + i + half_d);
    }
    uint dst = 0u;
    if (on && m != 0u) {
      const uint s = rslot[b], blk = s / bt, off = s % bt;
      dst = blk * 2u * k_words + (hh * bt + off) * half_d;
    }
    if (m == 2u) {  // V: word i holds elements 2i, 2i + 1
      if (on) rpool[dst + k_words + i] = packHalf2x16(vec2(x0, x1));
      continue;
    }
    const float sq = subgroupAdd(x0 * x0 + x1 * x1);
    if (lid % kG == 0u) s_rope_ssq[lid / kG] = sq;
    barrier();
    float t = 0.0;
    const uint g0 = lid / kG / sgs * sgs;
    for (uint g = 0u; g < sgs; ++g) t += s_rope_ssq[g0 + g];
    barrier();  // every column read its sums before the next columns' overwrite them
    const float inv = inversesqrt(t / float(D) + eps);
    float r0 = 0.0, r1 = 0.0;
    if (on) {
      x0 = x0 * inv * (m == 0u ? rq_w[i] : rk_w[i]);
      x1 = x1 * inv * (m == 0u ? rq_w[i + half_d] : rk_w[i + half_d]);
      const uint p = uint(rpos[b]);
      const uvec2 f = rturns[i];
      uint hi1, lo1, hi2, lo2;
      umulExtended(p, f.x, hi1, lo1);
      umulExtended(p, f.y, hi2, lo2);
      const uint frac_hi = hi1 + lo2;  // bits 32..63 of frac(p × turns); the integer turns fall off
      const float ang = (float(frac_hi) * 2.3283064e-10 + float(lo1) * 5.421011e-20) * 6.2831853;
      const float c = cos(ang), sn = sin(ang);
      r0 = x0 * c - x1 * sn;
      r1 = x0 * sn + x1 * c;
    }
    if (m == 0u) {
      if (on) {
        rq_out[b * pc.rows[0] + hh * D + i] = r0;
        rq_out[b * pc.rows[0] + hh * D + i + half_d] = r1;
      }
      continue;
    }
    // K: pair i holds elements i and i + half_d; word w holds 2w and 2w + 1. An even lane writes the
    // first-half word i/2 = (its r0, the next lane's r0), an odd lane the second-half word
    // (i − 1 + half_d)/2 = (the previous lane's r1, its r1).
    const float n0 = subgroupShuffleXor(r0, 1u), n1 = subgroupShuffleXor(r1, 1u);
    if (on) {
      const bool odd = (i & 1u) != 0u;
      const uint w = odd ? (i - 1u + half_d) / 2u : i / 2u;
      rpool[dst + w] = odd ? packHalf2x16(vec2(n1, r1)) : packHalf2x16(vec2(r0, n0));
    }
  }
}

// After block `blk_in_mat` of matrix m is written (all invocations call it).
void rope_kv_after_block(uint m, uint blk_in_mat) {
  const uint D = pc.rope.x, per_head = D / (kRG * kR);
  const uint hh = blk_in_mat / per_head;
  const uint n_q = pc.rows[0] / D, n_kv = pc.rows[1] / D;
  const uint head = (m == 0u ? 0u : (m == 1u ? n_q : n_q + n_kv)) + hh;
  memoryBarrierBuffer();
  barrier();
  if (gl_LocalInvocationID.x == 0u) s_rope_last = atomicAdd(rope_count[head], 1u) == per_head - 1u;
  barrier();
  if (!s_rope_last) return;  // uniform: every invocation read the flag after the barrier
  memoryBarrierBuffer();
  if (gl_LocalInvocationID.x == 0u) rope_count[head] = 0u;
  rope_kv_head(m, hh);
}
