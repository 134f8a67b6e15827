// Decode matvec, batch 1..8, the "q8" form (kernels/ops/matvec.h, TROVE_MATVEC=q8): activations
// quantized to int8 once per workgroup, weight codes combined with them by integer dot products
// (dotPacked4x8EXT: 4 multiply-adds per instruction, 4x fewer activation bytes per row than f32).
// Weight types Q4_K, Q5_K, Q6_K and Q8_0 (the host sends other types to the direct form).
//
// Activations. Each workgroup stages x̂ = x·norm_w of every batch column in shared memory as int8
// with one f32 scale per 32 values (d = max|x̂|/127, q = round(x̂/d)) and, for the K-quant min term,
// d·Σq per 16 values; Σ x² per column (RMSNorm prologue) is reduced over the workgroup while staging,
// inv_rms applied to the row sums at the end (it factors out of the dot product). The staging reads x
// once per workgroup from L2, so workgroups walk several row blocks (blk, blk + grid, ...) with x
// staged once — the host launches a few per SM.
//
// Work split. A row group is one subgroup (kG lanes) owning kR rows of one matrix (SwiGLU: kR gate
// rows + the same kR up rows, slots kR..); lanes stride over "parts" of the rows, the same part of
// every slot, so each activation load serves kNS rows:
//   Q4_K/Q5_K  part m (0..7) of a super-block: qs bytes 16m..16m+15 = values 64j+16h+i (low nibbles,
//              sub-block 2j) and 64j+32+16h+i (high nibbles, sub-block 2j+1), j = m/2, h = m%2, i < 16.
//   Q6_K       part p (0..15): ql bytes 8p.. = values 128n+32r+8l+i and +64 (n = p/8, r = p/4%2,
//              l = p%4, i < 8); codes q−32 made signed bytes, so no min term. With kQ6Wide (the host's default;
//              TROVE_MATVEC_Q6_WIDE=0 turns it off) part w (0..7) of 32 values, 16-byte runs (part_q6k_wide).
//   Q8_0       part q (0..3) of a 34-byte block: its int8 values 8q..8q+7.
// Rows are reduced with subgroupAdd; no barrier after the staging.
//
// Split rows (kSplit > 1, TROVE_MATVEC_Q8_SPLIT): kSplit subgroups share a row group's rows, subgroup
// sp walking parts sp·kG + lane, + kSplit·kG, ...; their subgroup sums meet in shared memory (one
// barrier) and are added in sp order. A workgroup then owns kSplit times fewer rows, so calls of
// few rows (the 8B's o and ffn_down: 128 blocks of 32 rows for 264 workgroups) fill the GPU, and each
// lane walks kSplit times fewer parts of a row one after the other.
//
// MV_Q8_GLOBAL (matvec_q8p.comp, TROVE_MATVEC=q8p): the same kernel reading x̂ already quantized by
// matvec_q8_quant.comp into a scratch slot (binding 0) through the caches instead of
// staging it: no shared memory, no barrier, one row block per workgroup — for any cols. The staged
// layout, the quantization and the per-type parts: matvec_q8_parts.glsl (the MoE q8 kernels share them).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_integer_dot_product : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint kG = 32u;           // lanes per row group (the subgroup size)
layout(constant_id = 2) const uint kNB = 1u;           // batch columns
layout(constant_id = 3) const uint kR = 2u;            // rows per row group (per matrix)
layout(constant_id = 4) const uint kSwiGlu = 0u;       // 1: slots kR.. are the up rows of slots 0..kR-1
layout(constant_id = 5) const uint kTileVals = 4096u;  // staged values per batch column (>= cols, multiple of 256)
layout(constant_id = 6) const uint kMats = 3u;         // weight bindings in use (1..3)
layout(constant_id = 7) const uint kType0 = 12u;       // weight type id of each matrix (ggml ids)
layout(constant_id = 8) const uint kType1 = 12u;
layout(constant_id = 9) const uint kType2 = 12u;
layout(constant_id = 10) const uint kQ6Wide = 0u;       // 1: Q6_K rows in 32-value parts (part_q6k_wide)
layout(constant_id = 11) const uint kSplit = 1u;        // subgroups sharing one row group's rows (1, 2, 4, 8)
layout(constant_id = 12) const uint kScatter = 0u;      // 1: row sums by a reduce-scatter (TROVE_MATVEC_REDUCE=scatter)
#define MV_Q6_WIDE
const uint kWG = gl_WorkGroupSize.x;
const uint kGroups = kWG / kG;
const uint kRG = kGroups / kSplit;  // row groups per workgroup
const uint kNS = kR * (kSwiGlu + 1u);
const uint kTypeMask = (1u << kType0) | (1u << kType1) | (1u << kType2);

layout(std430, set = 0, binding = 0) readonly buffer X { vec4 x4[]; };
layout(std430, set = 0, binding = 1) readonly buffer NW { vec4 nw4[]; };
#include "matvec_io.glsl"
// matvec_q8_parts.glsl's weight reads.
uvec4 wq(uint m, uint i) { return mv_wq(m, i); }
uint ww(uint m, uint i) { return mv_ww(m, i); }

const uint kQ8Cols = kNB;  // matvec_q8_parts.glsl: one staged column per batch column
uint q8_col(uint b) { return b; }
#ifndef MV_Q8_GLOBAL
shared float sssq[kGroups * kNB];  // per-subgroup Σ x² of each column
#endif
shared float ssplit[kSplit > 1u ? kGroups * kR * kNB * 2u : 1u];  // kSplit > 1: each subgroup's sums (gate, then up)

#ifndef MV_Q8_GLOBAL
#define MV_STAGE_KNOBS
bool g_no_loads = false;  // flags & 4 (TROVE_MATVEC_Q8_STAGE=noloads, a measurement): stage constants, read no x
#endif
#include "matvec_q8_parts.glsl"

// kScatter: the kNS·kNB row sums acc[b][s] (value v = s·kNB + b, padded with zeros to kNP, a power of
// two) summed over the kG lanes of the row group by a reduce-scatter: at the level of mask kG/2, kG/4,
// … a lane holding c >= 2 values keeps the lower half (mask bit clear) or the upper half (set) and
// adds its partner's copy of that half; once it holds one value the remaining levels add it to its
// partner's. That is kNP/2 + kNP/4 + … shuffles where subgroupAdd of each value takes kNP·log2(kG)
// (at batch 8, 2 rows: 16 + 0 against 80), and every value is the xor-butterfly sum of the same
// partials in the same tree whatever kNB is, so a column keeps the same bits at every batch (both
// forms of the call use the same reduction). Value v ends in lanes (v / kRV)·(kG / kScat) + …, slot
// v % kRV of red[].
const uint kNV = kNS * kNB;
const uint kNP = kNV <= 1u ? 1u : kNV <= 2u ? 2u : kNV <= 4u ? 4u : kNV <= 8u ? 8u : kNV <= 16u ? 16u : kNV <= 32u ? 32u : 64u;
const uint kScat = kNP < kG ? kNP : kG;  // lanes that end with distinct values
const uint kRV = kNP / kScat;            // values a lane holds after the scatter
float red[kNP];
void reduce_scatter_sums() {
  const uint lane = gl_SubgroupInvocationID;
  [[unroll]] for (uint v = 0u; v < kNP; ++v) red[v] = v < kNV ? acc[v % kNB][v / kNB] : 0.0;
  uint c = kNP;
  [[unroll]] for (uint mask = kG / 2u; mask > 0u; mask >>= 1u) {
    if (c >= 2u) {
      const bool upper = (lane & mask) != 0u;
      const uint h = c / 2u;
      [[unroll]] for (uint i = 0u; i < kNP / 2u; ++i) {
        if (i >= h) break;
        const float keep = upper ? red[i + h] : red[i], send = upper ? red[i] : red[i + h];
        red[i] = keep + subgroupShuffleXor(send, mask);
      }
      c = h;
    } else {
      red[0] += subgroupShuffleXor(red[0], mask);
    }
  }
}
uint scatter_lane(uint v) { return (v / kRV) * (kG / kScat); }
// Value v's sum from the lane that holds it, on every lane (a shuffle; v is a compile-time index).
float scatter_value(uint v) { return subgroupShuffle(red[v % kRV], scatter_lane(v)); }

void main() {
  const uint blocks = pc.wg_end[pc.n_mats - 1u];
  const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * pc.groups_x;
  if (wg >= blocks) return;  // grid padding: whole workgroups, before the barrier
  const uint lid = gl_LocalInvocationID.x, group = lid / kG, lane = lid % kG;
  const uint rg = group % kRG, sp = group / kRG;  // row group, and which share of its parts
  const bool norm = (pc.flags & 1u) != 0u, add = (pc.flags & 2u) != 0u;

  float inv[kNB];
#ifdef MV_Q8_GLOBAL
  [[unroll]] for (uint b = 0u; b < kNB; ++b) inv[b] = norm ? gi[kNB * kTileVals * 13u / 32u + b] : 1.0;
#else
  // Stage x̂ once for all the blocks this workgroup walks.
  // flags & 8 (TROVE_MATVEC_Q8_STAGE=skip, a measurement with wrong results): no staging at all.
  const uint nblk = (pc.flags & 8u) != 0u ? 0u : pc.cols >> 5u;
  g_no_loads = (pc.flags & 4u) != 0u;
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    float ssq = 0.0;
    // Half a block per invocation, pairs of adjacent invocations per block (stage_half): at 4096
    // columns every invocation works, where one per block left half of them idle.
    for (uint h = lid; h < 2u * nblk; h += kWG) ssq += stage_half(b, b * (pc.cols >> 2u), h, norm, 1.0);
    ssq = subgroupAdd(ssq);
    if (lane == 0u) sssq[group * kNB + b] = ssq;
  }
  barrier();
  [[unroll]] for (uint b = 0u; b < kNB; ++b) {
    inv[b] = 1.0;
    if (norm) {
      float t = 0.0;
      for (uint g = 0u; g < kGroups; ++g) t += sssq[g * kNB + b];
      inv[b] = inversesqrt(t / float(pc.cols) + pc.eps);
    }
  }
#endif

  for (uint blk = wg; blk < blocks; blk += pc.grid) {
    const uint m = blk < pc.wg_end.x ? 0u : (blk < pc.wg_end.y ? 1u : 2u);
    const uint blk0 = m == 0u ? 0u : pc.wg_end[m - 1u];
    const uint r0 = ((blk - blk0) * kRG + rg) * kR;
    bool lv[kNS];
    [[unroll]] for (uint s = 0u; s < kNS; ++s) {
      const uint mat = kSwiGlu != 0u ? s / kR : m;
      const uint r = r0 + s % kR;
      lv[s] = r < pc.rows[mat];
      live[s] = lv[s];
      row_off[s] = lv[s] ? r * pc.row_bytes[mat] : 0u;
      [[unroll]] for (uint b = 0u; b < kNB; ++b) acc[b][s] = 0.0;
    }
    if (kSwiGlu == 0u) {
      if (kMats == 1u || m == 0u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = 0u;
        walk_from(kType0, sp * kG + lane, kSplit * kG, pc.cols);
      } else if (kMats == 2u || m == 1u) {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = 1u;
        walk_from(kType1, sp * kG + lane, kSplit * kG, pc.cols);
      } else {
        [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = 2u;
        walk_from(kType2, sp * kG + lane, kSplit * kG, pc.cols);
      }
    } else {
      [[unroll]] for (uint s = 0u; s < kNS; ++s) slot_mat[s] = s / kR;
      if (kType0 == kType1) {
        walk_from(kType0, sp * kG + lane, kSplit * kG, pc.cols);
      } else {  // gate and up of different types: one pass each
        [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = lv[s] && s < kR;
        walk_from(kType0, sp * kG + lane, kSplit * kG, pc.cols);
        [[unroll]] for (uint s = 0u; s < kNS; ++s) live[s] = lv[s] && s >= kR;
        walk_from(kType1, sp * kG + lane, kSplit * kG, pc.cols);
      }
    }
    if (kScatter != 0u) reduce_scatter_sums();
    if (kScatter != 0u && kSplit == 1u) {
      // The lane holding a gate or output sum writes it (the up sum shuffled to it).
      [[unroll]] for (uint s = 0u; s < kR; ++s) {
        [[unroll]] for (uint b = 0u; b < kNB; ++b) {
          const uint v = s * kNB + b;
          const float u = kSwiGlu != 0u ? scatter_value(v + kR * kNB) * inv[b] : 0.0;
          const uint r = r0 + s;
          if (gl_SubgroupInvocationID != scatter_lane(v) || r >= pc.rows[m]) continue;
          mv_write(m, b * pc.y_stride[m] + r, red[v % kRV] * inv[b], u, add);
        }
      }
    } else if (kSplit == 1u) {
      // Every lane gets every total; lane t writes outputs t, t + kG, ... (slot-major over columns).
      [[unroll]] for (uint s = 0u; s < kR; ++s) {
        [[unroll]] for (uint b = 0u; b < kNB; ++b) {
          const float v = subgroupAdd(acc[b][s]) * inv[b];
          const float u = kSwiGlu != 0u ? subgroupAdd(acc[b][s + kR]) * inv[b] : 0.0;
          const uint r = r0 + s;
          if (lane != (s * kNB + b) % kG || r >= pc.rows[m]) continue;
          mv_write(m, b * pc.y_stride[m] + r, v, u, add);
        }
      }
    } else {
      // Subgroup sums to shared memory; share 0 of each row group adds them in share order.
      const uint kU = kGroups * kR * kNB;  // offset of the up sums
      if (kScatter != 0u) {
        [[unroll]] for (uint v = 0u; v < kNV; ++v) {  // slot v / kNB (up slots kR..), column v % kNB
          const uint s = v / kNB, b = v % kNB;
          const uint i = ((sp * kRG + rg) * kR + s % kR) * kNB + b;
          if (gl_SubgroupInvocationID == scatter_lane(v)) ssplit[(s >= kR ? kU : 0u) + i] = red[v % kRV];
        }
      } else {
        [[unroll]] for (uint s = 0u; s < kR; ++s) {
          [[unroll]] for (uint b = 0u; b < kNB; ++b) {
            const float v = subgroupAdd(acc[b][s]);
            const float u = kSwiGlu != 0u ? subgroupAdd(acc[b][s + kR]) : 0.0;
            const uint i = ((sp * kRG + rg) * kR + s) * kNB + b;
            if (lane == 0u) {
              ssplit[i] = v;
              if (kSwiGlu != 0u) ssplit[kU + i] = u;
            }
          }
        }
      }
      barrier();
      if (sp == 0u) {
        [[unroll]] for (uint s = 0u; s < kR; ++s) {
          [[unroll]] for (uint b = 0u; b < kNB; ++b) {
            const uint r = r0 + s;
            if (lane != (s * kNB + b) % kG || r >= pc.rows[m]) continue;
            float v = 0.0, u = 0.0;
            for (uint q = 0u; q < kSplit; ++q) {
              const uint i = ((q * kRG + rg) * kR + s) * kNB + b;
              v += ssplit[i];
              if (kSwiGlu != 0u) u += ssplit[kU + i];
            }
            mv_write(m, b * pc.y_stride[m] + r, v * inv[b], u * inv[b], add);
          }
        }
      }
      barrier();  // before the next block's sums overwrite these
    }
  }
}
