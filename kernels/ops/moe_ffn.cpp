#include "kernels/ops/moe_ffn.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <tuple>

#include <fmt/format.h>

namespace trove::ops {
namespace {

constexpr uint32_t kMaxExperts = 256;  // moe_plan.glsl: one invocation per expert, 256 per workgroup
constexpr uint32_t kMaxTopK = 32;      // moe_route.comp: unrolled rounds
constexpr uint32_t kGpuWorkgroup = 256;  // moe_experts / moe_down workgroups: 8 row groups of 32 lanes
constexpr uint32_t kCpuWorkgroup = 128;  // lavapipe: a smaller reduction area
constexpr uint32_t kGroupLanes = 32;     // kG in moe_experts_body.glsl / moe_down_body.glsl (staged forms)
constexpr uint32_t kDirectWorkgroup = 128;  // direct forms: 4 row groups (subgroups) per workgroup
// q8 forms: rows per row group. Every workgroup stages its inputs (gate/up: 16 KiB of x and norm_w read
// from L2 at hidden 2048; down: 24 KiB of h at k = 8, ffn 768), so a block of 4 row groups should read
// a comparable amount of weights: 2 rows give 8 gate + 8 up rows (18 KiB of Q4_K) / 8 down rows of 8
// experts (28–40 KiB). H200 (bench_kernels --only moe, 2026-12-03): 1 token, gate/up 15.4 µs at 2
// rows, 12.8 at 1; down 18.6 / 15.5; the engine A/B (TROVE_MOE_Q8_ROWS=1|2|4) took 1 (MoeFfn::q8_rows_).
// Bytes of shared memory per staged value and column: the f32 value + 1/8 of its 8-value sum.
constexpr double kStagedBytesPerValue = 4.5;

struct RoutePush {
  uint32_t tokens, k, n_experts, build_plan;
  uint32_t n_entries_off, offsets_off, entries_off, slot_pair_off, pair_slot_off, row_ids_off, slot_ids_off;
};
struct RouterPush {
  uint32_t cols, tokens, n_experts, k;
  float eps;
  uint32_t mode;  // MoeRouterCall::Mode
};
struct ExpertsPush {
  uint32_t rows, cols, rb0, rb1, k, x_by_slot, n_entries_off, entries_off, slot_pair_off, ntiles, tile_vals;
  uint32_t norm;  // direct form: RMSNorm of x (binding 5: its weights) applied in the kernel
  float eps;
  uint32_t raw_wt = 0;  // direct form, by pair: binding 6 = raw router logits, scaled here (weights_raw)
};
struct DownPush { uint32_t rows, cols, rb, k, pair_slot_off, ntiles, tile_vals, by_pair; };
struct CombinePush { uint32_t hidden, k, pair_slot_off; };
struct ExpertsQ8Push {
  uint32_t rows, cols, rb0, rb1, k, pairs, blocks, grid_x, norm;
  float eps;
  uint32_t raw_wt;  // binding 6 = raw router logits, scaled here (MoeFfnCall::weights_raw)
  uint32_t route;   // binding 7 = router logits [tokens][n_experts]: top-k here (MoeFfnCall::route_logits)
  uint32_t n_experts;
};
struct DownQ8Push { uint32_t rows, cols, rb, k, blocks, grid_x; };
struct SwiGluPush { uint32_t pairs, groups_x; };

Status need(const char* op, const char* what, vk::BufferRange b, uint64_t bytes) {
  if (b.buffer == VK_NULL_HANDLE) return Status::InvalidArgument(fmt::format("{}: buffer '{}' is missing", op, what));
  if (b.size >= bytes) return Status::Ok();
  return Status::InvalidArgument(fmt::format("{}: buffer '{}' has {} bytes; the shape needs {}", op, what, b.size, bytes));
}

RoutePush route_push(const MoePlanLayout& L, uint32_t tokens, uint32_t k, bool build_plan) {
  return {tokens, k, L.n_expert, build_plan ? 1u : 0u, L.n_entries, L.offsets, L.entries, L.slot_pair, L.pair_slot, L.row_ids,
          L.slot_ids};
}

}  // namespace

MoePlanLayout MoePlanLayout::make(uint32_t max_pairs, uint32_t n_expert) {
  MoePlanLayout L;
  L.max_pairs = max_pairs;
  L.n_expert = n_expert;
  uint32_t at = 0;
  auto take = [&](uint32_t words) {
    const uint32_t o = at;
    at += (words + 63) / 64 * 64;  // 256-byte aligned: any array can be bound on its own (a grouped GEMM's
    return o;                      // expert_offsets / row_ids) on every device's minStorageBufferOffsetAlignment
  };
  L.n_entries = take(1);
  L.offsets = take(n_expert + 1);
  L.entries = take(2 * max_entries(max_pairs, n_expert));
  L.slot_pair = take(max_pairs);
  L.pair_slot = take(max_pairs);
  L.row_ids = take(max_pairs);
  L.slot_ids = take(max_pairs);
  L.words = at;
  return L;
}

Result<MoeRoute> MoeRoute::create(vk::Device& dev) {
  if (!dev.features().subgroup_arithmetic) {
    return Status::Unsupported(fmt::format("moe_route: device {} lacks subgroup arithmetic in compute shaders, which "
                                           "the MoE routing kernel needs", dev.features().name));
  }
  auto r = dev.pipeline({"moe_route", {}, sizeof(RoutePush), 4, 256});
  if (!r.ok()) return r.status();
  auto p = dev.pipeline({"moe_plan", {}, sizeof(RoutePush), 2, 256});
  if (!p.ok()) return p.status();
  // The router's workgroup size and 16-byte loads per lane in flight per round: 128 and 8 unless
  // TROVE_MOE_ROUTER_WG=32|64|128|256 / TROVE_MOE_ROUTER_LOADS=4|8|16 (measurements). H200, 30B-A3B,
  // bench/engine/ab.sh --rounds 2 --depth 4096 (2026-12-04 17:30): GPU per decode step 4153 / 4146 µs
  // with 8 loads against 4226 / 4223 with 16 (a whole 2048-column row per round; tg128 236 -> 240);
  // workgroups of 32 4192 / 4174, of 256 no better than 128, 32 with 8 loads 4154 / 4161.
  // A workgroup per expert row (TROVE_MOE_ROUTER_SPLIT=1, the default; 0: a subgroup per row): H100,
  // 30B-A3B, ab.sh --depth 4096 (2026-12-06 16:47): GPU per decode step 3872 / 3882 µs against 4418 /
  // 4403 with the fused router, 3524–3531 against 4100 with the router beside O.
  uint32_t router_wg = 128, router_loads = 8, router_split = 1;
  for (auto [name, to, ok] : {std::tuple{"TROVE_MOE_ROUTER_WG", &router_wg, "32, 64, 128 or 256"},
                              std::tuple{"TROVE_MOE_ROUTER_LOADS", &router_loads, "4, 8 or 16"},
                              std::tuple{"TROVE_MOE_ROUTER_SPLIT", &router_split, "0 or 1"}}) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    const std::string_view w(v);
    const bool bad = to == &router_wg      ? (w != "32" && w != "64" && w != "128" && w != "256")
                     : to == &router_loads ? (w != "4" && w != "8" && w != "16")
                                           : (w != "0" && w != "1");
    if (bad) return Status::InvalidArgument(fmt::format("{}='{}' is not {}", name, v, ok));
    *to = static_cast<uint32_t>(std::stoul(std::string(w)));
  }
  router_wg = std::max(router_wg, dev.features().subgroup_size);
  // Split rows reduce one partial per subgroup in shared memory (moe_router.comp kMaxSubgroups).
  if (router_split && router_wg / std::max<uint32_t>(1, dev.features().subgroup_size) > 32) router_split = 0;
  auto rt =
      dev.pipeline({"moe_router", {router_wg, router_loads, router_split}, sizeof(RouterPush), 8, router_wg});
  if (!rt.ok()) return rt.status();
  auto count = dev.buffer(16);
  if (!count.ok()) return count.status();
  TROVE_RETURN_IF_ERROR(count->fill(0));
  MoeRoute op;
  op.route_ = std::move(*r);
  op.plan_ = std::move(*p);
  op.router_ = std::move(*rt);
  op.count_ = std::move(*count);
  op.subgroup_ = std::max<uint32_t>(1, dev.features().subgroup_size);
  op.router_wg_ = router_wg;
  op.router_split_ = router_split != 0;
  return op;
}

Status MoeRoute::check(const MoePlanLayout& L, uint32_t tokens, uint32_t k, vk::BufferRange plan) const {
  if (L.n_expert == 0 || L.n_expert > kMaxExperts || k == 0 || k > std::min(kMaxTopK, L.n_expert)) {
    return Status::InvalidArgument(fmt::format("moe_route: {} experts and top-k {}: need 1..{} experts and k in 1..min({}, experts)",
                                               L.n_expert, k, kMaxExperts, kMaxTopK));
  }
  if (tokens == 0 || uint64_t{tokens} * k > L.max_pairs) {
    return Status::InvalidArgument(fmt::format("moe_route: {} tokens × top-k {} pairs; the plan holds 1..{}", tokens, k,
                                               L.max_pairs));
  }
  return need("moe_route", "plan", plan, L.bytes());
}

Status MoeRoute::record(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange ids, vk::BufferRange weights,
                        vk::BufferRange plan, const MoePlanLayout& L, uint32_t tokens, uint32_t k) const {
  TROVE_RETURN_IF_ERROR(check(L, tokens, k, plan));
  TROVE_RETURN_IF_ERROR(need("moe_route", "logits", logits, uint64_t{tokens} * L.n_expert * 4));
  TROVE_RETURN_IF_ERROR(need("moe_route", "ids", ids, uint64_t{tokens} * k * 4));
  TROVE_RETURN_IF_ERROR(need("moe_route", "weights", weights, uint64_t{tokens} * k * 4));
  vk::BufferRange b[4] = {logits, ids, weights, plan};
  if (tokens <= kFusedRouteTokens) {
    const RoutePush push = route_push(L, tokens, k, true);
    return s.dispatch(route_, b, &push, sizeof(push), 1);
  }
  const RoutePush push = route_push(L, tokens, k, false);
  const uint32_t per_group = std::max<uint32_t>(1, 256 / subgroup_);  // tokens per workgroup (one per subgroup)
  TROVE_RETURN_IF_ERROR(s.dispatch(route_, b, &push, sizeof(push), std::min<uint32_t>(65535, (tokens + per_group - 1) / per_group)));
  s.barrier();
  vk::BufferRange pb[2] = {ids, plan};
  return s.dispatch(plan_, pb, &push, sizeof(push), 1);
}

Status MoeRoute::record_ids(vk::CommandStream& s, vk::BufferRange logits, vk::BufferRange ids, vk::BufferRange weights,
                            uint32_t n_experts, uint32_t tokens, uint32_t k) const {
  if (n_experts == 0 || n_experts > kMaxExperts || k == 0 || k > std::min(kMaxTopK, n_experts) || tokens == 0) {
    return Status::InvalidArgument(fmt::format("moe_route: {} experts, top-k {}, {} tokens: need 1..{} experts, k in "
                                               "1..min({}, experts) and tokens > 0", n_experts, k, tokens, kMaxExperts, kMaxTopK));
  }
  TROVE_RETURN_IF_ERROR(need("moe_route", "logits", logits, uint64_t{tokens} * n_experts * 4));
  TROVE_RETURN_IF_ERROR(need("moe_route", "ids", ids, uint64_t{tokens} * k * 4));
  TROVE_RETURN_IF_ERROR(need("moe_route", "weights", weights, uint64_t{tokens} * k * 4));
  MoePlanLayout L;
  L.n_expert = n_experts;
  const RoutePush push = route_push(L, tokens, k, false);
  vk::BufferRange b[4] = {logits, ids, weights, ids};  // no plan: binding 3 is never written without build_plan
  const uint32_t per_group = std::max<uint32_t>(1, 256 / subgroup_);
  return s.dispatch(route_, b, &push, sizeof(push), std::min<uint32_t>(65535, (tokens + per_group - 1) / per_group));
}

Status MoeRoute::record_router(vk::CommandStream& s, const MoeRouterCall& c) const {
  if (c.n_experts == 0 || c.n_experts > kMaxExperts || c.k == 0 || c.k > std::min(kMaxTopK, c.n_experts) ||
      c.tokens == 0 || c.tokens > kRouterMaxTokens || c.cols == 0 || c.cols % 4 != 0) {
    return Status::InvalidArgument(fmt::format("moe_router: {} experts, top-k {}, {} tokens, {} columns: need 1..{} experts, "
                                               "k in 1..min({}, experts), 1..{} tokens and a positive multiple of 4 columns",
                                               c.n_experts, c.k, c.tokens, c.cols, kMaxExperts, kMaxTopK, kRouterMaxTokens));
  }
  if (c.mode != MoeRouterCall::kNormRoute && c.mode != MoeRouterCall::kPlain &&
      c.mode != MoeRouterCall::kBiasRouteRaw && c.mode != MoeRouterCall::kBiasLogits) {
    return Status::InvalidArgument(fmt::format("moe_router: mode {} is not one of MoeRouterCall::Mode",
                                               static_cast<uint32_t>(c.mode)));
  }
  const bool norm = c.mode == MoeRouterCall::kNormRoute;
  const bool routes = c.mode != MoeRouterCall::kPlain && c.mode != MoeRouterCall::kBiasLogits;
  const bool biased = c.mode == MoeRouterCall::kBiasRouteRaw || c.mode == MoeRouterCall::kBiasLogits;
  TROVE_RETURN_IF_ERROR(need("moe_router", "x", c.x, uint64_t{c.tokens} * c.cols * 4));
  if (norm) TROVE_RETURN_IF_ERROR(need("moe_router", "norm_w", c.norm_w, uint64_t{c.cols} * 4));
  TROVE_RETURN_IF_ERROR(need("moe_router", "router", c.router, uint64_t{c.n_experts} * c.cols * 4));
  TROVE_RETURN_IF_ERROR(need("moe_router", "logits", c.logits, uint64_t{c.tokens} * c.n_experts * 4));
  if (routes) {
    TROVE_RETURN_IF_ERROR(need("moe_router", "ids", c.ids, uint64_t{c.tokens} * c.k * 4));
    TROVE_RETURN_IF_ERROR(need("moe_router", "weights", c.weights, uint64_t{c.tokens} * c.k * 4));
  }
  if (biased) {
    TROVE_RETURN_IF_ERROR(need("moe_router", "bias", c.bias, uint64_t{c.tokens} * c.n_experts * 4));
    if (c.bias.buffer == c.logits.buffer) {
      return Status::InvalidArgument(
          "moe_router: the bias must not be the logits' buffer (workgroups write logits "
          "while others still read the bias); give it its own");
    }
  }
  const RouterPush push{c.cols, c.tokens, c.n_experts, c.k, c.eps, static_cast<uint32_t>(c.mode)};
  // Unused bindings get a buffer the call has (never read or written in that mode).
  vk::BufferRange b[8] = {c.x,
                          norm ? c.norm_w : c.x,
                          c.router,
                          c.logits,
                          routes ? c.ids : c.logits,
                          routes ? c.weights : c.logits,
                          count_,
                          biased ? c.bias : c.x};
  // One subgroup per expert row, or one workgroup per row (split).
  const uint32_t rows_per_group = router_split_ ? 1 : std::max<uint32_t>(1, router_wg_ / subgroup_);
  return s.dispatch(router_, b, &push, sizeof(push), (c.n_experts + rows_per_group - 1) / rows_per_group);
}

Status MoeRoute::record_plan(vk::CommandStream& s, vk::BufferRange ids, vk::BufferRange plan, const MoePlanLayout& L,
                             uint32_t tokens, uint32_t k) const {
  TROVE_RETURN_IF_ERROR(check(L, tokens, k, plan));
  TROVE_RETURN_IF_ERROR(need("moe_plan", "ids", ids, uint64_t{tokens} * k * 4));
  const RoutePush push = route_push(L, tokens, k, false);
  vk::BufferRange pb[2] = {ids, plan};
  return s.dispatch(plan_, pb, &push, sizeof(push), 1);
}

Result<MoeFfn> MoeFfn::create(vk::Device& dev, uint32_t slots_per_pass, bool gpu_form) {
  if (slots_per_pass > MoePlanLayout::kSlotsPerEntry) {
    return Status::InvalidArgument(fmt::format("moe_ffn: {} slots per pass; use 1..{}", slots_per_pass,
                                               MoePlanLayout::kSlotsPerEntry));
  }
  for (const char* sh : {"moe_experts", "moe_experts_nosg", "moe_experts_direct", "moe_down", "moe_down_nosg", "moe_down_direct",
                         "moe_experts_q8", "moe_down_q8"}) {
    if (!vk::find_shader(sh).words) {
      return Status::NotFound(fmt::format("moe_ffn: shader {} is not embedded in this build (rebuild trove_kernels)", sh));
    }
  }
  auto cb = dev.pipeline({"moe_combine", {}, sizeof(CombinePush), 4, 256});
  if (!cb.ok()) return cb.status();
  auto ga = dev.pipeline({"moe_gather_f16", {}, 8, 3, 256});
  if (!ga.ok()) return ga.status();
  MoeFfn op;
  op.gather_ = std::move(*ga);
  if (const char* v = std::getenv("TROVE_MOE_GATHER"); v && *v) {
    if (std::string_view(v) != "0" && std::string_view(v) != "1") {
      return Status::InvalidArgument(fmt::format(
          "TROVE_MOE_GATHER='{}' is not a choice; use 1 (the MoE prefill puts the f16 rows in slot order "
          "first, the default where the grouped GEMM loads them as they lie) or 0 (the grouped GEMMs gather "
          "them per element)", v));
    }
    op.gather_rows_ = v[0] == '1';
  }
  for (uint32_t h = 0; h < 2; ++h) {
    auto sw = dev.pipeline({"moe_swiglu", {h}, sizeof(SwiGluPush), 3, 256});
    if (!sw.ok()) return sw.status();
    op.swiglu_[h] = std::move(*sw);
  }
  op.dev_ = &dev;
  VkPhysicalDeviceProperties props;
  vkGetPhysicalDeviceProperties(dev.physical(), &props);
  op.shared_bytes_ = props.limits.maxComputeSharedMemorySize;
  const auto& f = dev.features();
  op.cpu_ = f.is_cpu && !gpu_form;
  // The first reduction stage adds within a subgroup, which must tile a 32-lane row group; lavapipe
  // takes the shared-memory form (subgroup operations cost it seconds of compile per pipeline).
  const uint32_t sg = f.subgroup_size;
  if (!op.cpu_ && f.subgroup_arithmetic && sg >= 4 && sg <= kGroupLanes && (sg & (sg - 1)) == 0) op.subgroup_ = sg;
  op.slots_per_pass_ = slots_per_pass ? slots_per_pass : (op.cpu_ ? 1 : 0);
  if (f.subgroup_arithmetic && sg >= 4 && sg <= 64 && (sg & (sg - 1)) == 0) op.direct_lanes_ = sg;
  op.direct_default_ = !f.is_cpu && op.direct_lanes_ != 0;
  op.q8_ok_ = f.integer_dot_product && f.subgroup_shuffle && op.direct_lanes_ != 0;  // shuffles: the half-block staging
  // The q8 form by default on GPUs that can run it, 1 row per row group over ~1024 workgroups. H200
  // (2026-12-03, same call, 30B-A3B): tg64 191.8 tok/s against 185.7 for the direct form; 8 streams
  // together 659.9 against 498.7; verifying 8 tokens at depth 4096 14.5 ms (argmax equal to one-token
  // decoding at every k).
  op.q8_default_ = op.q8_ok_ && !f.is_cpu;
  if (const char* v = std::getenv("TROVE_MOE_Q8_WORKGROUPS"); v && *v) {
    char* end = nullptr;
    const unsigned long n = std::strtoul(v, &end, 10);
    if (*end != '\0' || n == 0 || n > 65535) {
      return Status::InvalidArgument(fmt::format("TROVE_MOE_Q8_WORKGROUPS='{}' is not a number of workgroups (1..65535)", v));
    }
    op.q8_workgroups_ = static_cast<uint32_t>(n);
  }
  if (const char* v = std::getenv("TROVE_MOE_Q6_WIDE"); v && *v) {
    if (std::string_view(v) != "0" && std::string_view(v) != "1") {
      return Status::InvalidArgument(fmt::format("TROVE_MOE_Q6_WIDE='{}' is not 0 or 1 (Q6_K experts in 16- or 32-value parts)", v));
    }
    op.q6_wide_ = v[0] == '1';
  }
  if (const char* v = std::getenv("TROVE_MOE_Q8_ROWS"); v && *v) {
    const std::string_view r(v);
    if (r != "1" && r != "2" && r != "4") {
      return Status::InvalidArgument(fmt::format("TROVE_MOE_Q8_ROWS='{}' is not a number of rows per row group (1, 2 or 4)", v));
    }
    op.q8_rows_ = static_cast<uint32_t>(r[0] - '0');
  }
  // GPUs: workgroups of 256 and down's rows split over 2 subgroups. H200, 30B-A3B, bench/engine/ab.sh in
  // three calls (2026-12-04 14:50–15:20): GPU per decode step 5062 / 5075 against 5132 / 5117 µs, 4656 /
  // 4634 against 4749 / 4706, 4664 / 4684 against 4755 / 4725; either alone is no better (256 alone
  // 5322 / 5105, split 2 alone 5297 / 5319).
  if (!op.cpu_) {
    op.q8_wg_ = 256;
    op.q8_down_split_ = 2;
  }
  // TROVE_MOE_Q8_DOWN_SPLIT=1|2|4: subgroups of a moe_down_q8 workgroup sharing one row group's rows
  // (the dense q8 matvec's split rows; at one token each lane walks 6 items of a 30B-A3B row one after
  // another).
  if (const char* v = std::getenv("TROVE_MOE_Q8_DOWN_SPLIT"); v && *v) {
    const std::string_view r(v);
    if (r != "1" && r != "2" && r != "4") {
      return Status::InvalidArgument(fmt::format("TROVE_MOE_Q8_DOWN_SPLIT='{}' is not 1, 2 or 4 (subgroups per row group)", v));
    }
    op.q8_down_split_ = static_cast<uint32_t>(r[0] - '0');
  }
  // TROVE_MOE_Q8_TOUCH=N (0..8, default 4): each invocation of the q8 gate/up kernel loads a word of N
  // 32-byte sectors of its first row block (gate and up in turn) before staging x̂ and uses them after
  // it (moe_experts_q8.comp: kTouch), so the expert's rows come from memory during the staging. Same
  // numbers. H200, 30B-A3B (2026-12-05): GPU 4070-4081 -> 4013-4027 us a decode step; the same touch in
  // the dense q8 matvec lost 8% there (3394-3407 -> 3664-3684 us) and was not kept.
  if (const char* v = std::getenv("TROVE_MOE_Q8_TOUCH"); v && *v) {
    const std::string_view n(v);
    if (n.size() != 1 || n[0] < '0' || n[0] > '8') {
      return Status::InvalidArgument(fmt::format("TROVE_MOE_Q8_TOUCH='{}' is not a number of weight sectors (0..8)", v));
    }
    op.q8_touch_ = static_cast<uint32_t>(n[0] - '0');
  }
  // TROVE_MOE_Q8_WG=128|256|512|1024: invocations per workgroup of the q8 expert kernels (each
  // workgroup stages its inputs once, so larger ones stage less per row; default 256 on GPUs, else
  // kDirectWorkgroup). MoeTuning::workgroup overrides it.
  if (const char* v = std::getenv("TROVE_MOE_Q8_WG"); v && *v) {
    const std::string_view w(v);
    if (w != "128" && w != "256" && w != "512" && w != "1024") {
      return Status::InvalidArgument(fmt::format("TROVE_MOE_Q8_WG='{}' is not 128, 256, 512 or 1024 (invocations per workgroup)", v));
    }
    op.q8_wg_ = static_cast<uint32_t>(std::stoul(std::string(w)));
  }
  // TROVE_MOE_GROUPED_MIN=N (9 or more): the fewest tokens whose experts run as grouped GEMMs (default
  // kGroupedMinTokens); for A/B of the staged expert products against the grouped GEMMs at small steps.
  if (const char* v = std::getenv("TROVE_MOE_GROUPED_MIN"); v && *v) {
    char* end = nullptr;
    const unsigned long n = std::strtoul(v, &end, 10);
    if (end == v || *end != 0 || n <= kDecodeMaxTokens || n > (1ul << 20)) {
      return Status::InvalidArgument(fmt::format(
          "TROVE_MOE_GROUPED_MIN='{}' is not a token count; give the fewest tokens ({} or more) whose "
          "experts run as grouped GEMMs (default {})", v, kDecodeMaxTokens + 1, kGroupedMinTokens));
    }
    op.grouped_min_tokens_ = static_cast<uint32_t>(n);
  }
  if (const char* v = std::getenv("TROVE_MOE"); v && *v) {
    const std::string_view form(v);
    if (form == "q8") {
      if (!op.q8_ok_) {
        return Status::Unsupported(fmt::format("TROVE_MOE=q8 needs integer dot products (VK_KHR_shader_integer_dot_product) "
                                               "and subgroup arithmetic and shuffles, which device {} lacks; use TROVE_MOE=direct or "
                                               "staged", f.name));
      }
      op.direct_default_ = op.q8_default_ = true;
    } else if (form == "staged") {
      op.direct_default_ = op.q8_default_ = false;
    } else if (form == "direct") {
      op.q8_default_ = false;
      if (op.direct_lanes_ == 0) {
        return Status::Unsupported(fmt::format("TROVE_MOE=direct needs subgroup arithmetic (subgroups of 4..64 lanes), "
                                               "which device {} lacks; use TROVE_MOE=staged", f.name));
      }
      op.direct_default_ = true;
    } else {
      return Status::InvalidArgument(fmt::format("TROVE_MOE='{}' is not an expert kernel form (staged, direct or q8)", v));
    }
  }
  op.cache_ = std::make_unique<Cache>();
  op.combine_ = std::move(*cb);
  return op;
}

Result<const vk::Pipeline*> MoeFfn::pipeline(const char* shader, std::vector<uint32_t> spec, uint32_t push_bytes,
                                             uint32_t bindings, uint32_t local) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  auto key = std::make_tuple(std::string(shader), spec);
  auto it = cache_->pipelines.find(key);
  if (it != cache_->pipelines.end()) return it->second.get();
  auto p = dev_->pipeline({shader, std::move(spec), push_bytes, bindings, local});
  if (!p.ok()) return p.status();
  auto owned = std::make_unique<vk::Pipeline>(std::move(*p));
  const vk::Pipeline* raw = owned.get();
  cache_->pipelines.emplace(std::move(key), std::move(owned));
  return raw;
}

namespace {
Status check_experts(const char* what, const StackedExperts& m, uint32_t rows, uint32_t cols, uint32_t n_expert) {
  const auto t = quant::traits(m.type);
  if (!t) {
    return Status::Unsupported(fmt::format("moe_ffn: {} experts have type id {}, not supported (supported: {})", what,
                                           static_cast<uint32_t>(m.type), quant::supported_type_names()));
  }
  if (m.rows != rows || m.cols != cols || m.n_expert != n_expert) {
    return Status::InvalidArgument(fmt::format("moe_ffn: {} experts are {}×[{}×{}]; the layer needs {}×[{}×{}]", what,
                                               m.n_expert, m.rows, m.cols, n_expert, rows, cols));
  }
  if (cols % 32 != 0 || cols % static_cast<uint32_t>(t->block_values) != 0) {
    return Status::InvalidArgument(fmt::format("moe_ffn: {} experts have {} columns; the kernels need a multiple of 32 "
                                               "(and of {} for {})", what, cols, t->block_values, t->name));
  }
  const uint64_t bytes = uint64_t{n_expert} * rows * quant::row_bytes(m.type, cols);
  if (bytes >= (uint64_t{1} << 32)) {
    return Status::Unsupported(fmt::format("moe_ffn: {} experts take {} bytes; the kernels address at most 4 GiB per "
                                           "stacked tensor", what, bytes));
  }
  return need("moe_ffn", what, m.w, bytes);
}
}  // namespace

bool MoeFfn::direct() const {
  if (tuning_.form == MoeTuning::Form::kAuto) return direct_default_;
  return tuning_.form == MoeTuning::Form::kDirect || tuning_.form == MoeTuning::Form::kQ8;
}

bool MoeFfn::q8() const {
  return tuning_.form == MoeTuning::Form::kAuto ? q8_default_ : tuning_.form == MoeTuning::Form::kQ8;
}

namespace {
Status check_direct_tuning(const MoeTuning& t, uint32_t lanes) {
  if (lanes == 0) return Status::Unsupported("moe_ffn: the direct form needs subgroup arithmetic (use the staged form)");
  for (uint32_t r : {t.gate_up_rows, t.down_rows}) {
    if (r != 0 && r != 1 && r != 2 && r != 4) {
      return Status::InvalidArgument(fmt::format("moe_ffn: {} rows per row group; use 1, 2 or 4", r));
    }
  }
  if (t.workgroup != 0 && (t.workgroup % lanes != 0 || t.workgroup > 1024)) {
    return Status::InvalidArgument(fmt::format("moe_ffn: workgroup of {} invocations; use a multiple of the subgroup ({}) up "
                                               "to 1024", t.workgroup, lanes));
  }
  return Status::Ok();
}
}  // namespace

Status MoeFfn::check(const MoeFfnCall& c) const {
  const uint32_t E = c.gate.n_expert, ffn = c.gate.rows, hidden = c.gate.cols, T = c.tokens, k = c.k;
  TROVE_RETURN_IF_ERROR(check_experts("gate", c.gate, ffn, hidden, E));
  TROVE_RETURN_IF_ERROR(check_experts("up", c.up, ffn, hidden, E));
  TROVE_RETURN_IF_ERROR(check_experts("down", c.down, hidden, ffn, E));
  if (E != c.layout.n_expert || E > kMaxExperts || k == 0 || k > std::min(kMaxTopK, E) || T == 0 ||
      (!c.by_pair && uint64_t{T} * k > c.layout.max_pairs)) {
    return Status::InvalidArgument(fmt::format(
        "moe_ffn: {} experts, top-k {}, {} tokens with a plan for {} experts and {} pairs (need experts <= {}, "
        "k in 1..min({}, experts), tokens × k <= the plan's pairs)", E, k, T, c.layout.n_expert, c.layout.max_pairs,
        kMaxExperts, kMaxTopK));
  }
  const uint64_t P = uint64_t{T} * k;
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "xn", c.xn, uint64_t{T} * hidden * 4));
  if (c.norm_w.buffer != VK_NULL_HANDLE) {
    if (!direct() || grouped(c)) {
      return Status::InvalidArgument("moe_ffn: the RMSNorm prologue (norm_w) needs the direct expert kernels and no "
                                     "grouped-GEMM prefill; normalise xn before the call instead");
    }
    TROVE_RETURN_IF_ERROR(need("moe_ffn", "norm_w", c.norm_w, uint64_t{hidden} * 4));
  }
  if (c.weights_raw && (!c.by_pair || c.norm_w.buffer == VK_NULL_HANDLE)) {
    return Status::InvalidArgument(
        "moe_ffn: raw router logits as weights (weights_raw) need the pair-indexed decode "
        "(by_pair) with the RMSNorm prologue (norm_w): its 1/rms scales them");
  }
  if (c.route_logits.buffer != VK_NULL_HANDLE) {
    if (!c.weights_raw || !routes_in_gate_up(c)) {
      return Status::InvalidArgument(
          "moe_ffn: routing in the gate/up kernel (route_logits) needs the q8 form's pair-indexed decode "
          "(MoeFfn::routes_in_gate_up) with raw weights (weights_raw); route with MoeRoute instead");
    }
    TROVE_RETURN_IF_ERROR(need("moe_ffn", "route_logits", c.route_logits, uint64_t{T} * E * 4));
  }
  if (c.xn_f16.buffer != VK_NULL_HANDLE) TROVE_RETURN_IF_ERROR(need("moe_ffn", "xn_f16", c.xn_f16, uint64_t{T} * hidden * 2));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "x", c.x, uint64_t{T} * hidden * 4));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "ids", c.ids, P * 4));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "weights", c.weights, P * 4));
  if (c.by_pair) {
    if (!direct() || T > kDecodeMaxTokens) {
      return Status::InvalidArgument(fmt::format("moe_ffn: pair-indexed experts (by_pair) need the direct kernels and at "
                                                 "most {} tokens (a step of {})", kDecodeMaxTokens, T));
    }
  } else {
    TROVE_RETURN_IF_ERROR(need("moe_ffn", "plan", c.plan, c.layout.bytes()));
  }
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "h", c.h, P * ffn * 4));
  if (!fused_down(T, k)) TROVE_RETURN_IF_ERROR(need("moe_ffn", "d", c.d, P * hidden * 4));
  if (T > kDecodeMaxTokens && c.prefill == MoePrefill::kGroupedGemm && !c.matmul) {
    return Status::InvalidArgument("moe_ffn: the grouped-GEMM prefill was asked for without a Matmul op");
  }
  if (grouped(c)) {
    TROVE_RETURN_IF_ERROR(need("moe_ffn", "g", c.g, P * ffn * 4));
    TROVE_RETURN_IF_ERROR(need("moe_ffn", "u", c.u, P * ffn * 4));
  }
  return Status::Ok();
}

bool MoeFfn::grouped(const MoeFfnCall& c) const {
  if (c.tokens <= kDecodeMaxTokens || !c.matmul || c.prefill == MoePrefill::kExpertMatvec) return false;
  if (c.prefill == MoePrefill::kGroupedGemm) return true;
  // The grouped GEMM addresses experts at multiples of 16 bytes.
  const bool aligned = uint64_t{c.gate.rows} * quant::row_bytes(c.gate.type, c.gate.cols) % 16 == 0 &&
                       uint64_t{c.up.rows} * quant::row_bytes(c.up.type, c.up.cols) % 16 == 0 &&
                       uint64_t{c.down.rows} * quant::row_bytes(c.down.type, c.down.cols) % 16 == 0;
  return aligned && c.matmul->uses_coopmat() && c.tokens >= grouped_min_tokens_;
}

Status MoeFfn::record_grouped(vk::CommandStream& s, const MoeFfnCall& c) const {
  const uint32_t E = c.gate.n_expert, ffn = c.gate.rows, T = c.tokens, P = T * c.k;
  const auto& L = c.layout;
  auto part = [&](uint32_t word_off, uint64_t bytes) {
    vk::BufferRange r = c.plan;
    r.offset += uint64_t{word_off} * 4;  // 256-byte aligned in the plan (MoePlanLayout)
    r.size = bytes;
    return r;
  };
  const vk::BufferRange offsets = part(L.offsets, (E + 1) * 4ull), rows = part(L.row_ids, P * 4ull),
                        slots = part(L.slot_ids, P * 4ull);
  auto call = [&](const StackedExperts& m, uint32_t x_rows, bool x_f16, bool by_slot = false) {
    return GroupedMatmulCall{m.type, m.rows, m.cols, m.n_expert, uint64_t{m.rows} * quant::row_bytes(m.type, m.cols), P,
                             x_rows, 0, x_f16, by_slot};
  };
  const bool xh = c.xn_f16.buffer != VK_NULL_HANDLE;
  const uint32_t hidden = c.gate.cols;
  if (xh && gather_rows_.value_or(c.matmul->grouped_loads_slot_order()) && hidden % 8 == 0) {
    // The f16 rows in slot order into d (f32 [P][hidden], unused until down), then plain tile loads.
    vk::BufferRange xg = c.d;
    xg.size = uint64_t{P} * hidden * 2;
    const uint32_t words = hidden / 8, push[2] = {words, P};
    vk::BufferRange gb[3] = {c.xn_f16, rows, xg};
    TROVE_RETURN_IF_ERROR(s.dispatch(gather_, gb, push, sizeof(push), (words + 255) / 256, P));
    s.barrier();
    TROVE_RETURN_IF_ERROR(c.matmul->record_grouped(s, call(c.gate, P, true, true), c.gate.w, xg, offsets, slots, c.g));
    TROVE_RETURN_IF_ERROR(c.matmul->record_grouped(s, call(c.up, P, true, true), c.up.w, xg, offsets, slots, c.u));
  } else {
    const vk::BufferRange xin = xh ? c.xn_f16 : c.xn;
    TROVE_RETURN_IF_ERROR(c.matmul->record_grouped(s, call(c.gate, T, xh), c.gate.w, xin, offsets, rows, c.g));
    TROVE_RETURN_IF_ERROR(c.matmul->record_grouped(s, call(c.up, T, xh), c.up.w, xin, offsets, rows, c.u));
  }
  s.barrier();
  if (c.after) c.after(0);
  // Matrix units read f16 activations (rounded once here rather than per tile); the tiled path f32.
  const bool f16 = c.matmul->uses_coopmat();
  {
    const uint32_t pairs = P * ffn / 2, groups = (pairs + 255) / 256, gx = std::min<uint32_t>(groups, 65535);
    const SwiGluPush push{pairs, gx};
    vk::BufferRange b[3] = {c.g, c.u, c.h};
    TROVE_RETURN_IF_ERROR(s.dispatch(swiglu_[f16 ? 1 : 0], b, &push, sizeof(push), gx, (groups + gx - 1) / gx));
  }
  s.barrier();
  if (c.after) c.after(1);
  TROVE_RETURN_IF_ERROR(c.matmul->record_grouped(s, call(c.down, P, f16, true), c.down.w, c.h, offsets, slots, c.d));
  s.barrier();
  if (c.after) c.after(2);
  return record_combine(s, c);
}

bool MoeFfn::fused_down(uint32_t tokens, uint32_t k) const {
  if (tokens <= kDecodeMaxTokens && direct()) return true;  // moe_down_direct: no shared memory
  // moe_down stages the k SwiGLU rows of a token, at least 256 values each, in shared memory.
  const uint32_t wg = cpu_ ? kCpuWorkgroup : kGpuWorkgroup;
  return tokens <= kDecodeMaxTokens && k * 256 * kStagedBytesPerValue + wg / subgroup_ * 4 <= shared_bytes_;
}

Status MoeFfn::record(vk::CommandStream& s, const MoeFfnCall& c) const {
  TROVE_RETURN_IF_ERROR(check(c));
  if (grouped(c)) return record_grouped(s, c);
  TROVE_RETURN_IF_ERROR(record_gate_up(s, c));
  s.barrier();
  return record_down(s, c);
}

namespace {
// The largest tile (a multiple of 256 values, at most cols rounded up to 256) whose `columns` staged
// columns fit in `shared` bytes beside `reserved` (the reduction area).
uint32_t tile_for(uint32_t cols, uint32_t columns, uint32_t shared, uint32_t reserved) {
  const double room = shared > reserved ? shared - reserved : 0;
  uint32_t tile = static_cast<uint32_t>(room / (kStagedBytesPerValue * columns)) / 256 * 256;
  return std::clamp<uint32_t>(tile, 256, (cols + 255) / 256 * 256);
}
}  // namespace

Status MoeFfn::record_gate_up(vk::CommandStream& s, const MoeFfnCall& c) const {
  TROVE_RETURN_IF_ERROR(check(c));
  const uint32_t ffn = c.gate.rows, hidden = c.gate.cols;
  const uint32_t nb = slots_per_pass_ ? slots_per_pass_ : std::min(c.tokens, MoePlanLayout::kSlotsPerEntry);
  const auto& L = c.layout;
  const uint32_t entries = MoePlanLayout::max_entries(c.tokens * c.k, c.gate.n_expert);
  if (direct()) {
    TROVE_RETURN_IF_ERROR(check_direct_tuning(tuning_, direct_lanes_));
    auto q8 = record_gate_up_q8(s, c);
    if (!q8.ok()) return q8.status();
    if (*q8) return Status::Ok();
    const uint32_t g = direct_lanes_, rows = tuning_.gate_up_rows ? tuning_.gate_up_rows : 1;
    const uint32_t wg = tuning_.workgroup ? tuning_.workgroup : std::max(kDirectWorkgroup, g);
    auto p = pipeline("moe_experts_direct",
                      {wg, g, c.by_pair ? 1u : nb, rows, 1, 256, static_cast<uint32_t>(c.gate.type), static_cast<uint32_t>(c.up.type),
                       cpu_ ? 0u : 1u, g},
                      sizeof(ExpertsPush), 7, wg);
    if (!p.ok()) return p.status();
    ExpertsPush push{ffn,
                     hidden,
                     static_cast<uint32_t>(quant::row_bytes(c.gate.type, hidden)),
                     static_cast<uint32_t>(quant::row_bytes(c.up.type, hidden)),
                     c.k,
                     0,
                     L.n_entries,
                     L.entries,
                     L.slot_pair,
                     1,
                     hidden,
                     c.norm_w.buffer != VK_NULL_HANDLE ? 1u : 0u,
                     c.eps,
                     c.weights_raw ? 1u : 0u};
    vk::BufferRange b[7] = {c.xn,
                            c.gate.w,
                            c.up.w,
                            c.plan,
                            c.h,
                            c.norm_w.buffer != VK_NULL_HANDLE ? c.norm_w : c.xn,
                            c.weights_raw ? c.weights : c.h};
    const uint32_t rows_per_wg = wg / g * rows;
    if (c.by_pair) {  // grid rows = pairs; binding 3 = the ids; x_by_slot = 2 (see moe_experts_body.glsl)
      push.x_by_slot = 2;
      push.n_entries_off = c.tokens * c.k;
      b[3] = c.ids;
      return s.dispatch(**p, b, &push, sizeof(push), (ffn + rows_per_wg - 1) / rows_per_wg, c.tokens * c.k);
    }
    return s.dispatch(**p, b, &push, sizeof(push), (ffn + rows_per_wg - 1) / rows_per_wg, entries);
  }
  const uint32_t wg = cpu_ ? kCpuWorkgroup : kGpuWorkgroup, rows_per_group = 1;  // 2 slots: gate and up rows
  const uint32_t red = wg / subgroup_ * (2 * rows_per_group * nb) * 4;
  const uint32_t tile = tile_for(hidden, nb, shared_bytes_, red);
  auto p = pipeline(subgroup_ > 1 ? "moe_experts" : "moe_experts_nosg",
                    {wg, kGroupLanes, nb, rows_per_group, 1, tile, static_cast<uint32_t>(c.gate.type),
                     static_cast<uint32_t>(c.up.type), cpu_ ? 0u : 1u, subgroup_},
                    sizeof(ExpertsPush), 7, wg);
  if (!p.ok()) return p.status();
  const ExpertsPush push{ffn, hidden, static_cast<uint32_t>(quant::row_bytes(c.gate.type, hidden)),
                         static_cast<uint32_t>(quant::row_bytes(c.up.type, hidden)), c.k, 0, L.n_entries, L.entries,
                         L.slot_pair, (hidden + tile - 1) / tile, tile, 0, 0.f};
  vk::BufferRange b[7] = {c.xn, c.gate.w, c.up.w, c.plan, c.h, c.xn, c.h};  // 5, 6: the direct form's, unused
  const uint32_t rows_per_wg = wg / kGroupLanes * rows_per_group;
  return s.dispatch(**p, b, &push, sizeof(push), (ffn + rows_per_wg - 1) / rows_per_wg, entries);
}

Status MoeFfn::record_down(vk::CommandStream& s, const MoeFfnCall& c) const {
  TROVE_RETURN_IF_ERROR(check(c));
  const uint32_t ffn = c.gate.rows, hidden = c.gate.cols, T = c.tokens, k = c.k;
  const uint32_t td = static_cast<uint32_t>(c.down.type);
  const uint32_t rb_down = static_cast<uint32_t>(quant::row_bytes(c.down.type, ffn));
  const uint32_t wg = cpu_ ? kCpuWorkgroup : kGpuWorkgroup;
  const auto& L = c.layout;
  const bool dir = direct();
  if (dir) TROVE_RETURN_IF_ERROR(check_direct_tuning(tuning_, direct_lanes_));
  const uint32_t g = direct_lanes_, wg_direct = tuning_.workgroup ? tuning_.workgroup : std::max(kDirectWorkgroup, g);
  if (dir && fused_down(T, k)) {
    auto q8 = record_down_q8(s, c);
    if (!q8.ok()) return q8.status();
    if (*q8) return Status::Ok();
    const uint32_t rows = tuning_.down_rows ? tuning_.down_rows : 1;
    auto p = pipeline("moe_down_direct", {wg_direct, g, rows, 256, td, cpu_ ? 0u : 1u, g, k}, sizeof(DownPush), 6, wg_direct);
    if (!p.ok()) return p.status();
    const DownPush push{hidden, ffn, rb_down, k, L.pair_slot, 1, ffn, c.by_pair ? 1u : 0u};
    vk::BufferRange b[6] = {c.h, c.down.w, c.ids, c.weights, c.by_pair ? c.ids : c.plan, c.x};
    const uint32_t rows_per_wg = wg_direct / g * rows;
    return s.dispatch(**p, b, &push, sizeof(push), (hidden + rows_per_wg - 1) / rows_per_wg, T);
  }
  if (fused_down(T, k)) {
    const uint32_t rows_per_group = 1;
    const uint32_t red = wg / subgroup_ * rows_per_group * 4;
    const uint32_t tile = tile_for(ffn, k, shared_bytes_, red);
    auto p = pipeline(subgroup_ > 1 ? "moe_down" : "moe_down_nosg",
                      {wg, kGroupLanes, rows_per_group, tile, td, cpu_ ? 0u : 1u, subgroup_, k}, sizeof(DownPush), 6, wg);
    if (!p.ok()) return p.status();
    const DownPush push{hidden, ffn, rb_down, k, L.pair_slot, (ffn + tile - 1) / tile, tile, 0};
    vk::BufferRange b[6] = {c.h, c.down.w, c.ids, c.weights, c.plan, c.x};
    const uint32_t rows_per_wg = wg / kGroupLanes * rows_per_group;
    return s.dispatch(**p, b, &push, sizeof(push), (hidden + rows_per_wg - 1) / rows_per_wg, T);
  }
  // The expert-indexed kernel computes down per slot into d; the combine adds Σ_j w × d into x.
  const uint32_t nb = slots_per_pass_ ? slots_per_pass_ : MoePlanLayout::kSlotsPerEntry;
  ExpertsPush push{hidden, ffn, rb_down, rb_down, k, 1, L.n_entries, L.entries, L.slot_pair, 1, ffn, 0, 0.f};
  Result<const vk::Pipeline*> p = Status::Internal("moe_ffn: no down pipeline");
  uint32_t rows_per_wg = 0;
  if (dir) {
    const uint32_t rows = tuning_.down_rows ? tuning_.down_rows : 1;
    p = pipeline("moe_experts_direct", {wg_direct, g, nb, rows, 0, 256, td, td, cpu_ ? 0u : 1u, g},
                 sizeof(ExpertsPush), 7, wg_direct);
    rows_per_wg = wg_direct / g * rows;
  } else {
    const uint32_t rows_per_group = 2;
    const uint32_t red = wg / subgroup_ * (rows_per_group * nb) * 4;
    const uint32_t tile = tile_for(ffn, nb, shared_bytes_, red);
    p = pipeline(subgroup_ > 1 ? "moe_experts" : "moe_experts_nosg",
                 {wg, kGroupLanes, nb, rows_per_group, 0, tile, td, td, cpu_ ? 0u : 1u, subgroup_},
                 sizeof(ExpertsPush), 7, wg);
    push.ntiles = (ffn + tile - 1) / tile;
    push.tile_vals = tile;
    rows_per_wg = wg / kGroupLanes * rows_per_group;
  }
  if (!p.ok()) return p.status();
  vk::BufferRange b[7] = {c.h, c.down.w, c.down.w, c.plan,
                          c.d, c.h,      c.h};  // binding 6: the direct form's, unused
  const uint32_t entries = MoePlanLayout::max_entries(T * k, c.gate.n_expert);
  TROVE_RETURN_IF_ERROR(s.dispatch(**p, b, &push, sizeof(push), (hidden + rows_per_wg - 1) / rows_per_wg, entries));
  s.barrier();
  return record_combine(s, c);
}

namespace {
bool q8_type(quant::GgmlType t) {
  return t == quant::GgmlType::Q4_K || t == quant::GgmlType::Q5_K || t == quant::GgmlType::Q6_K || t == quant::GgmlType::Q8_0;
}
// Bytes of shared memory a q8 column of `cols` values takes (moe_*_q8.comp, matvec_q8_parts.glsl): the
// int8 values, a scale per 32 and two sums per 32 (f32), cols rounded up to 256.
uint64_t q8_column_bytes(uint32_t cols) { return uint64_t{(cols + 255) / 256 * 256} * 11 / 8; }

// The grid of a q8 kernel: `blocks` row blocks per grid row, `rows_y` grid rows; every workgroup
// stages its inputs once, so few enough that each walks several blocks, enough to fill the GPU.
uint32_t q8_grid_x(uint32_t blocks, uint32_t rows_y, uint32_t forced, uint32_t target, bool cpu) {
  if (!forced && cpu) return blocks;  // CPU devices: one block per workgroup
  const uint32_t want = forced ? forced : target;
  return std::clamp<uint32_t>((want + rows_y - 1) / rows_y, 1, blocks);
}
}  // namespace

bool MoeFfn::routes_in_gate_up(const MoeFfnCall& c) const {
  return q8_ok_ && q8() && direct() && c.by_pair && q8_type(c.gate.type) && q8_type(c.up.type) &&
         q8_column_bytes(c.gate.cols) + q8_workgroup() / direct_lanes_ * 4 <= shared_bytes_;
}

uint32_t MoeFfn::q8_workgroup() const {
  return tuning_.workgroup ? tuning_.workgroup : q8_wg_ ? q8_wg_ : std::max(kDirectWorkgroup, direct_lanes_);
}

Result<bool> MoeFfn::record_gate_up_q8(vk::CommandStream& s, const MoeFfnCall& c) const {
  if (!q8() || !c.by_pair || !q8_type(c.gate.type) || !q8_type(c.up.type)) return false;
  if (!q8_ok_) return Status::Unsupported("moe_ffn: the q8 form needs integer dot products and subgroup arithmetic and shuffles (use direct)");
  const uint32_t g = direct_lanes_, rows = tuning_.gate_up_rows ? tuning_.gate_up_rows : q8_rows_;
  const uint32_t wg = q8_workgroup();
  const uint32_t ffn = c.gate.rows, hidden = c.gate.cols, pairs = c.tokens * c.k;
  if (q8_column_bytes(hidden) + wg / g * 4 > shared_bytes_) return false;
  auto p = pipeline("moe_experts_q8",
                    {wg, g, rows, (hidden + 255) / 256 * 256, static_cast<uint32_t>(c.gate.type), static_cast<uint32_t>(c.up.type), hidden,
                     q6_wide(), q8_touch_},
                    sizeof(ExpertsQ8Push), 8, wg);
  if (!p.ok()) return p.status();
  const uint32_t rows_per_wg = wg / g * rows, blocks = (ffn + rows_per_wg - 1) / rows_per_wg;
  const uint32_t gx = q8_grid_x(blocks, pairs, tuning_.q8_workgroups, q8_workgroups_, cpu_);
  const bool norm = c.norm_w.buffer != VK_NULL_HANDLE, routes = c.route_logits.buffer != VK_NULL_HANDLE;
  const ExpertsQ8Push push{ffn, hidden, static_cast<uint32_t>(quant::row_bytes(c.gate.type, hidden)),
                           static_cast<uint32_t>(quant::row_bytes(c.up.type, hidden)), c.k, pairs, blocks, gx,
                           norm ? 1u : 0u, c.eps, c.weights_raw ? 1u : 0u, routes ? 1u : 0u, c.gate.n_expert};
  vk::BufferRange b[8] = {c.xn, c.gate.w, c.up.w, c.ids, c.h, norm ? c.norm_w : c.xn,
                          c.weights_raw ? c.weights : c.h, routes ? c.route_logits : c.xn};
  TROVE_RETURN_IF_ERROR(s.dispatch(**p, b, &push, sizeof(push), gx, pairs));
  return true;
}

Result<bool> MoeFfn::record_down_q8(vk::CommandStream& s, const MoeFfnCall& c) const {
  if (!q8() || !c.by_pair || !q8_type(c.down.type)) return false;
  if (!q8_ok_) return Status::Unsupported("moe_ffn: the q8 form needs integer dot products and subgroup arithmetic and shuffles (use direct)");
  const uint32_t g = direct_lanes_, rows = tuning_.down_rows ? tuning_.down_rows : q8_rows_;
  const uint32_t wg = tuning_.workgroup ? tuning_.workgroup : q8_wg_ ? q8_wg_ : std::max(kDirectWorkgroup, g);
  const uint32_t ffn = c.gate.rows, hidden = c.gate.cols, T = c.tokens;
  const uint32_t split = tuning_.down_split ? tuning_.down_split : q8_down_split_;
  if ((split != 1 && split != 2 && split != 4) || split > wg / g) {
    return Status::InvalidArgument(fmt::format("moe_ffn: q8 down split {} (1, 2 or 4, at most the {} subgroups of a "
                                               "workgroup)", split, wg / g));
  }
  if (c.k * (q8_column_bytes(ffn) + 4) + (split > 1 ? wg / g * rows * 4 : 0) > shared_bytes_) return false;
  auto p = pipeline("moe_down_q8",
                    {wg, g, rows, (ffn + 255) / 256 * 256, static_cast<uint32_t>(c.down.type), c.k, ffn, q6_wide(), split},
                    sizeof(DownQ8Push), 5, wg);
  if (!p.ok()) return p.status();
  const uint32_t rows_per_wg = wg / g / split * rows, blocks = (hidden + rows_per_wg - 1) / rows_per_wg;
  const uint32_t gx = q8_grid_x(blocks, T, tuning_.q8_workgroups, q8_workgroups_, cpu_);
  const DownQ8Push push{hidden, ffn, static_cast<uint32_t>(quant::row_bytes(c.down.type, ffn)), c.k, blocks, gx};
  vk::BufferRange b[5] = {c.h, c.down.w, c.ids, c.weights, c.x};
  TROVE_RETURN_IF_ERROR(s.dispatch(**p, b, &push, sizeof(push), gx, T));
  return true;
}

Status MoeFfn::record_combine(vk::CommandStream& s, const MoeFfnCall& c) const {
  const uint32_t hidden = c.gate.cols;
  const CombinePush push{hidden, c.k, c.layout.pair_slot};
  vk::BufferRange b[4] = {c.d, c.weights, c.plan, c.x};
  return s.dispatch(combine_, b, &push, sizeof(push), (hidden + 255) / 256, c.tokens);
}

}  // namespace trove::ops
