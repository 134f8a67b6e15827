#version 460
// Decode matvec chain (kernels/ops/matvec_chain.h): up to kMaxSteps batch-1 q8 matvecs, each reading
// what the one before wrote, in ONE dispatch whose workgroups meet at a grid barrier between steps —
// the 8B's attention output, FFN gate/up and FFN down of a layer without two dispatch boundaries.
// Each step is what matvec_q8.comp computes for the same call with one subgroup per row group
// (kSplit 1), the same rows per group and workgroup size: the same functions (matvec_q8_parts.glsl)
// on the same lanes, so the same bits.
//
// Step k (pc.step[k]): a = (cols, flags, vectors, weights), b = (types, rows, row_bytes 0, row_bytes 1)
//   flags    bit 0 RMSNorm prologue, bit 1 add into the output, bit 2 SwiGLU (weights 0 = gate, 1 =
//            up), bits 8..11 rows per row group (1 or 2; SwiGLU: 1)
//   vectors  input | norm_w << 4 | output << 8: bindings 0..3 (f32 vectors, vec4-aligned)
//   weights  weight 0 | weight 1 << 4: bindings 4..7;  types: ggml type id of weight 0 | weight 1 << 8
// The grid barrier (as chain_probe.comp): every workgroup must be resident at once (the op launches
// one per SM on a GPU, one on a CPU device); ctl[0] arrivals, ctl[1] exits (the last one out resets
// both), in device memory; report[0], in host-visible memory, counts waits that gave up after pc.spin
// polls (the op's timeouts(): the results are wrong). The spin reads device memory only.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_integer_dot_product : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;             // lanes per row group (the subgroup size)
layout(constant_id = 2) const uint kTileVals = 4096u;    // staged values (>= every step's cols, multiple of 256)
layout(constant_id = 3) const uint kTypeMask = 4096u;    // bit t: code for weight type t compiled in
layout(constant_id = 4) const uint kQ6Wide = 0u;         // 1: Q6_K rows in 32-value parts
#define MV_Q6_WIDE
const uint kNB = 1u, kNS = 2u, kQ8Cols = 1u;
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kMaxSteps = 3u;

layout(std430, set = 0, binding = 0) coherent buffer V0 { vec4 v0_4[]; };
layout(std430, set = 0, binding = 0) coherent buffer V0f { float v0[]; };
layout(std430, set = 0, binding = 1) coherent buffer V1 { vec4 v1_4[]; };
layout(std430, set = 0, binding = 1) coherent buffer V1f { float v1[]; };
layout(std430, set = 0, binding = 2) coherent buffer V2 { vec4 v2_4[]; };
layout(std430, set = 0, binding = 2) coherent buffer V2f { float v2[]; };
layout(std430, set = 0, binding = 3) coherent buffer V3 { vec4 v3_4[]; };
layout(std430, set = 0, binding = 3) coherent buffer V3f { float v3[]; };
layout(std430, set = 0, binding = 4) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 4) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 5) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 5) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 6) readonly buffer W2q { uvec4 w2q[]; };
layout(std430, set = 0, binding = 6) readonly buffer W2w { uint w2w[]; };
layout(std430, set = 0, binding = 7) readonly buffer W3q { uvec4 w3q[]; };
layout(std430, set = 0, binding = 7) readonly buffer W3w { uint w3w[]; };
layout(std430, set = 0, binding = 8) volatile coherent buffer C { uint ctl[]; };       // device-local
layout(std430, set = 0, binding = 9) coherent buffer R { uint report[]; };          // host-visible

layout(push_constant) uniform P {
  uint n_steps; uint grid; uint spin; float eps;
  uvec4 step[kMaxSteps * 2u];  // step k: [2k] = a, [2k + 1] = b (see the header)
} pc;

uint q8_col(uint b) { return b; }
shared float sssq[kGroups];  // per-subgroup Σ x²

uvec4 wq(uint m, uint i) {
  if (m == 0u) return w0q[i];
  if (m == 1u) return w1q[i];
  if (m == 2u) return w2q[i];
  return w3q[i];
}
uint ww(uint m, uint i) {
  if (m == 0u) return w0w[i];
  if (m == 1u) return w1w[i];
  if (m == 2u) return w2w[i];
  return w3w[i];
}
vec4 vec_at4(uint v, uint i) {
  if (v == 0u) return v0_4[i];
  if (v == 1u) return v1_4[i];
  if (v == 2u) return v2_4[i];
  return v3_4[i];
}
float vec_at(uint v, uint i) {
  if (v == 0u) return v0[i];
  if (v == 1u) return v1[i];
  if (v == 2u) return v2[i];
  return v3[i];
}
void vec_set(uint v, uint i, float x) {
  if (v == 0u) v0[i] = x;
  else if (v == 1u) v1[i] = x;
  else if (v == 2u) v2[i] = x;
  else v3[i] = x;
}

uint g_in = 0u, g_norm = 0u;  // the step's input and norm_w vectors (stage_half reads them)
#define MV_X4(i) vec_at4(g_in, i)
#define MV_NW4(i) vec_at4(g_norm, i)
#include "matvec_q8_parts.glsl"

void run_step(uint k, uint wg, uint group, uint lane) {
  const uvec4 a = pc.step[2u * k], b = pc.step[2u * k + 1u];
  const uint cols = a.x;
  const bool norm = (a.y & 1u) != 0u, add = (a.y & 2u) != 0u, swiglu = (a.y & 4u) != 0u;
  const uint kR = (a.y >> 8u) & 15u;
  g_in = a.z & 15u;
  g_norm = (a.z >> 4u) & 15u;
  const uint out_v = (a.z >> 8u) & 15u;
  const uint wi0 = a.w & 15u, wi1 = (a.w >> 4u) & 15u;
  const uint t0 = b.x & 255u, t1 = (b.x >> 8u) & 255u;
  const uint rows = b.y;

  // Stage x̂ (as matvec_q8.glsl: half a block per invocation, Σ x² per subgroup, then in group order).
  const uint nblk = cols >> 5u;
  float ssq = 0.0;
  for (uint h = gl_LocalInvocationID.x; h < 2u * nblk; h += kWG) ssq += stage_half(0u, 0u, h, norm, 1.0);
  ssq = subgroupAdd(ssq);
  if (lane == 0u) sssq[group] = ssq;
  barrier();
  float inv = 1.0;
  if (norm) {
    float t = 0.0;
    for (uint g = 0u; g < kGroups; ++g) t += sssq[g];
    inv = inversesqrt(t / float(cols) + pc.eps);
  }

  const uint blocks = (rows + kGroups * kR - 1u) / (kGroups * kR);
  for (uint blk = wg; blk < blocks; blk += pc.grid) {
    const uint r0 = (blk * kGroups + group) * kR;
    bool lv[kNS];
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint r = swiglu ? r0 : r0 + s;
      lv[s] = (swiglu || s < kR) && r < rows;
      live[s] = lv[s];
      const uint rb = swiglu && s == 1u ? b.w : b.z;
      row_off[s] = lv[s] ? r * rb : 0u;
      slot_mat[s] = swiglu && s == 1u ? wi1 : wi0;
      acc[0][s] = 0.0;
    }
    if (!swiglu || t0 == t1) {
      walk_from(t0, lane, kG, cols);
    } else {  // gate and up of different types: one pass each
      live[1] = false;
      walk_from(t0, lane, kG, cols);
      live[0] = false;
      live[1] = lv[1];
      walk_from(t1, lane, kG, cols);
    }
    if (swiglu) {
      const float v = subgroupAdd(acc[0][0]) * inv;
      const float u = subgroupAdd(acc[0][1]) * inv;
      if (lane == 0u && r0 < rows) vec_set(out_v, r0, v / (1.0 + exp(-v)) * u);
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        if (s >= kR) break;
        const float v = subgroupAdd(acc[0][s]) * inv;
        const uint r = r0 + s;
        if (lane != s % kG || r >= rows) continue;
        vec_set(out_v, r, add ? vec_at(out_v, r) + v : v);
      }
    }
  }
}

void main() {
  const uint wg = gl_WorkGroupID.x, lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  for (uint k = 0u; k < pc.n_steps; ++k) {
    if (k > 0u) {
      // Grid barrier: this workgroup's writes of step k - 1 visible, counted, then wait for all.
      memoryBarrierBuffer();
      barrier();
      if (lid == 0u) {
        atomicAdd(ctl[0], 1u);
        const uint want = pc.grid * k;
        uint polls = 0u;
        while (ctl[0] < want && polls < pc.spin) ++polls;
        if (ctl[0] < want) atomicAdd(report[0], 1u);  // the host's word: touched only when a wait gives up
      }
      memoryBarrierBuffer();
      barrier();
    }
    run_step(k, wg, group, lane);
  }
  barrier();
  if (lid == 0u && atomicAdd(ctl[1], 1u) == pc.grid - 1u) {
    atomicExchange(ctl[0], 0u);  // every workgroup is past its last wait
    atomicExchange(ctl[1], 0u);
  }
}
