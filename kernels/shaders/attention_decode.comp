#version 460
// Paged causal grouped-query attention for a few query tokens (decode, n_tokens < the prefill kernels'
// threshold): one workgroup of 128 per (key split, KV head, query token) serves all G query heads that
// share the KV head, so each K and V row is read once for G heads, and the key walk is split into
// enough slices to fill the GPU (attention.cpp picks n_splits; attention_combine.comp merges them).
//   1. scores: invocation t takes keys k0 + t, k0 + t + 128, ...: its K row (head_dim halves, 16-byte
//      loads) against the G query rows staged in shared memory (broadcast reads); s = q·k · scale.
//   2. per head: the slice's max M and Σ e^(s − M), one (max, sum) pair tree in shared memory; the
//      scores become weights p = e^(s − M) in place.
//   3. outputs: invocation t owns dims 2 (t % (D/2)) .. +1 of heads t / (D/2), + 128/(D/2), ...: one
//      32-bit V load (two halves, coalesced across the invocations) per key, weights from shared memory;
//      8 keys' loads in flight at once (their row offsets were kept in shared memory by phase 1).
// n_splits == 1: o = acc / l. Otherwise the unnormalised acc, M and l go to `part` (same layout as
// attention_paged.comp; a slice past the last key writes l = 0, m = -inf).
// Specialized on G and head_dim (constant ids 0 and 1), so the per-head loops unroll and the
// accumulators stay in registers. Limits (attention.cpp checks): G in 1, 2, 4, 8, 16; head_dim a power
// of two from 8 to 256; G · head_dim <= kQ; G · split_len <= kS.
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint kG = 4u;    // query heads per KV head
layout(constant_id = 1) const uint kD = 128u;  // head_dim
// Replay (engine decode steps recorded once): the first query's position is positions[start_pos]
// (binding 5, the engine's per-token positions), not start_pos itself.
layout(constant_id = 2) const bool kStartFromBuffer = false;
layout(std430, set = 0, binding = 0) readonly buffer KVq { uvec4 kv4[]; };
layout(std430, set = 0, binding = 0) readonly buffer KVw { uint kv[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { vec4 q4[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { float o[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Part { float part[]; };
layout(std430, set = 0, binding = 5) readonly buffer Pos { int positions[]; };
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint head_dim; uint n_heads; uint start_pos; uint n_tokens; float scale;
  uint n_splits; uint split_len;
} pc;

const uint kWG = 128u;
const uint kQ = 2048u;   // staged query values: G · head_dim
const uint kS = 2048u;   // scores: G · split_len
shared vec4 qs[kQ / 4u];
shared float sc[kS];
shared uint voff[kS];  // per key of the slice: the word offset of its V row (phase 1 computes it)
shared vec2 red[kWG];

// Offset in halves of K[p] for KV head kvh; V[p] is half a block further.
uint k_offset(uint p, uint kvh) {
  const uint blk = uint(table[p / pc.block_size]);
  const uint half_block = pc.block_size * pc.n_kv_heads * pc.head_dim;
  return blk * 2u * half_block + (kvh * pc.block_size + p % pc.block_size) * pc.head_dim;
}

// (max, sum of e^(s - max)) pairs: the merge of two.
vec2 merge(vec2 a, vec2 b) {
  const float m = max(a.x, b.x);
  if (m == -1.0 / 0.0) return vec2(m, 0.0);
  return vec2(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

void main() {
  const uint split = gl_WorkGroupID.x, kvh = gl_WorkGroupID.y, tok = gl_WorkGroupID.z, t = gl_LocalInvocationID.x;
  const uint G = kG, D = kD, D4 = D / 4u;
  const uint start = kStartFromBuffer ? uint(positions[pc.start_pos]) : pc.start_pos;
  const uint keys = start + tok + 1u;  // causal: keys 0 .. start + tok
  const uint k0 = split * pc.split_len, k1 = min(keys, k0 + pc.split_len);
  const uint n = k1 > k0 ? k1 - k0 : 0u;
  const uint h0 = kvh * G;  // first query head of the group
  // Stage the G query rows.
  for (uint i = t; i < G * D4; i += kWG) qs[i] = q4[(tok * pc.n_heads + h0) * D4 + i];
  barrier();
  // 1. Scores.
  for (uint j = t; j < n; j += kWG) {
    const uint ko = k_offset(k0 + j, kvh);
    voff[j] = (ko + pc.block_size * pc.n_kv_heads * pc.head_dim) >> 1u;
    const uint off = ko >> 3u;  // in uvec4 (8 halves)
    float s[kG];
    [[unroll]] for (uint g = 0u; g < kG; ++g) s[g] = 0.0;
    [[unroll]] for (uint i = 0u; i < kD / 8u; ++i) {
      const uvec4 w = kv4[off + i];
      const vec4 ka = vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
      const vec4 kb = vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
      [[unroll]] for (uint g = 0u; g < kG; ++g) s[g] += dot(qs[g * D4 + 2u * i], ka) + dot(qs[g * D4 + 2u * i + 1u], kb);
    }
    [[unroll]] for (uint g = 0u; g < kG; ++g) sc[g * pc.split_len + j] = s[g] * pc.scale;
  }
  barrier();
  // 2. Per head: max and Σ e^(s − max) over the slice. L = kWG / G invocations per head (G divides
  // kWG: attention.cpp passes G in 1, 2, 4, 8, 16).
  const uint L = kWG / G, g_me = t / L, lane = t % L;
  vec2 acc2 = vec2(-1.0 / 0.0, 0.0);
  for (uint j = lane; j < n; j += L) acc2 = merge(acc2, vec2(sc[g_me * pc.split_len + j], 1.0));
  red[t] = acc2;
  barrier();
  for (uint r = L / 2u; r > 0u; r >>= 1u) {
    if (lane < r) red[t] = merge(red[t], red[t + r]);
    barrier();
  }
  // Weights in place: p = e^(s − M_g).
  for (uint j = lane; j < n; j += L) {
    const float M = red[g_me * L].x;
    sc[g_me * pc.split_len + j] = exp(sc[g_me * pc.split_len + j] - M);
  }
  barrier();
  // 3. Outputs: dims 2 dp, 2 dp + 1 of heads g = g0, g0 + gs, ...
  // kNH = the heads each invocation owns (gs = invocations' head stride).
  const uint half_d = kD / 2u, gs = kWG / half_d, kNH = (kG + gs - 1u) / gs;
  const uint dp = t % half_d, g0 = t / half_d;
  float a0[kNH], a1[kNH];
  [[unroll]] for (uint i = 0u; i < kNH; ++i) {
    a0[i] = 0.0;
    a1[i] = 0.0;
  }
  {
    // 8 keys per round: their V loads are issued together (offsets from shared memory), then used.
    for (uint j0 = 0u; j0 < n; j0 += 8u) {
      vec2 v[8];
      [[unroll]] for (uint u = 0u; u < 8u; ++u) v[u] = j0 + u < n ? unpackHalf2x16(kv[voff[j0 + u] + dp]) : vec2(0.0);
      [[unroll]] for (uint u = 0u; u < 8u; ++u) {
        if (j0 + u >= n) break;
        [[unroll]] for (uint i = 0u; i < kNH; ++i) {
          const uint g = g0 + i * gs;
          if (g >= kG) break;
          const float p = sc[g * pc.split_len + j0 + u];
          a0[i] += p * v[u].x;
          a1[i] += p * v[u].y;
        }
      }
    }
    [[unroll]] for (uint i = 0u; i < kNH; ++i) {
      const uint g = g0 + i * gs;
      if (g >= kG) break;
      const vec2 ml = red[g * L];
      const uint h = h0 + g;
      if (pc.n_splits == 1u) {
        o[(tok * pc.n_heads + h) * D + 2u * dp] = a0[i] / ml.y;
        o[(tok * pc.n_heads + h) * D + 2u * dp + 1u] = a1[i] / ml.y;
      } else {
        const uint pbase = ((tok * pc.n_heads + h) * pc.n_splits + split) * (D + 2u);
        part[pbase + 2u * dp] = a0[i];
        part[pbase + 2u * dp + 1u] = a1[i];
        if (dp == 0u) {
          part[pbase + D] = ml.x;  // -inf for a slice past the last key (l = 0)
          part[pbase + D + 1u] = ml.y;
        }
      }
    }
  }
}
