#version 460
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
// Prefill attention for CPU devices (lavapipe): causal grouped-query attention over the paged f16 KV
// pool, f32 math (the tiled kernel's precision), one sequence per dispatch.
//
// Why a separate form: on Mesa 22.3's llvmpipe every storage-buffer or shared-memory load is a loop
// over the SIMD lanes (per lane and component: bounds check, scalar load, insert), barriers switch
// coroutines, and arithmetic is vector code (see matmul_cpu.comp). The tiled kernel stages K/V and
// scores through shared memory and synchronises 4 times per 32 keys; here nothing is shared:
//  - an invocation owns kT consecutive query tokens x kH query heads sharing one KV head (each K/V
//    row loaded serves kT * kH queries), keeps their q (pre-scaled) and
//    output accumulators in registers (spills are plain stack traffic, cheap next to a load), and
//    walks the keys itself with an online softmax per key (running max m, sum l, rescaled output);
//  - K/V rows are read straight from the pool through the block table, as 64-bit components;
//  - the key loop runs to the workgroup's last token (uniform); each query masks the keys past its
//    own position (score -inf), so no control flow depends on the lane.
// A workgroup is kLanes invocations (one SIMD vector) x kT tokens x kH heads: grid
// (ceil(n_tokens / (kLanes kT)), n_heads / kH); kH divides G = n_heads / n_kv_heads.
// kT * kH stays small (2-4): the whole q and output state of an invocation is unrolled code, and
// LLVM's compile time grows fast with it (8 queries x 128 dims took ~30 s per pipeline). q/out f32 [n_tokens][n_heads][kD]; pool layout
// kernels/kv_layout.h (block = K then V, each [kv_head][slot][kD] f16).
// Per invocation and key: kD / 2 64-bit components loaded (K and V rows), 3 kD kT kH vector
// multiply-adds, 2 kT kH exponentials.
layout(local_size_x_id = 3) in;
layout(std430, set = 0, binding = 0) readonly buffer KV { u64vec4 kv[]; };  // 16 halves per element
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { u64vec4 q8[]; };   // 8 floats per element
layout(std430, set = 0, binding = 3) writeonly buffer O { vec4 o4[]; };
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint n_heads; uint start_pos; uint n_tokens; float scale; uint group;
  uint n_splits; uint split_len;
} pc;

layout(constant_id = 0) const uint kD = 128u;  // head_dim, a multiple of 16, <= 256
layout(constant_id = 1) const uint kH = 2u;    // query heads per invocation (divides pc.group)
layout(constant_id = 2) const uint kT = 4u;    // query tokens per invocation
layout(constant_id = 3) const uint kLanes = 8u;  // invocations per workgroup (local_size_x)
const uint kMaxQ = 8u, kMaxD = 256u;
const uint kQ = kT * kH;  // queries per invocation, <= kMaxQ

float qv[kMaxQ][kMaxD];  // pre-scaled queries
float ov[kMaxQ][kMaxD];  // unnormalised outputs

vec4 f4(uint64_t a, uint64_t b) { return uintBitsToFloat(uvec4(unpackUint2x32(a), unpackUint2x32(b))); }
vec4 h4(uint64_t a) {
  const uvec2 u = unpackUint2x32(a);
  return vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
}

void main() {
  const uint head0 = gl_WorkGroupID.y * kH, kvh = head0 / pc.group;
  const uint tok0 = (gl_WorkGroupID.x * kLanes + gl_LocalInvocationID.x) * kT;
  uint tok[kT];
  for (uint t = 0u; t < kT; ++t) tok[t] = min(tok0 + t, pc.n_tokens - 1u);  // clamped: computed, not stored
  // Keys 0 .. kend - 1: up to the workgroup's last token (uniform).
  const uint kend = pc.start_pos + min((gl_WorkGroupID.x + 1u) * kLanes * kT, pc.n_tokens);

  float m[kMaxQ], l[kMaxQ];
  for (uint t = 0u; t < kT; ++t) {
    for (uint g = 0u; g < kH; ++g) {
      const uint i = t * kH + g, qb = ((tok[t] * pc.n_heads + head0 + g) * kD) >> 3;
      for (uint d = 0u; d < kD / 8u; ++d) {
        const u64vec4 v = q8[qb + d];
        const vec4 a = f4(v.x, v.y) * pc.scale, b = f4(v.z, v.w) * pc.scale;
        for (uint e = 0u; e < 4u; ++e) {
          qv[i][8u * d + e] = a[e];
          qv[i][8u * d + 4u + e] = b[e];
        }
      }
      for (uint d = 0u; d < kD; ++d) ov[i][d] = 0.0;
      m[i] = -1.0 / 0.0;
      l[i] = 0.0;
    }
  }

  const uint half_block = pc.block_size * pc.n_kv_heads * kD;  // halves
  for (uint b = 0u; b * pc.block_size < kend; ++b) {
    const uint blk = uint(table[b]);
    const uint kbase = blk * 2u * half_block + kvh * pc.block_size * kD;  // halves, K of slot 0
    const uint n = min(pc.block_size, kend - b * pc.block_size);
    for (uint s = 0u; s < n; ++s) {
      const uint p = b * pc.block_size + s;
      const uint ko = (kbase + s * kD) >> 4, vo = (kbase + half_block + s * kD) >> 4;
      float sc[kMaxQ];
      for (uint i = 0u; i < kQ; ++i) sc[i] = 0.0;
      for (uint c = 0u; c < kD / 16u; ++c) {
        const u64vec4 kk = kv[ko + c];
        const vec4 k4[4] = vec4[4](h4(kk.x), h4(kk.y), h4(kk.z), h4(kk.w));
        for (uint i = 0u; i < kQ; ++i) {
          float a = sc[i];
          for (uint e = 0u; e < 16u; ++e) a = fma(qv[i][16u * c + e], k4[e >> 2][e & 3u], a);
          sc[i] = a;
        }
      }
      float w[kMaxQ], corr[kMaxQ];
      for (uint t = 0u; t < kT; ++t) {
        const bool visible = p <= pc.start_pos + tok[t];
        for (uint g = 0u; g < kH; ++g) {
          const uint i = t * kH + g;
          const float x = visible ? sc[i] : -1.0 / 0.0;
          const float mn = max(m[i], x);  // finite: key 0 is visible to every query
          corr[i] = exp(m[i] - mn);
          w[i] = exp(x - mn);
          l[i] = l[i] * corr[i] + w[i];
          m[i] = mn;
        }
      }
      for (uint c = 0u; c < kD / 16u; ++c) {
        const u64vec4 vv = kv[vo + c];
        const vec4 v4[4] = vec4[4](h4(vv.x), h4(vv.y), h4(vv.z), h4(vv.w));
        for (uint i = 0u; i < kQ; ++i) {
          for (uint e = 0u; e < 16u; ++e) ov[i][16u * c + e] = fma(w[i], v4[e >> 2][e & 3u], ov[i][16u * c + e] * corr[i]);
        }
      }
    }
  }

  for (uint t = 0u; t < kT; ++t) {
    if (tok0 + t >= pc.n_tokens) break;
    for (uint g = 0u; g < kH; ++g) {
      const uint i = t * kH + g, ob = ((tok[t] * pc.n_heads + head0 + g) * kD) >> 2;
      const float inv = 1.0 / l[i];
      for (uint d = 0u; d < kD / 4u; ++d) {
        o4[ob + d] = vec4(ov[i][4u * d], ov[i][4u * d + 1u], ov[i][4u * d + 2u], ov[i][4u * d + 3u]) * inv;
      }
    }
  }
}
