// engine/runtime/moe_layer.h — the FFN half of a Qwen3-MoE layer, recorded into the step's command
// stream with no host round trip (docs/engine.md, "MoE layers"):
//
//   logits = router · xn  →  top-k ids, renormalised weights and the routing plan (on the GPU)
//          →  gate/up of every chosen expert + SwiGLU  →  down, weighted sum over k, x += …
//
// xn is the FFN input after its RMSNorm ([T][hidden] f32), x the residual stream it adds into. The
// dispatches are kernels/ops/moe_ffn.h's (MoeRoute, MoeFfn) after one router matmul: 4 dispatches
// for steps of up to 8 tokens (decode), 7 above (9 with the grouped GEMMs of the matrix-unit path:
// steps of >= 32 tokens where the engine's Matmul uses cooperative matrices). record() puts barriers between its own dispatches,
// none before the first (the caller's barrier orders xn) or after the last (the caller's orders x).
//
// A MoeLayer owns the scratch of one layer at a time (router logits, ids, weights, plan, expert
// activations, the grouped-GEMM prefill's gate/up outputs) for steps of up to max_tokens tokens; the
// engine creates one and records every MoE layer through it (layers run in order, separated by
// barriers, so they can share it).
// Requirements: each stacked expert tensor in ONE device buffer (kernels/ops/moe_ffn.h limits).
#pragma once

#include <cstdint>
#include <functional>

#include "kernels/ops/matmul.h"
#include "kernels/ops/matvec.h"
#include "kernels/ops/moe_ffn.h"
#include "kernels/vk/runtime.h"

namespace trove::engine {

// One layer's MoE weights on the GPU.
struct MoeLayerWeights {
  ops::StackedExperts gate, up, down;       // ffn_gate_exps, ffn_up_exps, ffn_down_exps
  quant::GgmlType router_type = quant::GgmlType::F32;
  vk::BufferRange router;                   // ffn_gate_inp: [n_expert][hidden]
  // The router beside O (MoeRouterMode::kBeside; engine/runtime/router_fold.h), f32: R̃ = router ·
  // diag(ffn_norm) [n_expert][hidden] and M = R̃ · attn_output [n_expert][q_dim]. Empty: not folded.
  vk::BufferRange router_n, router_o;
  uint32_t q_dim = 0;
};

// How decode-sized steps (record_fused_norm) run the router (TROVE_MOE_ROUTER; f32 routers — others
// always take kSplit):
//  kBeside: (the default) split around the O projection (ops::MoeRouterCall::kPlain beside the QKV
//           matvec, then kBiasRouteRaw beside O: record_router_h / record_router_o), so the router waits
//           for neither; the gate/up kernel scales the chosen logits by 1/rms. Needs the folded weights
//           (without them, e.g. on devices without the direct expert kernels, kFused's path runs).
//           H100, 30B-A3B (2026-12-06): 3524–3531 µs a decode step against kFused's 4403–4418 with a
//           workgroup per router row (the default) in both; tg128 272–284 tok/s against 208.
//  kFused:  norm, router and routing in one dispatch after O (MoeRoute::record_router, kNormRoute).
//  kSplit:  the router as an ops::Matvec with the norm prologue, then the routing: two dispatches.
enum class MoeRouterMode : uint8_t { kBeside, kFused, kSplit };
// TROVE_MOE_ROUTER=beside|fused|split, else the default (kBeside); the error names the setting.
Result<MoeRouterMode> moe_router_mode_from_env();

// The dispatches of record_fused_norm() and record(), in order; the `after` hook hears each but the
// last (down at decode, the combine in prefill), after the barrier that ends it (TROVE_PROFILE=ops puts
// a timestamp there). kSwiglu and kDown: the grouped-GEMM prefill only.
enum class MoeStage : uint8_t { kRouter, kRoute, kGateUp, kSwiglu, kDown };

struct MoeShape {
  uint32_t hidden = 0, ffn = 0, n_expert = 0, k = 0;
};

class MoeLayer {
 public:
  static Result<MoeLayer> create(vk::Device& dev, const MoeShape& shape, uint32_t max_tokens);
  // Device bytes of the scratch create() allocates (for the engine's memory plan).
  static uint64_t scratch_bytes(const MoeShape& shape, uint32_t max_tokens);
  // x += MoE(xn) for T <= max_tokens tokens. matmul: the engine's op, for the router. xn_f16: xn
  // rounded to f16, for the experts' grouped GEMMs (ops::MoeFfnCall::xn_f16; empty: they read xn).
  Status record(vk::CommandStream& s, const ops::Matmul& matmul, const MoeLayerWeights& w, vk::BufferRange xn,
                vk::BufferRange x, uint32_t T, const std::function<void(MoeStage)>& after = {},
                vk::BufferRange xn_f16 = {}) const;
  // Whether record_fused_norm() takes a step of T tokens: decode-sized steps (<= Matvec::kMaxBatch) on
  // the direct expert kernels (ops::MoeFfn::direct()).
  bool fuses_norm(uint32_t T) const { return T <= ops::Matvec::kMaxBatch && T <= max_tokens_ && ffn_.direct(); }
  // x += MoE(rmsnorm(x) · norm_w) with the FFN norm folded into its consumers: the router and the
  // routing in one dispatch (MoeRoute::record_router; f32 router weights, unless TROVE_MOE_ROUTER=split
  // — then the router as an ops::Matvec with the RMSNorm prologue, then MoeRoute::record_ids),
  // gate/up as the direct expert kernel with the same prologue indexed by (token, j) pair, down by
  // pair — 3 dispatches (4 split) and no separate norm (fuses_norm(T) must hold).
  // routed: record_router_o() already chose the experts (router beside O): no router dispatch here,
  // and gate/up scales the raw logits into weights.
  Status record_fused_norm(vk::CommandStream& s, const ops::Matvec& matvec, const MoeLayerWeights& w,
                           vk::BufferRange norm_w, float eps, vk::BufferRange x, uint32_t T,
                           const std::function<void(MoeStage)>& after = {}, bool routed = false) const;
  // Whether a decode step of T tokens runs the router beside O (MoeRouterMode::kBeside and the layer's
  // folded weights); then, per layer: record_router_h() beside the QKV matvec (x = the residual stream
  // at the layer's start, which QKV also only reads), record_router_o() beside O (attn = O's input),
  // each recorded BEFORE the matvec it runs beside (so its few workgroups get SMs before the matvec's
  // fill the GPU: recorded after, the 30B-A3B's decode step took 5–15% longer than with the fused
  // router; docs/performance.md, "H100 machine, 2026-12-06 15:55–16:50"), and record_fused_norm(...,
  // routed = true) after O's barrier.
  bool router_beside(uint32_t T, const MoeLayerWeights& w) const {
    return router_mode_ == MoeRouterMode::kBeside && fuses_norm(T) && T <= ops::MoeRoute::kRouterMaxTokens &&
           shape_.hidden % 4 == 0 && w.q_dim % 4 == 0 && w.router_n.buffer != VK_NULL_HANDLE &&
           w.router_o.buffer != VK_NULL_HANDLE;
  }
  // Whether, with the router beside O, the experts' gate/up kernel takes the top-k itself (from the
  // logits record_router_o() leaves, ops::MoeFfnCall::route_logits) instead of the router's last
  // workgroup: TROVE_MOE_TOPK=experts where the q8 expert kernels run the step
  // (ops::MoeFfn::routes_in_gate_up); TROVE_MOE_TOPK=router (the default) keeps the routing in the
  // router's dispatch. Measured (H100, 2026-12-06 21:58): O + router −7 µs a layer, the gate/up
  // kernel +15 µs (each of its workgroups waits for the top-k before its first weight load).
  bool topk_in_experts(uint32_t T, const MoeLayerWeights& w) const;
  Status record_router_h(vk::CommandStream& s, const MoeLayerWeights& w, vk::BufferRange x, uint32_t T) const;
  Status record_router_o(vk::CommandStream& s, const MoeLayerWeights& w, vk::BufferRange attn,
                         uint32_t T) const;
  // Copies the last record()'s expert offsets (n_expert + 1 words: the first slot of each expert, then
  // the slot count) to dst at dst_off, for TROVE_PROFILE=routing; after record() and a barrier.
  void record_offsets_copy(vk::CommandStream& s, const vk::Buffer& dst, uint64_t dst_off) const {
    s.copy(plan_, uint64_t{layout_.offsets} * 4, dst, dst_off, (uint64_t{shape_.n_expert} + 1) * 4);
  }
  const MoeShape& shape() const { return shape_; }

 private:
  // The router as an ops::Matvec with the norm prologue, then MoeRoute::record_ids (TROVE_MOE_ROUTER=split,
  // and router weights that are not f32); `done` puts the barrier after each.
  Status record_router_split(vk::CommandStream& s, const ops::Matvec& matvec, const MoeLayerWeights& w,
                             vk::BufferRange norm_w, float eps, vk::BufferRange x, uint32_t T,
                             const std::function<void(MoeStage)>& done) const;
  MoeShape shape_;
  MoeRouterMode router_mode_ = MoeRouterMode::kBeside;  // TROVE_MOE_ROUTER
  bool topk_experts_ = false;                           // TROVE_MOE_TOPK=experts (topk_in_experts())
  uint32_t max_tokens_ = 0;
  ops::MoePlanLayout layout_;
  ops::MoeRoute route_;
  ops::MoeFfn ffn_;
  vk::Buffer logits_, ids_, weights_, plan_, h_, d_, g_, u_;
  vk::Buffer zh_;  // router beside O: R̃ · x of the layer's start, [max_tokens][n_expert]
};

}  // namespace trove::engine
