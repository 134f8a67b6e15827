// matvec_chain.glsl — the decode matvec chain (kernels/ops/matvec_chain.h), included by
// matvec_chain.comp (one batch column: each workgroup stages x̂ in shared memory, as matvec_q8.comp)
// and matvec_chain_b.comp (MV_CHAIN_BATCHED: 1..8 columns; each step first quantizes its input into a
// scratch slot, as matvec_q8_quant.comp, then every workgroup reads it through the caches, as
// matvec_q8p.comp — a grid barrier between the two phases). Up to four q8 matvecs, each reading
// what the ones before wrote, in ONE dispatch whose workgroups meet at grid barriers between steps —
// a dense layer's attention output, FFN gate/up and FFN down, and the next layer's fused QKV, without
// three dispatch boundaries. Each step is what matvec_q8.comp (batched: matvec_q8_quant.comp then
// matvec_q8p.comp) computes for the same call with one subgroup per row group (kSplit 1) and the same
// workgroup size: the same functions (matvec_q8_parts.glsl, matvec_q8_block.glsl) on the same lanes,
// so the same bits.
//
// The plan (binding 18, uints; plan[0] = steps, step k at 1 + 13k):
//   [0] cols  [1] flags: bit 0 RMSNorm prologue, bit 1 add into the outputs, bit 2 SwiGLU (matrix 0
//   = gate, 1 = up, the output matrix 0's), bits 8..11 rows per row group (1 or 2; SwiGLU: 1)
//   [2] input vector | norm_w vector << 4   [3] matrices (1..3; SwiGLU 2)
//   [4 + 3m] weight | output vector << 4 | ggml type << 8   [5 + 3m] rows   [6 + 3m] row bytes
// Vectors are bindings 0..7 (f32, vec4-aligned; column b of a batch at b·cols, outputs at b·rows),
// weights bindings 8..15, the batched form's scratch binding 19. Matrix m's row blocks follow matrix
// m - 1's (as matvec_q8.glsl's wg_end).
// The grid barrier (as chain_probe.comp): every workgroup must be resident at once (the op launches
// one per SM on a GPU, one on a CPU device); ctl[0] arrivals, ctl[1] exits (the last one out resets
// both), ctl[2] waits that gave up after pc.spin polls, in device memory; the last workgroup out adds
// ctl[2] to report[0], in host-visible memory (the op's timeouts(): the results are wrong). The spin
// reads device memory only.
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
#ifdef MV_CHAIN_BATCHED
layout(constant_id = 5) const uint kNB = 1u;             // batch columns (1..8)
const uint kQ8Cols = kNB;
#define MV_Q8_GLOBAL 1
#define MV_Q8_GLOBAL_BINDING 19
#define MV_Q8_GLOBAL_QUALIFIER coherent
#else
const uint kNB = 1u, kQ8Cols = 1u;
#endif
const uint kNS = 2u;
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kStepUints = 13u;

layout(std430, set = 0, binding = 0) coherent buffer V0 { vec4 v0_4[]; };
layout(std430, set = 0, binding = 0) coherent buffer V0f { float v0f[]; };
layout(std430, set = 0, binding = 1) coherent buffer V1 { vec4 v1_4[]; };
layout(std430, set = 0, binding = 1) coherent buffer V1f { float v1f[]; };
layout(std430, set = 0, binding = 2) coherent buffer V2 { vec4 v2_4[]; };
layout(std430, set = 0, binding = 2) coherent buffer V2f { float v2f[]; };
layout(std430, set = 0, binding = 3) coherent buffer V3 { vec4 v3_4[]; };
layout(std430, set = 0, binding = 3) coherent buffer V3f { float v3f[]; };
layout(std430, set = 0, binding = 4) coherent buffer V4 { vec4 v4_4[]; };
layout(std430, set = 0, binding = 4) coherent buffer V4f { float v4f[]; };
layout(std430, set = 0, binding = 5) coherent buffer V5 { vec4 v5_4[]; };
layout(std430, set = 0, binding = 5) coherent buffer V5f { float v5f[]; };
layout(std430, set = 0, binding = 6) coherent buffer V6 { vec4 v6_4[]; };
layout(std430, set = 0, binding = 6) coherent buffer V6f { float v6f[]; };
layout(std430, set = 0, binding = 7) coherent buffer V7 { vec4 v7_4[]; };
layout(std430, set = 0, binding = 7) coherent buffer V7f { float v7f[]; };
layout(std430, set = 0, binding = 8) readonly buffer W0q { uvec4 w0q[]; };
layout(std430, set = 0, binding = 8) readonly buffer W0w { uint w0w[]; };
layout(std430, set = 0, binding = 9) readonly buffer W1q { uvec4 w1q[]; };
layout(std430, set = 0, binding = 9) readonly buffer W1w { uint w1w[]; };
layout(std430, set = 0, binding = 10) readonly buffer W2q { uvec4 w2q[]; };
layout(std430, set = 0, binding = 10) readonly buffer W2w { uint w2w[]; };
layout(std430, set = 0, binding = 11) readonly buffer W3q { uvec4 w3q[]; };
layout(std430, set = 0, binding = 11) readonly buffer W3w { uint w3w[]; };
layout(std430, set = 0, binding = 12) readonly buffer W4q { uvec4 w4q[]; };
layout(std430, set = 0, binding = 12) readonly buffer W4w { uint w4w[]; };
layout(std430, set = 0, binding = 13) readonly buffer W5q { uvec4 w5q[]; };
layout(std430, set = 0, binding = 13) readonly buffer W5w { uint w5w[]; };
layout(std430, set = 0, binding = 14) readonly buffer W6q { uvec4 w6q[]; };
layout(std430, set = 0, binding = 14) readonly buffer W6w { uint w6w[]; };
layout(std430, set = 0, binding = 15) readonly buffer W7q { uvec4 w7q[]; };
layout(std430, set = 0, binding = 15) readonly buffer W7w { uint w7w[]; };
layout(std430, set = 0, binding = 16) volatile coherent buffer C { uint ctl[]; };  // device-local
layout(std430, set = 0, binding = 17) coherent buffer R { uint report[]; };       // host-visible
layout(std430, set = 0, binding = 18) readonly buffer Plan { uint plan[]; };
#ifdef MV_CHAIN_BATCHED
layout(std430, set = 0, binding = 19) coherent buffer QQ { uvec4 q4w[]; };  // the scratch, written
layout(std430, set = 0, binding = 19) coherent buffer QF { float qfw[]; };
#endif

// flags: bit 0 prefetch (TROVE_MATVEC_CHAIN_PREFETCH: between steps, a workgroup that has arrived reads
// its first row block of the next step into L2 while it waits); bit 1 is never set (prefetch's sink).
layout(push_constant) uniform P { uint grid; uint spin; float eps; uint flags; } pc;

uint q8_col(uint b) { return b; }
shared float sssq[kGroups];  // per-subgroup Σ x²
uint g_barriers = 0u;        // grid barriers passed so far in this dispatch

// Binding m of eight same-typed views (prefix P, suffix S: w0q .. w7q, v0_4 .. v7_4, v0f .. v7f),
// chosen by a workgroup-uniform m.
#define MV_PICK8(P, S) \
  if (m == 0u) return P##0##S[i]; \
  if (m == 1u) return P##1##S[i]; \
  if (m == 2u) return P##2##S[i]; \
  if (m == 3u) return P##3##S[i]; \
  if (m == 4u) return P##4##S[i]; \
  if (m == 5u) return P##5##S[i]; \
  if (m == 6u) return P##6##S[i]; \
  return P##7##S[i];
uvec4 wq(uint m, uint i) { MV_PICK8(w, q) }
uint ww(uint m, uint i) { MV_PICK8(w, w) }
vec4 vec_at4(uint m, uint i) { MV_PICK8(v, _4) }
float vec_at(uint m, uint i) { MV_PICK8(v, f) }
void vec_set(uint m, uint i, float x) {
  if (m == 0u) v0f[i] = x;
  else if (m == 1u) v1f[i] = x;
  else if (m == 2u) v2f[i] = x;
  else if (m == 3u) v3f[i] = x;
  else if (m == 4u) v4f[i] = x;
  else if (m == 5u) v5f[i] = x;
  else if (m == 6u) v6f[i] = x;
  else v7f[i] = x;
}

uint g_in = 0u, g_norm = 0u;  // the step's input and norm_w vectors (stage_half, quant_column read them)
#define MV_X4(i) vec_at4(g_in, i)
#define MV_NW4(i) vec_at4(g_norm, i)
#include "matvec_q8_parts.glsl"

// Grid barrier in two halves: arrive (this workgroup's writes visible, then counted) and wait (for every
// workgroup's arrival); work that reads nothing the others write may go between them.
void grid_arrive() {
  ++g_barriers;
  memoryBarrierBuffer();
  barrier();
  if (gl_LocalInvocationID.x == 0u) atomicAdd(ctl[0], 1u);
}
void grid_wait() {
  if (gl_LocalInvocationID.x == 0u) {
    const uint want = pc.grid * g_barriers;
    uint polls = 0u;
    while (ctl[0] < want && polls < pc.spin) ++polls;
    if (ctl[0] < want) atomicAdd(ctl[2], 1u);
  }
  memoryBarrierBuffer();
  barrier();
}
void grid_barrier() {
  grid_arrive();
  grid_wait();
}

#ifdef MV_CHAIN_BATCHED
// Column b of the step's input quantized into the scratch (layout of matvec_q8_parts.glsl's
// MV_Q8_GLOBAL with T = kTileVals, B = kNB): matvec_q8_quant.comp's main, the same order of sums.
void quant_column(uint b, uint cols, bool norm) {
  const uint lid = gl_LocalInvocationID.x;
  const uint T = kTileVals, B = kNB;
  float ssq = 0.0;
  for (uint h = lid; h < 2u * (cols >> 5u); h += kWG) {
    const uint k = h >> 1u, half_ = h & 1u, at = 8u * k + 4u * half_;
    vec4 v[4], n[4];
    for (uint i = 0u; i < 4u; ++i) {
      v[i] = vec_at4(g_in, b * (cols >> 2u) + at + i);
      n[i] = norm ? vec_at4(g_norm, at + i) : vec4(1.0);
    }
    const Q8Half o = q8_half(v, n, norm, 1.0);
    q4w[b * (T / 16u) + 2u * k + half_] = uvec4(o.w[0], o.w[1], o.w[2], o.w[3]);
    if (half_ == 0u) qfw[B * T / 4u + b * (T / 32u) + k] = o.d;
    qfw[B * T * 9u / 32u + b * (T / 16u) + 2u * k + half_] = o.s;
    ssq += half_ == 0u ? o.ssq : 0.0;
  }
  ssq = subgroupAdd(ssq);
  if (lid % kG == 0u) sssq[lid / kG] = ssq;
  barrier();
  if (lid == 0u) {
    float t = 0.0;
    for (uint g = 0u; g < kWG / kG; ++g) t += sssq[g];
    qfw[B * T * 13u / 32u + b] = norm ? inversesqrt(t / float(cols) + pc.eps) : 1.0;
  }
  barrier();  // before sssq is written again
}
#endif

void run_step(uint k, uint wg, uint group, uint lane) {
  const uint o = 1u + kStepUints * k;
  const uint cols = plan[o], flags = plan[o + 1u], n_mats = plan[o + 3u];
  const bool norm = (flags & 1u) != 0u, add = (flags & 2u) != 0u, swiglu = (flags & 4u) != 0u;
  const uint kR = (flags >> 8u) & 15u;
  g_in = plan[o + 2u] & 15u;
  g_norm = (plan[o + 2u] >> 4u) & 15u;

  float inv[kNB];
#ifdef MV_CHAIN_BATCHED
  // Quantize the columns into the scratch (workgroup b % grid does column b), then all read it.
  for (uint b = wg; b < kNB; b += pc.grid) quant_column(b, cols, norm);
  grid_barrier();
  [[unroll]] for (uint b = 0u; b < kNB; ++b) inv[b] = gi[kNB * kTileVals * 13u / 32u + b];
#else
  // Stage x̂ (as matvec_q8.glsl: half a block per invocation, Σ x² per subgroup, then in group order).
  const uint nblk = cols >> 5u;
  float ssq = 0.0;
  for (uint h = gl_LocalInvocationID.x; h < 2u * nblk; h += kWG) ssq += stage_half(0u, 0u, h, norm, 1.0);
  ssq = subgroupAdd(ssq);
  if (lane == 0u) sssq[group] = ssq;
  barrier();
  inv[0] = 1.0;
  if (norm) {
    float t = 0.0;
    for (uint g = 0u; g < kGroups; ++g) t += sssq[g];
    inv[0] = inversesqrt(t / float(cols) + pc.eps);
  }
#endif

  const uint per_block = kGroups * kR;
  const uint walked = swiglu ? 1u : n_mats;  // matrices whose rows are walked one after another
  uint end[3];
  uint total = 0u;
  [[unroll]] for (uint m = 0u; m < 3u; ++m) {
    if (m < walked) total += (plan[o + 5u + 3u * m] + per_block - 1u) / per_block;
    end[m] = total;
  }
  const uint md1 = plan[o + 7u], rb1 = plan[o + 9u], t1 = (md1 >> 8u) & 255u;  // SwiGLU: the up rows
  for (uint blk = wg; blk < total; blk += pc.grid) {
    const uint m = blk < end[0] ? 0u : (blk < end[1] ? 1u : 2u);
    const uint blk0 = m == 0u ? 0u : end[m - 1u];
    const uint md = plan[o + 4u + 3u * m], rows = plan[o + 5u + 3u * m], rb = plan[o + 6u + 3u * m];
    const uint out_v = (md >> 4u) & 15u, t0 = (md >> 8u) & 255u;
    const uint r0 = ((blk - blk0) * kGroups + group) * kR;
    bool lv[kNS];
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint r = swiglu ? r0 : r0 + s;
      lv[s] = (swiglu || s < kR) && r < rows;
      live[s] = lv[s];
      row_off[s] = lv[s] ? r * (swiglu && s == 1u ? rb1 : rb) : 0u;
      slot_mat[s] = (swiglu && s == 1u ? md1 : md) & 15u;
      [[unroll]] for (uint b = 0u; b < kNB; ++b) acc[b][s] = 0.0;
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
    // Every lane gets every total; lane (s·kNB + b) % kG writes (as matvec_q8.glsl).
    if (swiglu) {
      [[unroll]] for (uint b = 0u; b < kNB; ++b) {
        const float v = subgroupAdd(acc[b][0]) * inv[b];
        const float u = subgroupAdd(acc[b][1]) * inv[b];
        if (lane == b % kG && r0 < rows) vec_set(out_v, b * rows + r0, v / (1.0 + exp(-v)) * u);
      }
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) {
        if (s >= kR) break;
        [[unroll]] for (uint b = 0u; b < kNB; ++b) {
          const float v = subgroupAdd(acc[b][s]) * inv[b];
          const uint r = r0 + s;
          if (lane != (s * kNB + b) % kG || r >= rows) continue;
          vec_set(out_v, b * rows + r, add ? vec_at(out_v, b * rows + r) + v : v);
        }
      }
    }
  }
}

// Reads the weights of this workgroup's first row block of step k (its first matrix's rows; SwiGLU:
// the up rows too) and drops them, so that they are in L2 when step k starts. Changes no result.
void prefetch_step(uint k, uint wg) {
  const uint o = 1u + kStepUints * k;
  const uint flags = plan[o + 1u], kR = (flags >> 8u) & 15u, per_block = kGroups * kR;
  const bool swiglu = (flags & 4u) != 0u;
  const uint walked = swiglu ? 1u : plan[o + 3u];
  uint blk = wg, m = 0u;
  for (; m < walked; ++m) {
    const uint blocks = (plan[o + 5u + 3u * m] + per_block - 1u) / per_block;
    if (blk < blocks) break;
    blk -= blocks;
  }
  if (m >= walked) return;  // no block for this workgroup in step k
  uvec4 x = uvec4(0u);
  for (uint j = 0u; j < (swiglu ? 2u : 1u); ++j) {
    const uint mm = swiglu ? j : m;
    const uint md = plan[o + 4u + 3u * mm], rows = plan[o + 5u + 3u * mm], rb = plan[o + 6u + 3u * mm];
    const uint r0 = blk * per_block, r1 = min(r0 + per_block, rows);
    for (uint i = (r0 * rb) / 16u + gl_LocalInvocationID.x; i < (r1 * rb + 15u) / 16u; i += kWG) x ^= wq(md & 15u, i);
  }
  if ((pc.flags & 2u) != 0u && x.x == 0x9E3779B9u) ctl[3] = x.y;  // never: keeps the loads
}

void main() {
  const uint wg = gl_WorkGroupID.x, lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint steps = plan[0];
  for (uint k = 0u; k < steps; ++k) {
    if (k > 0u) {  // step k reads what step k - 1 wrote
      grid_arrive();
      if ((pc.flags & 1u) != 0u) prefetch_step(k, wg);
      grid_wait();
    }
    run_step(k, wg, group, lane);
  }
  barrier();
  if (lid == 0u && atomicAdd(ctl[1], 1u) == pc.grid - 1u) {
    atomicExchange(ctl[0], 0u);  // every workgroup is past its last wait
    atomicExchange(ctl[1], 0u);
    // Waits that gave up go to the host's word — by plain loads and stores from this one invocation
    // (no atomics on host memory), and only when there were any.
    const uint gave_up = atomicExchange(ctl[2], 0u);
    if (gave_up != 0u) report[0] = report[0] + gave_up;
  }
}
