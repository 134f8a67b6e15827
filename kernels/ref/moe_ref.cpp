#include "kernels/ref/moe_ref.h"

#include <algorithm>

namespace trove::kernels::ref {

MoePlan moe_plan(std::span<const uint32_t> ids, uint32_t tokens, uint32_t k, uint32_t n_expert,
                 uint32_t slots_per_entry) {
  const uint32_t pairs = tokens * k;
  MoePlan p;
  p.offsets.assign(n_expert + 1, 0);
  for (uint32_t i = 0; i < pairs; ++i) ++p.offsets[ids[i] + 1];
  for (uint32_t e = 0; e < n_expert; ++e) p.offsets[e + 1] += p.offsets[e];
  p.slot_pair.resize(pairs);
  p.pair_slot.resize(pairs);
  p.row_ids.resize(pairs);
  std::vector<uint32_t> next(p.offsets.begin(), p.offsets.end() - 1);
  for (uint32_t i = 0; i < pairs; ++i) {  // pairs in increasing order: a stable sort by expert
    const uint32_t slot = next[ids[i]]++;
    p.slot_pair[slot] = i;
    p.pair_slot[i] = slot;
    p.row_ids[slot] = i / k;
  }
  for (uint32_t e = 0; e < n_expert; ++e) {
    for (uint32_t s = p.offsets[e]; s < p.offsets[e + 1]; s += slots_per_entry) {
      p.entries.push_back({e, s, std::min(slots_per_entry, p.offsets[e + 1] - s)});
    }
  }
  return p;
}

}  // namespace trove::kernels::ref
