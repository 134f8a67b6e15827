#version 460
// Paged causal grouped-query attention for one sequence (decode: n_tokens = 1; prefill: many tokens
// from start_pos, so a cached prefix can already be in the pool). One workgroup of 64 per (query
// head, query token, key split). Keys go in tiles of 64: each invocation scores one key of the tile
// (the whole q·k dot product), the tile's max and sum are reduced in shared memory, then each
// invocation accumulates V for its dims t, t+64, t+128, t+192 (head_dim <= 256) over the tile with an
// online softmax (running max m, denominator l, rescaled accumulator) — two reductions per 64 keys.
// n_splits == 1: the normalised output is written to o. Otherwise each split writes its unnormalised
// accumulator, m and l to `part` and attention_combine.comp merges the splits (split-K decode: a long
// KV is walked by n_splits workgroups per head instead of one).
// Pool layout: kernels/kv_layout.h (block = K then V, each [kv_head][slot][head_dim], f16), bound as
// uint words holding two halves each (head_dim is even).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer KV { uint kv[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { float o[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Part { float part[]; };
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint head_dim; uint n_heads; uint start_pos; uint n_tokens; float scale;
  uint n_splits; uint split_len;
} pc;

shared float qs[256];
shared float w[64];
shared float red[64];

float half_at(uint word, uint e) {
  vec2 h = unpackHalf2x16(word);
  return (e & 1u) == 0u ? h.x : h.y;
}

// Offset (in halves) of K[p] for this KV head; V[p] is half a block further.
uint k_offset(uint p, uint kvh) {
  uint blk = uint(table[p / pc.block_size]);
  uint half_block = pc.block_size * pc.n_kv_heads * pc.head_dim;
  return blk * 2u * half_block + (kvh * pc.block_size + p % pc.block_size) * pc.head_dim;
}

void main() {
  uint h = gl_WorkGroupID.x, tok = gl_WorkGroupID.y, split = gl_WorkGroupID.z, t = gl_LocalInvocationID.x;
  uint kvh = h / (pc.n_heads / pc.n_kv_heads);
  uint keys = pc.start_pos + tok + 1u;  // causal: keys 0 .. start_pos + tok
  uint k0 = split * pc.split_len, k1 = min(keys, k0 + pc.split_len);
  uint qbase = (tok * pc.n_heads + h) * pc.head_dim;
  uint half_block = pc.block_size * pc.n_kv_heads * pc.head_dim;
  for (uint d = t; d < pc.head_dim; d += 64u) qs[d] = q[qbase + d];
  barrier();
  float acc[4] = float[4](0.0, 0.0, 0.0, 0.0);
  float m = -1.0 / 0.0, l = 0.0;
  for (uint base = k0; base < k1; base += 64u) {
    uint p = base + t;
    float s = -1.0 / 0.0;
    if (p < k1) {
      uint off = k_offset(p, kvh) >> 1;
      float dot = 0.0;
      for (uint i = 0u; i < pc.head_dim / 2u; ++i) {
        vec2 kk = unpackHalf2x16(kv[off + i]);
        dot += qs[2u * i] * kk.x + qs[2u * i + 1u] * kk.y;
      }
      s = dot * pc.scale;
    }
    red[t] = s;
    barrier();
    for (uint r = 32u; r > 0u; r >>= 1) {
      if (t < r) red[t] = max(red[t], red[t + r]);
      barrier();
    }
    float m_new = max(m, red[0]);
    barrier();
    float wt = exp(s - m_new);  // 0 for keys past the end
    w[t] = wt;
    red[t] = wt;
    barrier();
    for (uint r = 32u; r > 0u; r >>= 1) {
      if (t < r) red[t] += red[t + r];
      barrier();
    }
    float corr = exp(m - m_new);
    l = l * corr + red[0];
    uint n = min(64u, k1 - base);
    for (uint i = 0u; i < 4u; ++i) {
      uint d = t + 64u * i;
      if (d >= pc.head_dim) break;
      float a = acc[i] * corr;
      for (uint j = 0u; j < n; ++j) {
        uint voff = k_offset(base + j, kvh) + half_block + d;
        a += w[j] * half_at(kv[voff >> 1], voff);
      }
      acc[i] = a;
    }
    m = m_new;
    barrier();  // w and red are rewritten by the next tile
  }
  if (pc.n_splits == 1u) {
    for (uint i = 0u; i < 4u; ++i) {
      uint d = t + 64u * i;
      if (d < pc.head_dim) o[qbase + d] = acc[i] / l;
    }
    return;
  }
  uint pbase = ((tok * pc.n_heads + h) * pc.n_splits + split) * (pc.head_dim + 2u);
  for (uint i = 0u; i < 4u; ++i) {
    uint d = t + 64u * i;
    if (d < pc.head_dim) part[pbase + d] = acc[i];
  }
  if (t == 0u) {
    part[pbase + pc.head_dim] = m;  // -inf for a split past the last key (l = 0)
    part[pbase + pc.head_dim + 1u] = l;
  }
}
