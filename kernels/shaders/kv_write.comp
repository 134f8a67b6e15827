#version 460
// KV write: K and V rows of new tokens (f32 [tokens, kv_heads, head_dim]) stored as f16 into the paged
// pool (kernels/kv_layout.h: per block K then V, each [kv_head][token][head_dim]) at slot[t] =
// block * block_tokens + offset. The pool is addressed as 32-bit words (two halves); head_dim is even.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) readonly buffer S { uint slot[]; };
layout(std430, binding = 3) buffer Pool { uint pool[]; };
layout(push_constant) uniform P { uint tokens; uint kv_heads; uint head_dim; uint block_tokens; } pc;
void main() {
  uint half_d = pc.head_dim / 2u;
  uint id = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 256u;
  if (id >= pc.tokens * pc.kv_heads * half_d) return;
  uint p = id % half_d;
  uint h = (id / half_d) % pc.kv_heads;
  uint t = id / (half_d * pc.kv_heads);
  uint blk = slot[t] / pc.block_tokens, off = slot[t] % pc.block_tokens;
  uint k_words = pc.kv_heads * pc.block_tokens * half_d;   // one block's K in words
  uint dst = blk * 2u * k_words + (h * pc.block_tokens + off) * half_d + p;
  uint src = (t * pc.kv_heads + h) * pc.head_dim + 2u * p;
  pool[dst] = packHalf2x16(vec2(k[src], k[src + 1u]));
  pool[dst + k_words] = packHalf2x16(vec2(v[src], v[src + 1u]));
}
