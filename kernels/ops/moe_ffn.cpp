#include "kernels/ops/moe_ffn.h"

#include <fmt/format.h>

namespace trove::ops {
namespace {

constexpr uint32_t kMaxExperts = 256;  // moe_plan.glsl: one invocation per expert, 256 per workgroup
constexpr uint32_t kMaxTopK = 32;      // moe_route.comp: unrolled rounds
constexpr uint32_t kWorkgroup = 128;   // moe_experts.comp / moe_down.comp local size

struct RoutePush {
  uint32_t tokens, k, n_experts, build_plan;
  uint32_t n_entries_off, offsets_off, entries_off, slot_pair_off, pair_slot_off, row_ids_off, slot_ids_off;
};
struct ExpertsPush { uint32_t rows, cols, rb_a, rb_b, k, x_by_slot, n_entries_off, entries_off, slot_pair_off; };
struct DownPush { uint32_t rows, cols, rb, k, pair_slot_off; };
struct CombinePush { uint32_t hidden, k, pair_slot_off; };

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
  MoeRoute op;
  op.route_ = std::move(*r);
  op.plan_ = std::move(*p);
  op.subgroup_ = std::max<uint32_t>(1, dev.features().subgroup_size);
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

Status MoeRoute::record_plan(vk::CommandStream& s, vk::BufferRange ids, vk::BufferRange plan, const MoePlanLayout& L,
                             uint32_t tokens, uint32_t k) const {
  TROVE_RETURN_IF_ERROR(check(L, tokens, k, plan));
  TROVE_RETURN_IF_ERROR(need("moe_plan", "ids", ids, uint64_t{tokens} * k * 4));
  const RoutePush push = route_push(L, tokens, k, false);
  vk::BufferRange pb[2] = {ids, plan};
  return s.dispatch(plan_, pb, &push, sizeof(push), 1);
}

Result<MoeFfn> MoeFfn::create(vk::Device& dev, uint32_t slots_per_pass) {
  if (slots_per_pass != 0 && (slots_per_pass > MoePlanLayout::kSlotsPerEntry || (slots_per_pass & (slots_per_pass - 1)))) {
    return Status::InvalidArgument(fmt::format("moe_ffn: {} slots per pass; use 1, 2, 4 or 8", slots_per_pass));
  }
  if (!dev.features().subgroup_arithmetic) {
    return Status::Unsupported(fmt::format("moe_ffn: device {} lacks subgroup arithmetic in compute shaders, which "
                                           "the MoE expert kernels need", dev.features().name));
  }
  auto cb = dev.pipeline({"moe_combine", {}, sizeof(CombinePush), 4, 256});
  if (!cb.ok()) return cb.status();
  MoeFfn op;
  op.dev_ = &dev;
  op.rows_per_wg_ = std::max<uint32_t>(1, kWorkgroup / std::max<uint32_t>(1, dev.features().subgroup_size));
  op.slots_per_pass_ = slots_per_pass ? slots_per_pass : dev.features().is_cpu ? 1 : MoePlanLayout::kSlotsPerEntry;
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
  if (cols % 64 != 0 || cols % static_cast<uint32_t>(t->block_values) != 0) {
    return Status::InvalidArgument(fmt::format("moe_ffn: {} experts have {} columns; the kernels need a multiple of 64 "
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

Status MoeFfn::check(const MoeFfnCall& c) const {
  const uint32_t E = c.gate.n_expert, ffn = c.gate.rows, hidden = c.gate.cols, T = c.tokens, k = c.k;
  TROVE_RETURN_IF_ERROR(check_experts("gate", c.gate, ffn, hidden, E));
  TROVE_RETURN_IF_ERROR(check_experts("up", c.up, ffn, hidden, E));
  TROVE_RETURN_IF_ERROR(check_experts("down", c.down, hidden, ffn, E));
  if (E != c.layout.n_expert || E > kMaxExperts || k == 0 || k > std::min(kMaxTopK, E) || T == 0 ||
      uint64_t{T} * k > c.layout.max_pairs) {
    return Status::InvalidArgument(fmt::format(
        "moe_ffn: {} experts, top-k {}, {} tokens with a plan for {} experts and {} pairs (need experts <= {}, "
        "k in 1..min({}, experts), tokens × k <= the plan's pairs)", E, k, T, c.layout.n_expert, c.layout.max_pairs,
        kMaxExperts, kMaxTopK));
  }
  const uint64_t P = uint64_t{T} * k;
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "xn", c.xn, uint64_t{T} * hidden * 4));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "x", c.x, uint64_t{T} * hidden * 4));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "ids", c.ids, P * 4));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "weights", c.weights, P * 4));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "plan", c.plan, c.layout.bytes()));
  TROVE_RETURN_IF_ERROR(need("moe_ffn", "h", c.h, P * ffn * 4));
  if (T > kDecodeMaxTokens) TROVE_RETURN_IF_ERROR(need("moe_ffn", "d", c.d, P * hidden * 4));
  return Status::Ok();
}

Status MoeFfn::record(vk::CommandStream& s, const MoeFfnCall& c) const {
  TROVE_RETURN_IF_ERROR(record_gate_up(s, c));
  s.barrier();
  return record_down(s, c);
}

Status MoeFfn::record_gate_up(vk::CommandStream& s, const MoeFfnCall& c) const {
  TROVE_RETURN_IF_ERROR(check(c));
  const uint32_t ffn = c.gate.rows, hidden = c.gate.cols, rpw = rows_per_wg_;
  const uint32_t entries = MoePlanLayout::max_entries(c.tokens * c.k, c.gate.n_expert);
  const uint32_t rb_gate = static_cast<uint32_t>(quant::row_bytes(c.gate.type, hidden)),
                 rb_up = static_cast<uint32_t>(quant::row_bytes(c.up.type, hidden));
  auto gu = pipeline("moe_experts", {static_cast<uint32_t>(c.gate.type), static_cast<uint32_t>(c.up.type), 1, rpw,
                                     slots_per_pass_}, sizeof(ExpertsPush), 5, kWorkgroup);
  if (!gu.ok()) return gu.status();
  const auto& L = c.layout;
  const ExpertsPush push{ffn, hidden, rb_gate, rb_up, c.k, 0, L.n_entries, L.entries, L.slot_pair};
  vk::BufferRange b[5] = {c.gate.w, c.up.w, c.xn, c.plan, c.h};
  return s.dispatch(**gu, b, &push, sizeof(push), (ffn + rpw - 1) / rpw, entries);
}

Status MoeFfn::record_down(vk::CommandStream& s, const MoeFfnCall& c) const {
  TROVE_RETURN_IF_ERROR(check(c));
  const uint32_t ffn = c.gate.rows, hidden = c.gate.cols, T = c.tokens, k = c.k, rpw = rows_per_wg_;
  const uint32_t td = static_cast<uint32_t>(c.down.type);
  const uint32_t rb_down = static_cast<uint32_t>(quant::row_bytes(c.down.type, ffn));
  const auto& L = c.layout;
  if (T <= kDecodeMaxTokens) {
    auto dn = pipeline("moe_down", {td, rpw}, sizeof(DownPush), 6, kWorkgroup);
    if (!dn.ok()) return dn.status();
    const DownPush push{hidden, ffn, rb_down, k, L.pair_slot};
    vk::BufferRange b[6] = {c.down.w, c.h, c.ids, c.weights, c.plan, c.x};
    return s.dispatch(**dn, b, &push, sizeof(push), (hidden + rpw - 1) / rpw, T);
  }
  auto dn = pipeline("moe_experts", {td, td, 0, rpw, slots_per_pass_}, sizeof(ExpertsPush), 5, kWorkgroup);
  if (!dn.ok()) return dn.status();
  {
    const ExpertsPush push{hidden, ffn, rb_down, rb_down, k, 1, L.n_entries, L.entries, L.slot_pair};
    vk::BufferRange b[5] = {c.down.w, c.down.w, c.h, c.plan, c.d};
    const uint32_t entries = MoePlanLayout::max_entries(T * k, c.gate.n_expert);
    TROVE_RETURN_IF_ERROR(s.dispatch(**dn, b, &push, sizeof(push), (hidden + rpw - 1) / rpw, entries));
  }
  s.barrier();
  const CombinePush push{hidden, k, L.pair_slot};
  vk::BufferRange b[4] = {c.d, c.weights, c.plan, c.x};
  return s.dispatch(combine_, b, &push, sizeof(push), (hidden + 255) / 256, T);
}

}  // namespace trove::ops
