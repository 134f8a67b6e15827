#version 460
// Paged causal grouped-query attention for a few query tokens (decode), the bandwidth form
// (TROVE_ATTENTION_DECODE=v2, attention.cpp): one workgroup of 128 per (key slice, KV head, query
// token) serves the G query heads of the KV head with an online softmax, so K and V are read once, in
// one pass, with many rows in flight:
//   - kL lanes read one K row together (16-byte loads, lane i takes 8-dim chunks i, i + kL, ...), so a
//     workgroup walks 128 / kL keys ("slots") at once, kU keys per slot per round: 2·kU·kC 16-byte
//     loads (K and V) issued before any is used.
//   - q·k: each lane's partial dot for the G heads, summed over the kL lanes by subgroup shuffles
//     (kL <= the subgroup size; attention.cpp picks kL = min(head_dim / 8, subgroup size, 16)).
//   - each slot keeps per head the running max m, the sum l of e^(s − m) and its lanes' share of
//     Σ e^(s − m) v; keys past the slice are masked before their rows are read (no NaN from
//     unwritten slots reaches a sum).
//   - the slots merge at the end: a common max per head, the slots of one subgroup summed by
//     shuffles, the subgroups into shared memory (kMergeSG, attention.cpp's default: each into a copy
//     of its own, added in subgroup order after one barrier; else one after the other).
// n_splits == 1: o = acc / l (no combine pass). Otherwise the unnormalised acc, M and l go to `part`
// ([token][head][split][head_dim + 2], what attention_combine*.comp merge; a slice past the last key
// writes l = 0, m = -inf). q is pre-multiplied by the scale.
// kPipe (TROVE_ATTENTION_PIPELINE=1, attention.cpp): a round's K and V loads are issued during the
// round before, so the rows' trip from memory overlaps the previous round's math instead of following
// it (a slice of 128 keys is 4–8 rounds).
// kRows (8; TROVE_ATTENTION_STEP=batched, attention.cpp record_decode_rows): the tokens of several
// sequences in one dispatch — grid z is a row of the step, whose position (keys = position + 1) and
// block table (an offset into the step's tables, binding 1) binding 5 gives per row:
// positions[pc.start_pos + z] and positions[pc.rows_at + z]. A token's arithmetic is that of a
// one-sequence call (same slice length, same slices; slices past its keys are empty).
// kFuse (9; TROVE_ATTENTION_COMBINE=fused, attention.cpp): no combine dispatch — each workgroup of a split
// call writes its partials, makes them visible (memoryBarrierBuffer) and counts itself done on the
// counter of its (row, head group) (binding 6, atomicAdd; row = pc.row0 + tok); the one that reads
// n_splits − 1 resets the counter to 0 and merges its heads' partials with attention_combine_v2.glsl's
// code (the same bits as the separate combine). Calls sharing counters must be separated by a barrier.
// Specialized on G (0, query heads per workgroup), head_dim (1), kL (2), kU (3), kPipe (4), kHG (6),
// kMergeSG (7), kRows (8) and kFuse (9). Limits (attention.cpp checks): G in
// 1, 2, 4, 8, 16; head_dim a power of two from 8 to 256; kL a power of two dividing head_dim / 8 and at most
// the subgroup size, whose invocations are consecutive local ids (true of NVIDIA and lavapipe).
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
layout(local_size_x = 128) in;
layout(constant_id = 0) const uint kG = 4u;    // query heads per KV head
layout(constant_id = 1) const uint kD = 128u;  // head_dim
layout(constant_id = 2) const uint kL = 16u;   // lanes per key row
layout(constant_id = 3) const uint kU = 4u;    // keys per slot per round
layout(constant_id = 4) const bool kPipe = true;  // the next round's loads issued before this round's math
// Replay (engine decode steps recorded once): the first query's position is positions[start_pos]
// (binding 5, the engine's per-token positions), not start_pos itself.
layout(constant_id = 5) const bool kStartFromBuffer = false;
// Head groups (TROVE_ATTENTION_HEAD_GROUPS, attention.cpp): the query heads of a KV head split over kHG
// workgroups of kG heads each (grid y = KV heads × kHG); each reads the KV head's rows itself. A head's
// arithmetic does not depend on the other heads of its workgroup, so its bits are the same for any kHG
// (with 2+ heads a workgroup: a one-head workgroup compiled to other bits on the H100, and the host
// never makes one where the KV head has more).
layout(constant_id = 6) const uint kHG = 1u;
// kMergeSG (TROVE_ATTENTION_MERGE=parallel, attention.cpp): 0 = the subgroups add their sums into
// shared memory one after the other (a barrier each); else the workgroup's subgroup count: each
// writes its own copy, one barrier, and the output loop adds the copies in subgroup order — the same
// additions in the same order, so the same bits.
layout(constant_id = 7) const uint kMergeSG = 0u;
layout(constant_id = 8) const bool kRows = false;
layout(constant_id = 9) const bool kFuse = false;
layout(std430, set = 0, binding = 0) readonly buffer KVq { uvec4 kv4[]; };
layout(std430, set = 0, binding = 1) readonly buffer T { int table[]; };
layout(std430, set = 0, binding = 2) readonly buffer Q { vec4 q4[]; };
layout(std430, set = 0, binding = 3) writeonly buffer O { float o[]; };
layout(std430, set = 0, binding = 4) coherent buffer Part { float part[]; };  // read back only by kFuse
layout(std430, set = 0, binding = 4) coherent buffer Part2 { vec2 part2[]; };
layout(std430, set = 0, binding = 5) readonly buffer Pos { int positions[]; };
layout(std430, set = 0, binding = 6) coherent buffer Cnt { uint count[]; };  // kFuse: 0 between calls
layout(push_constant) uniform P {
  uint block_size; uint n_kv_heads; uint head_dim; uint n_heads; uint start_pos; uint n_tokens; float scale;
  uint n_splits; uint split_len; uint rows_at; uint row0;
} pc;

const uint kWG = 128u;
const uint kC = kD / 8u / kL;     // 16-byte chunks per lane per row
const uint kSlots = kWG / kL;     // keys walked at once
shared vec2 sml[kSlots * kG];     // per slot and head: (m, l)
shared float sacc[(kMergeSG == 0u ? 1u : kMergeSG) * kG * kD];  // the merged accumulators (kMergeSG: per subgroup)
shared vec2 sfin[kG];             // per head: (M, L) of the slice
shared bool s_last;               // kFuse: this workgroup is the last of its (row, head group)
const uint kCombineMaxS = kFuse ? 1024u : 1u, kCombineRed = kFuse ? 128u : 1u;
#include "attention_combine_v2.glsl"

uint g_table0 = 0u;  // this token's block table in binding 1 (kRows: its row's; else the binding's start)

// Offset in 16-byte units of K[p] for KV head kvh (head_dim is a multiple of 8).
uint k_offset4(uint p, uint kvh) {
  const uint blk = uint(table[g_table0 + p / pc.block_size]);
  const uint half_block = pc.block_size * pc.n_kv_heads * kD;
  return (blk * 2u * half_block + (kvh * pc.block_size + p % pc.block_size) * kD) >> 3u;
}

// One round's K and V rows of this lane's slot (keys base + slot·kU .. + kU of the slice starting at
// k0), into ld_k / ld_v; keys at or past n read nothing (zeros).
uvec4 ld_k[kU * kC], ld_v[kU * kC];
void load_round(uint base, uint k0, uint n, uint kvh, uint slot, uint li, uint hb4, bool same_block) {
  const uint j0 = base + slot * kU;
  // A slot's kU keys start at a multiple of kU (split_len is a multiple of 32): with blocks a multiple
  // of kU they share one block, so one table lookup serves them.
  const uint off0 = same_block && j0 < n ? k_offset4(k0 + j0, kvh) : 0u;
  [[unroll]] for (uint u = 0u; u < kU; ++u) {
    const bool ok = j0 + u < n;
    const uint off = !ok ? 0u : same_block ? off0 + u * (kD / 8u) : k_offset4(k0 + j0 + u, kvh);
    [[unroll]] for (uint c = 0u; c < kC; ++c) {
      ld_k[u * kC + c] = ok ? kv4[off + li + c * kL] : uvec4(0u);
      ld_v[u * kC + c] = ok ? kv4[off + hb4 + li + c * kL] : uvec4(0u);
    }
  }
}

void main() {
  const uint split = gl_WorkGroupID.x, kvh = gl_WorkGroupID.y / kHG, tok = gl_WorkGroupID.z, t = gl_LocalInvocationID.x;
  const uint start = kStartFromBuffer ? uint(positions[pc.start_pos]) : pc.start_pos;
  // causal: keys 0 .. start + tok (kRows: 0 .. the row's own position)
  const uint keys = kRows ? uint(positions[pc.start_pos + tok]) + 1u : start + tok + 1u;
  if (kRows) g_table0 = uint(positions[pc.rows_at + tok]);
  const uint k0 = split * pc.split_len, k1 = min(keys, k0 + pc.split_len);
  const uint n = k1 > k0 ? k1 - k0 : 0u;
  const uint h0 = (kvh * kHG + gl_WorkGroupID.y % kHG) * kG;  // this workgroup's first query head
  const uint slot = t / kL, li = t % kL;
  const uint hb4 = (pc.block_size * pc.n_kv_heads * kD) >> 3u;  // K -> V of the same row, 16-byte units
  const float NEG_INF = -1.0 / 0.0;
  const bool same_block = pc.block_size % kU == 0u;

  vec4 qa[kG * kC], qb[kG * kC], aa[kG * kC], ab[kG * kC];
  float m[kG], l[kG];
  [[unroll]] for (uint g = 0u; g < kG; ++g) {
    m[g] = NEG_INF;
    l[g] = 0.0;
    [[unroll]] for (uint c = 0u; c < kC; ++c) {
      const uint qi = (tok * pc.n_heads + h0 + g) * (kD / 4u) + 2u * (li + c * kL);
      qa[g * kC + c] = q4[qi] * pc.scale;
      qb[g * kC + c] = q4[qi + 1u] * pc.scale;
      aa[g * kC + c] = vec4(0.0);
      ab[g * kC + c] = vec4(0.0);
    }
  }

  // Rounds are uniform over the workgroup (the shuffles below need every lane of a slot active).
  if (kPipe && n > 0u) load_round(0u, k0, n, kvh, slot, li, hb4, same_block);
  for (uint base = 0u; base < n; base += kSlots * kU) {
    const uint j0 = base + slot * kU;
    if (!kPipe) load_round(base, k0, n, kvh, slot, li, hb4, same_block);
    uvec4 kw[kU * kC], vw[kU * kC];
    [[unroll]] for (uint i = 0u; i < kU * kC; ++i) {
      kw[i] = ld_k[i];
      vw[i] = ld_v[i];
    }
    // kPipe: the next round's rows are requested now and arrive while this round computes.
    if (kPipe && base + kSlots * kU < n) load_round(base + kSlots * kU, k0, n, kvh, slot, li, hb4, same_block);
    float s[kU * kG];
    [[unroll]] for (uint u = 0u; u < kU; ++u) {
      [[unroll]] for (uint g = 0u; g < kG; ++g) {
        float a = 0.0;
        [[unroll]] for (uint c = 0u; c < kC; ++c) {
          const uvec4 w = kw[u * kC + c];
          a += dot(qa[g * kC + c], vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y))) +
               dot(qb[g * kC + c], vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w)));
        }
        s[u * kG + g] = a;
      }
    }
    [[unroll]] for (uint mask = kL / 2u; mask > 0u; mask >>= 1u) {
      [[unroll]] for (uint i = 0u; i < kU * kG; ++i) s[i] += subgroupShuffleXor(s[i], mask);
    }
    [[unroll]] for (uint u = 0u; u < kU; ++u) {
      if (j0 + u >= n) {
        [[unroll]] for (uint g = 0u; g < kG; ++g) s[u * kG + g] = NEG_INF;
      }
    }
    [[unroll]] for (uint g = 0u; g < kG; ++g) {
      float mx = m[g];
      [[unroll]] for (uint u = 0u; u < kU; ++u) mx = max(mx, s[u * kG + g]);
      const float ms = mx == NEG_INF ? 0.0 : mx;  // no key yet: every weight below is e^-inf = 0
      const float corr = exp(m[g] - ms);
      l[g] *= corr;
      [[unroll]] for (uint c = 0u; c < kC; ++c) {
        aa[g * kC + c] *= corr;
        ab[g * kC + c] *= corr;
      }
      [[unroll]] for (uint u = 0u; u < kU; ++u) {
        const float p = exp(s[u * kG + g] - ms);
        l[g] += p;
        [[unroll]] for (uint c = 0u; c < kC; ++c) {
          const uvec4 w = vw[u * kC + c];
          aa[g * kC + c] += p * vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y));
          ab[g * kC + c] += p * vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w));
        }
      }
      m[g] = mx;
    }
  }

  // Merge the slots: the slice's max per head, each slot rescaled to it.
  if (li == 0u) {
    [[unroll]] for (uint g = 0u; g < kG; ++g) sml[slot * kG + g] = vec2(m[g], l[g]);
  }
  barrier();
  [[unroll]] for (uint g = 0u; g < kG; ++g) {
    float M = NEG_INF;
    for (uint s2 = 0u; s2 < kSlots; ++s2) M = max(M, sml[s2 * kG + g].x);
    const float f = M == NEG_INF ? 0.0 : exp(m[g] - M);
    [[unroll]] for (uint c = 0u; c < kC; ++c) {
      aa[g * kC + c] *= f;
      ab[g * kC + c] *= f;
    }
    if (t == g) {
      float L = 0.0;
      for (uint s2 = 0u; s2 < kSlots; ++s2) {
        const vec2 x = sml[s2 * kG + g];
        if (x.y > 0.0) L += x.y * exp(x.x - M);
      }
      sfin[g] = vec2(M, L);
    }
  }
  // The slots of one subgroup by shuffles (lanes li of slots slot ^ 1, ^ 2, ...), into its first slot.
  for (uint mask = kL; mask < gl_SubgroupSize; mask <<= 1u) {
    [[unroll]] for (uint i = 0u; i < kG * kC; ++i) {
      aa[i] += subgroupShuffleXor(aa[i], mask);
      ab[i] += subgroupShuffleXor(ab[i], mask);
    }
  }
  // The subgroups one after the other, or (kMergeSG) each into its own copy.
  const bool leader = gl_SubgroupInvocationID < kL;
  if (kMergeSG != 0u) {
    if (leader) {
      [[unroll]] for (uint g = 0u; g < kG; ++g) {
        [[unroll]] for (uint c = 0u; c < kC; ++c) {
          const uint i = gl_SubgroupID * (kG * kD) + g * kD + 8u * (li + c * kL);
          const vec4 x = aa[g * kC + c], y = ab[g * kC + c];
          sacc[i] = x.x; sacc[i + 1u] = x.y; sacc[i + 2u] = x.z; sacc[i + 3u] = x.w;
          sacc[i + 4u] = y.x; sacc[i + 5u] = y.y; sacc[i + 6u] = y.z; sacc[i + 7u] = y.w;
        }
      }
    }
    barrier();
  }
  for (uint sg = 0u; kMergeSG == 0u && sg < gl_NumSubgroups; ++sg) {
    if (gl_SubgroupID == sg && leader) {
      [[unroll]] for (uint g = 0u; g < kG; ++g) {
        [[unroll]] for (uint c = 0u; c < kC; ++c) {
          const uint i = g * kD + 8u * (li + c * kL);
          const vec4 x = aa[g * kC + c], y = ab[g * kC + c];
          if (sg == 0u) {
            sacc[i] = x.x; sacc[i + 1u] = x.y; sacc[i + 2u] = x.z; sacc[i + 3u] = x.w;
            sacc[i + 4u] = y.x; sacc[i + 5u] = y.y; sacc[i + 6u] = y.z; sacc[i + 7u] = y.w;
          } else {
            sacc[i] += x.x; sacc[i + 1u] += x.y; sacc[i + 2u] += x.z; sacc[i + 3u] += x.w;
            sacc[i + 4u] += y.x; sacc[i + 5u] += y.y; sacc[i + 6u] += y.z; sacc[i + 7u] += y.w;
          }
        }
      }
    }
    barrier();
  }
  for (uint i = t; i < kG * kD; i += kWG) {
    const uint g = i / kD, d = i % kD, h = h0 + g;
    const vec2 ML = sfin[g];
    float v = sacc[i];
    for (uint sg = 1u; sg < kMergeSG; ++sg) v += sacc[sg * (kG * kD) + i];
    if (pc.n_splits == 1u) {
      o[(tok * pc.n_heads + h) * kD + d] = v / ML.y;
    } else {
      const uint pbase = ((tok * pc.n_heads + h) * pc.n_splits + split) * (kD + 2u);
      part[pbase + d] = v;
      if (d == 0u) {
        part[pbase + kD] = ML.x;  // -inf for a slice past the last key (l = 0)
        part[pbase + kD + 1u] = ML.y;
      }
    }
  }
  // kFuse: the last workgroup of this (row, head group) to finish merges the group's heads.
  if (kFuse && pc.n_splits > 1u) {
    memoryBarrierBuffer();
    barrier();
    const uint ci = (pc.row0 + tok) * gl_NumWorkGroups.y + gl_WorkGroupID.y;
    if (t == 0u) s_last = atomicAdd(count[ci], 1u) == gl_NumWorkGroups.x - 1u;
    barrier();
    if (!s_last) return;
    memoryBarrierBuffer();
    if (t == 0u) count[ci] = 0u;
    for (uint g = 0u; g < kG; ++g) {
      const uint row = tok * pc.n_heads + h0 + g;
      combine_splits(row * pc.n_splits * (kD + 2u), pc.n_splits, kD, row * kD);
    }
  }
}
