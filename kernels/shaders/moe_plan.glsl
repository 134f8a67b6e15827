// moe_plan.glsl — builds the routing plan (kernels/ops/moe_ffn.h, MoePlanLayout) from the top-k
// expert ids of `tokens` tokens, inside ONE workgroup of 256 invocations, on the GPU:
//   offsets[e]            first slot of expert e (exclusive prefix sum of the per-expert counts);
//                         offsets[n_experts] = tokens * k
//   slot_pair[slot]       the (token, j) pair, as token * k + j, that a slot holds; an expert's slots
//                         are in increasing token order (a stable counting sort: deterministic)
//   pair_slot[pair]       the inverse
//   row_ids[slot]         the token (the activation row a grouped GEMM gathers for that slot)
//   entries[q], n_entries work entries of up to kPlanSlotsPerEntry slots of one expert, experts in
//                         order: uvec2(expert, first slot | count << 24)
// Requirements (the host checks them): n_experts <= 256, ids < n_experts, the k ids of a token
// distinct (a router never picks an expert twice), tokens * k < 2^24.
//
// How: per-expert counts with shared atomics (order-free), prefix sums over the experts with
// subgroup scans, then tokens in chunks of 256, one per invocation: each sets its bit in a
// per-expert membership bitmap of the chunk, and a pair's rank inside its expert is the number of
// earlier set bits (popcounts over <= 8 words) plus the expert's count from earlier chunks.
// O(tokens * k / 256) work per invocation; no invocation loops over all pairs.
//
// The includer defines: uint plan_id(uint pair) (the expert of a pair), the buffer `plan` (uint[]),
// and calls plan_build() from uniform control flow after making the ids visible.

const uint kPlanSlotsPerEntry = 8u;  // = kCols in moe_experts.comp = MoePlanLayout::kSlotsPerEntry

shared uint s_cnt[256];
shared uint s_cur[256];
shared uint s_off[257];
shared uint s_ent[257];
shared uint s_member[256 * 8];
shared uint s_sg_cnt[256];  // per-subgroup totals of the scans (at most 256 subgroups of 1)
shared uint s_sg_ent[256];  // [expert][8 words]: bit i of word w = token c0 + 32w + i chose it

void plan_build(uint tokens, uint k, uint n_experts, uint n_entries_off, uint offsets_off, uint entries_off,
                uint slot_pair_off, uint pair_slot_off, uint row_ids_off, uint slot_ids_off) {
  const uint C = kPlanSlotsPerEntry;
  uint tid = gl_LocalInvocationID.x;
  s_cnt[tid] = 0u;
  s_cur[tid] = 0u;
  barrier();
  for (uint t = tid; t < tokens; t += 256u)
    for (uint j = 0u; j < k; ++j) atomicAdd(s_cnt[plan_id(t * k + j)], 1u);
  barrier();
  // Exclusive prefix sums of the counts and of the entries per expert (one expert per invocation):
  // inclusive subgroup scans, then each subgroup adds the totals of the subgroups before it.
  uint cnt = tid < n_experts ? s_cnt[tid] : 0u, ent = (cnt + C - 1u) / C;
  uint inc_cnt = subgroupInclusiveAdd(cnt), inc_ent = subgroupInclusiveAdd(ent);
  if (gl_SubgroupInvocationID == gl_SubgroupSize - 1u) {
    s_sg_cnt[gl_SubgroupID] = inc_cnt;
    s_sg_ent[gl_SubgroupID] = inc_ent;
  }
  barrier();
  for (uint g = 0u; g < gl_SubgroupID; ++g) {
    inc_cnt += s_sg_cnt[g];
    inc_ent += s_sg_ent[g];
  }
  if (tid < n_experts) {
    s_off[tid] = inc_cnt - cnt;
    s_ent[tid] = inc_ent - ent;
  }
  if (tid == n_experts - 1u) {  // the totals
    s_off[n_experts] = inc_cnt;
    s_ent[n_experts] = inc_ent;
    plan[n_entries_off] = inc_ent;
  }
  barrier();
  for (uint e = tid; e <= n_experts; e += 256u) plan[offsets_off + e] = s_off[e];
  for (uint i = tid; i < tokens * k; i += 256u) plan[slot_ids_off + i] = i;
  // Entries: entry q belongs to the last expert e with s_ent[e] <= q (experts without slots have
  // s_ent[e] == s_ent[e + 1] and are skipped by taking the last).
  uint nq = s_ent[n_experts];
  for (uint q = tid; q < nq; q += 256u) {
    uint lo = 0u, hi = n_experts;
    while (hi - lo > 1u) {
      uint mid = (lo + hi) >> 1;
      if (s_ent[mid] <= q) lo = mid; else hi = mid;
    }
    uint i = q - s_ent[lo];
    uint first = s_off[lo] + i * C, count = min(C, s_cnt[lo] - i * C);
    plan[entries_off + 2u * q] = lo;
    plan[entries_off + 2u * q + 1u] = first | (count << 24);
  }
  // Slots: a stable counting sort, chunk by chunk of 256 tokens.
  for (uint c0 = 0u; c0 < tokens; c0 += 256u) {
    for (uint wd = 0u; wd < 8u; ++wd) s_member[tid * 8u + wd] = 0u;
    barrier();
    uint t = c0 + tid, word = tid >> 5, bit = 1u << (tid & 31u);
    if (t < tokens)
      for (uint j = 0u; j < k; ++j) atomicOr(s_member[plan_id(t * k + j) * 8u + word], bit);
    barrier();
    if (t < tokens) {
      for (uint j = 0u; j < k; ++j) {
        uint pair = t * k + j, e = plan_id(pair);
        uint rank = s_cur[e] + uint(bitCount(s_member[e * 8u + word] & (bit - 1u)));
        for (uint wd = 0u; wd < word; ++wd) rank += uint(bitCount(s_member[e * 8u + wd]));
        uint slot = s_off[e] + rank;
        plan[slot_pair_off + slot] = pair;
        plan[pair_slot_off + pair] = slot;
        plan[row_ids_off + slot] = t;
      }
    }
    barrier();
    uint n = 0u;
    for (uint wd = 0u; wd < 8u; ++wd) n += uint(bitCount(s_member[tid * 8u + wd]));
    s_cur[tid] += n;
    barrier();
  }
}
