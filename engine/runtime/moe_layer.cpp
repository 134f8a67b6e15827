#include "engine/runtime/moe_layer.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include <fmt/format.h>

namespace trove::engine {

uint64_t MoeLayer::scratch_bytes(const MoeShape& m, uint32_t max_tokens) {
  const uint64_t pairs = uint64_t{max_tokens} * m.k;
  const auto layout = ops::MoePlanLayout::make(static_cast<uint32_t>(pairs), m.n_expert);
  return 4 * (2 * uint64_t{max_tokens} * m.n_expert + 2 * pairs + 3 * pairs * m.ffn + pairs * m.hidden) +
         layout.bytes();
}

Result<MoeRouterMode> moe_router_mode_from_env() {
  const char* v = std::getenv("TROVE_MOE_ROUTER");
  if (!v || !*v) return MoeRouterMode::kBeside;
  const std::string_view r = v;
  if (r == "beside") return MoeRouterMode::kBeside;
  if (r == "fused") return MoeRouterMode::kFused;
  if (r == "split") return MoeRouterMode::kSplit;
  return Status::InvalidArgument(fmt::format(
      "TROVE_MOE_ROUTER={} is not a choice: use beside (the default: at decode the router split around the "
      "O projection so it waits for neither, its weights folded through W_o at load), fused (the FFN norm, "
      "the router and the routing in one dispatch after O) or split (the router as a matvec, then the "
      "routing: two dispatches)",
      r));
}

namespace {
// TROVE_MOE_TOPK=experts|router (MoeLayer::topk_in_experts); unset: router.
Result<bool> topk_in_experts_from_env() {
  const char* v = std::getenv("TROVE_MOE_TOPK");
  if (!v || !*v || std::string_view(v) == "router") return false;
  if (std::string_view(v) == "experts") return true;
  return Status::InvalidArgument(fmt::format(
      "TROVE_MOE_TOPK={} is not a choice: use router (the default: the router's last workgroup routes, "
      "after all the others) or experts (with the router beside O, the experts' gate/up kernel takes each "
      "token's top-k from the router logits; slower: tg at depth 4096 -6% on an H100, 2026-12-06)",
      v));
}
}  // namespace

Result<MoeLayer> MoeLayer::create(vk::Device& dev, const MoeShape& m, uint32_t max_tokens) {
  if (m.hidden == 0 || m.ffn == 0 || m.n_expert == 0 || m.k == 0 || max_tokens == 0) {
    return Status::InvalidArgument(fmt::format("MoE layer: hidden {}, expert FFN {}, {} experts, top-k {}, {} tokens; "
                                               "all must be positive", m.hidden, m.ffn, m.n_expert, m.k, max_tokens));
  }
  auto mode = moe_router_mode_from_env();
  if (!mode.ok()) return mode.status();
  auto topk = topk_in_experts_from_env();
  if (!topk.ok()) return topk.status();
  auto route = ops::MoeRoute::create(dev);
  if (!route.ok()) return route.status();
  auto ffn = ops::MoeFfn::create(dev);
  if (!ffn.ok()) return ffn.status();
  MoeLayer l;
  l.shape_ = m;
  l.max_tokens_ = max_tokens;
  l.router_mode_ = *mode;
  l.topk_experts_ = *topk;
  const uint64_t pairs = uint64_t{max_tokens} * m.k;
  l.layout_ = ops::MoePlanLayout::make(static_cast<uint32_t>(pairs), m.n_expert);
  l.route_ = std::move(*route);
  l.ffn_ = std::move(*ffn);
  struct Want {
    vk::Buffer* b;
    uint64_t bytes;
  };
  const Want want[] = {{&l.logits_, uint64_t{max_tokens} * m.n_expert * 4}, {&l.ids_, pairs * 4},
                       {&l.weights_, pairs * 4}, {&l.plan_, l.layout_.bytes()},
                       {&l.h_, pairs * m.ffn * 4}, {&l.d_, pairs * m.hidden * 4},
                       {&l.g_, pairs * m.ffn * 4}, {&l.u_, pairs * m.ffn * 4},
                       {&l.zh_, uint64_t{max_tokens} * m.n_expert * 4}};
  for (const Want& w : want) {
    auto b = dev.buffer(std::max<uint64_t>(w.bytes, 16));
    if (!b.ok()) return b.status();
    *w.b = std::move(*b);
  }
  return l;
}

Status MoeLayer::record(vk::CommandStream& s, const ops::Matmul& matmul, const MoeLayerWeights& w,
                        vk::BufferRange xn, vk::BufferRange x, uint32_t T,
                        const std::function<void(MoeStage)>& after, vk::BufferRange xn_f16) const {
  if (T == 0 || T > max_tokens_) {
    return Status::InvalidArgument(fmt::format("MoE layer: a step of {} tokens; this layer holds scratch for 1..{}", T,
                                               max_tokens_));
  }
  const MoeShape& m = shape_;
  TROVE_RETURN_IF_ERROR(matmul.record(s, w.router_type, m.n_expert, m.hidden, T, w.router, xn, logits_));
  s.barrier();
  if (after) after(MoeStage::kRouter);
  TROVE_RETURN_IF_ERROR(route_.record(s, logits_, ids_, weights_, plan_, layout_, T, m.k));
  s.barrier();
  if (after) after(MoeStage::kRoute);
  ops::MoeFfnCall call{w.gate, w.up,   w.down, T,  m.k, xn, ids_, weights_, plan_, layout_, h_, d_, x,
                       &matmul, ops::MoePrefill::kAuto, g_, u_};
  call.xn_f16 = xn_f16;
  static constexpr MoeStage kGrouped[] = {MoeStage::kGateUp, MoeStage::kSwiglu, MoeStage::kDown};
  if (after) call.after = [&](uint32_t i) { after(kGrouped[std::min<uint32_t>(i, 2)]); };
  return ffn_.record(s, call);
}

Status MoeLayer::record_fused_norm(vk::CommandStream& s, const ops::Matvec& matvec, const MoeLayerWeights& w,
                                   vk::BufferRange norm_w, float eps, vk::BufferRange x, uint32_t T,
                                   const std::function<void(MoeStage)>& after, bool routed) const {
  if (!fuses_norm(T)) {
    return Status::InvalidArgument(fmt::format("MoE layer: a step of {} tokens cannot fold the FFN norm (needs <= {} tokens "
                                               "and the direct expert kernels); use record()", T, ops::Matvec::kMaxBatch));
  }
  const MoeShape& m = shape_;
  auto done = [&](MoeStage st) {
    s.barrier();
    if (after) after(st);
  };
  if (routed) {
    if (!router_beside(T, w)) {
      return Status::InvalidArgument(
          "MoE layer: routed = true, but this step does not run the router beside O "
          "(router_beside())");
    }
  } else if (router_mode_ != MoeRouterMode::kSplit && w.router_type == quant::GgmlType::F32 &&
             T <= ops::MoeRoute::kRouterMaxTokens && m.hidden % 4 == 0) {
    // Router and routing in one dispatch (the profile's "moe router" then holds both).
    const ops::MoeRouterCall rc{x, norm_w, eps, w.router, logits_, ids_, weights_, m.hidden, m.n_expert, T, m.k};
    TROVE_RETURN_IF_ERROR(route_.record_router(s, rc));
    done(MoeStage::kRouter);
  } else {
    TROVE_RETURN_IF_ERROR(record_router_split(s, matvec, w, norm_w, eps, x, T, done));
  }
  ops::MoeFfnCall call{w.gate, w.up,   w.down, T,  m.k, x, ids_, weights_, plan_, layout_, h_, d_, x,
                       nullptr, ops::MoePrefill::kExpertMatvec, g_, u_};
  call.norm_w = norm_w;
  call.eps = eps;
  call.by_pair = true;
  call.weights_raw = routed;
  if (routed && topk_in_experts(T, w)) call.route_logits = logits_;
  TROVE_RETURN_IF_ERROR(ffn_.record_gate_up(s, call));  // ffn_.record() in two halves, for `after`
  done(MoeStage::kGateUp);
  return ffn_.record_down(s, call);
}

bool MoeLayer::topk_in_experts(uint32_t T, const MoeLayerWeights& w) const {
  ops::MoeFfnCall c;
  c.gate = w.gate;
  c.up = w.up;
  c.by_pair = true;
  return topk_experts_ && router_beside(T, w) && ffn_.routes_in_gate_up(c);
}

Status MoeLayer::record_router_h(vk::CommandStream& s, const MoeLayerWeights& w, vk::BufferRange x,
                                 uint32_t T) const {
  if (!router_beside(T, w)) {
    return Status::InvalidArgument(
        fmt::format("MoE layer: a step of {} tokens does not run the router beside O", T));
  }
  const MoeShape& m = shape_;
  ops::MoeRouterCall c{x, {}, 0.f, w.router_n, zh_, {}, {}, m.hidden, m.n_expert, T, m.k};
  c.mode = ops::MoeRouterCall::kPlain;
  return route_.record_router(s, c);
}

Status MoeLayer::record_router_o(vk::CommandStream& s, const MoeLayerWeights& w, vk::BufferRange attn,
                                 uint32_t T) const {
  if (!router_beside(T, w)) {
    return Status::InvalidArgument(
        fmt::format("MoE layer: a step of {} tokens does not run the router beside O", T));
  }
  const MoeShape& m = shape_;
  ops::MoeRouterCall c{attn, {}, 0.f, w.router_o, logits_, ids_, weights_, w.q_dim, m.n_expert, T, m.k};
  c.mode = topk_in_experts(T, w) ? ops::MoeRouterCall::kBiasLogits : ops::MoeRouterCall::kBiasRouteRaw;
  c.bias = zh_;
  return route_.record_router(s, c);
}

Status MoeLayer::record_router_split(vk::CommandStream& s, const ops::Matvec& matvec, const MoeLayerWeights& w,
                                     vk::BufferRange norm_w, float eps, vk::BufferRange x, uint32_t T,
                                     const std::function<void(MoeStage)>& done) const {
  const MoeShape& m = shape_;
  ops::MatvecCall router;
  router.cols = m.hidden;
  router.batch = T;
  router.x = x;
  router.norm_w = norm_w;
  router.eps = eps;
  router.mats[0] = {w.router_type, m.n_expert, w.router, logits_, 0};
  router.n_mats = 1;
  TROVE_RETURN_IF_ERROR(matvec.record(s, router));
  done(MoeStage::kRouter);
  // Routing without a plan: the expert kernels index by (token, j) pair (MoeFfnCall::by_pair).
  TROVE_RETURN_IF_ERROR(route_.record_ids(s, logits_, ids_, weights_, m.n_expert, T, m.k));
  done(MoeStage::kRoute);
  return Status::Ok();
}

}  // namespace trove::engine
