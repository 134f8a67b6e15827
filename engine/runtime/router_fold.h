// engine/runtime/router_fold.h — the MoE router folded through the O projection, for the router
// beside O (engine/runtime/moe_layer.h, TROVE_MOE_ROUTER=beside). A decode layer's router reads the
// residual stream after the O projection's add, x' = x + W_o · attn, normalised:
//   logits = R · (norm_w ⊙ x') / rms(x') = (R̃ · x + M · attn) / rms(x'),
//   R̃ = R · diag(norm_w)  [n_expert][hidden],   M = R̃ · W_o  [n_expert][q_dim],
// so R̃ · x can run beside the QKV matvec and M · attn beside O (neither waits for the other), and the
// positive 1/rms(x') — which cannot change which experts are chosen — is applied afterwards to the
// chosen ones. Computed once at load, in f32 (M's sums in f32 over `hidden` terms: within ~1e-6 of the
// float64 product relative to the row's size).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/quant/quant.h"

namespace trove::engine {

struct RouterFold {
  std::vector<float> rn;  // R̃, [n_expert][hidden]
  std::vector<float> m;   // M,  [n_expert][q_dim]
};

// router: f32 [n_expert][hidden]; norm_w: f32 [hidden]; o: W_o's GGUF rows ([hidden][q_dim], each
// row_bytes(o_type, q_dim) bytes).
RouterFold fold_router(const float* router, const float* norm_w, uint32_t n_expert, uint32_t hidden,
                       quant::GgmlType o_type, const uint8_t* o, uint32_t q_dim);

}  // namespace trove::engine
