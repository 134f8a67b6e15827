#version 460
// The attention prologue of one layer in one dispatch (ops::QkNormRopeKv, kernels/ops/layer_ops.h):
// for every token t and head h of the step — query heads 0 .. H-1, then KV heads —
//   q rows:  q_out[t, h, :] = rope(rmsnorm(q_raw[t, h, :]) · q_norm_w)              (f32, for attention)
//   k rows:  pool K[slot[t], kh, :] = f16(rope(rmsnorm(k_raw[t, kh, :]) · k_norm_w))
//            pool V[slot[t], kh, :] = f16(v_raw[t, kh, :])
// the same arithmetic as rms_norm_f32 → rope_neox_f32 → kv_write, without two intermediate buffers and
// four dispatches and two barriers per layer. One workgroup of 128 per (head, token); invocation i <
// head_dim/2 owns the RoPE pair (i, i + head_dim/2). Angles as in rope_neox_f32.comp (64-bit turns).
// head_dim even and <= 256. Pool layout: kernels/kv_layout.h.
layout(local_size_x = 128) in;
layout(std430, binding = 0) readonly buffer QR { float q_raw[]; };
layout(std430, binding = 1) readonly buffer KR { float k_raw[]; };
layout(std430, binding = 2) readonly buffer VR { float v_raw[]; };
layout(std430, binding = 3) readonly buffer QW { float q_w[]; };
layout(std430, binding = 4) readonly buffer KW { float k_w[]; };
layout(std430, binding = 5) readonly buffer Pos { int pos[]; };
layout(std430, binding = 6) readonly buffer Turns { uvec2 turns[]; };  // {lo, hi} per pair i
layout(std430, binding = 7) readonly buffer S { uint slot[]; };
layout(std430, binding = 8) buffer Pool { uint pool[]; };
layout(std430, binding = 9) writeonly buffer QO { float q_out[]; };
layout(push_constant) uniform P { uint head_dim; uint n_heads; uint n_kv_heads; uint block_tokens; float eps; } pc;

shared float red[128];
shared float row[256];

void main() {
  const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, i = gl_LocalInvocationID.x;
  const uint D = pc.head_dim, half_d = D / 2u;
  const bool is_q = h < pc.n_heads;  // uniform over the workgroup
  const uint kh = h - pc.n_heads;
  const uint base = is_q ? (t * pc.n_heads + h) * D : (t * pc.n_kv_heads + kh) * D;
  float x0 = 0.0, x1 = 0.0;
  if (i < half_d) {
    x0 = is_q ? q_raw[base + i] : k_raw[base + i];
    x1 = is_q ? q_raw[base + i + half_d] : k_raw[base + i + half_d];
  }
  red[i] = x0 * x0 + x1 * x1;
  barrier();
  for (uint r = 64u; r > 0u; r >>= 1u) {
    if (i < r) red[i] += red[i + r];
    barrier();
  }
  const float inv = inversesqrt(red[0] / float(D) + pc.eps);
  if (i < half_d) {
    x0 = x0 * inv * (is_q ? q_w[i] : k_w[i]);
    x1 = x1 * inv * (is_q ? q_w[i + half_d] : k_w[i + half_d]);
    const uint p = uint(pos[t]);
    const uvec2 f = turns[i];
    uint hi1, lo1, hi2, lo2;
    umulExtended(p, f.x, hi1, lo1);
    umulExtended(p, f.y, hi2, lo2);
    const uint frac_hi = hi1 + lo2;  // bits 32..63 of frac(p × turns); the integer turns fall off
    const float ang = (float(frac_hi) * 2.3283064e-10 + float(lo1) * 5.421011e-20) * 6.2831853;
    const float c = cos(ang), s = sin(ang);
    const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    if (is_q) {
      q_out[base + i] = y0;
      q_out[base + i + half_d] = y1;
    } else {
      row[i] = y0;
      row[i + half_d] = y1;
    }
  }
  if (is_q) return;
  barrier();
  if (i < half_d) {  // word i of the row: elements 2i, 2i + 1
    const uint blk = slot[t] / pc.block_tokens, off = slot[t] % pc.block_tokens;
    const uint k_words = pc.n_kv_heads * pc.block_tokens * half_d;  // one block's K in words
    const uint dst = blk * 2u * k_words + (kh * pc.block_tokens + off) * half_d + i;
    pool[dst] = packHalf2x16(vec2(row[2u * i], row[2u * i + 1u]));
    pool[dst + k_words] = packHalf2x16(vec2(v_raw[base + 2u * i], v_raw[base + 2u * i + 1u]));
  }
}
