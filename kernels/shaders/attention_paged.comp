#version 460
// Paged causal grouped-query attention for one sequence (decode: n_tokens = 1; prefill: many tokens
// from start_pos, so a cached prefix can already be in the pool). One workgroup of 64 per (query
// token, query head); each invocation owns dims t, t+64, t+128, t+192 (head_dim <= 256) and keeps an
// online softmax (running max m, denominator l, rescaled accumulator) so K/V are read once.
// Pool layout: kernels/kv_layout.h (block = K then V, each [kv_head][slot][head_dim], f16), bound as
// uint words holding two halves each (head_dim is even). Scalar, correct on any device; not yet tiled/split-K.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer KV { uint kv[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { float o[]; };
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint head_dim; uint n_heads; uint start_pos; uint n_tokens; float scale;
} pc;

shared float partial[64];

float half_at(uint word, uint e) {
  vec2 h = unpackHalf2x16(word);
  return (e & 1u) == 0u ? h.x : h.y;
}

void main() {
  uint h = gl_WorkGroupID.x, tok = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
  uint kvh = h / (pc.n_heads / pc.n_kv_heads);
  uint last = pc.start_pos + tok;
  uint qbase = (tok * pc.n_heads + h) * pc.head_dim;
  float qv[4], acc[4];
  for (uint i = 0u; i < 4u; ++i) {
    uint d = t + 64u * i;
    qv[i] = d < pc.head_dim ? q[qbase + d] : 0.0;
    acc[i] = 0.0;
  }
  float m = -1.0 / 0.0, l = 0.0;
  for (uint p = 0u; p <= last; ++p) {
    uint blk = uint(table[p / pc.block_size]);
    uint half_block = pc.block_size * pc.n_kv_heads * pc.head_dim;
    uint off = blk * 2u * half_block + (kvh * pc.block_size + p % pc.block_size) * pc.head_dim;
    uint voff = off + half_block;
    float s = 0.0;
    for (uint i = 0u; i < 4u; ++i) {
      uint d = t + 64u * i;
      if (d < pc.head_dim) s += qv[i] * half_at(kv[(off + d) >> 1], off + d);
    }
    partial[t] = s;
    barrier();
    for (uint w = 32u; w > 0u; w >>= 1) {
      if (t < w) partial[t] += partial[t + w];
      barrier();
    }
    float sc = partial[0] * pc.scale;
    barrier();  // everyone has read partial[0] before the next key overwrites it
    float m_new = max(m, sc);
    float corr = exp(m - m_new);
    float wgt = exp(sc - m_new);
    l = l * corr + wgt;
    for (uint i = 0u; i < 4u; ++i) {
      uint d = t + 64u * i;
      if (d < pc.head_dim) acc[i] = acc[i] * corr + wgt * half_at(kv[(voff + d) >> 1], voff + d);
    }
    m = m_new;
  }
  for (uint i = 0u; i < 4u; ++i) {
    uint d = t + 64u * i;
    if (d < pc.head_dim) o[qbase + d] = acc[i] / l;
  }
}
