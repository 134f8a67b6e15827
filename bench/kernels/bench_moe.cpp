#include "bench/kernels/bench_moe.h"
#include "bench/kernels/bench_timing.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <set>

#include <fmt/format.h>

#include "kernels/ops/matvec.h"
#include "kernels/ops/moe_ffn.h"

namespace trove::bench {
namespace {

using quant::GgmlType;



}  // namespace

Status bench_moe(vk::Device& dev, const MoeBenchOptions& o, std::vector<KernelRow>& rows) {
  const uint32_t H = o.quick ? 256 : 2048, F = o.quick ? 256 : 768, E = o.quick ? 16 : 128, K = o.quick ? 4 : 8;
  constexpr uint32_t kRoutings = 16;
  auto route = ops::MoeRoute::create(dev);
  if (!route.ok()) return route.status();
  auto ffn = ops::MoeFfn::create(dev);
  if (!ffn.ok()) return ffn.status();
  auto mm = ops::Matmul::create(dev);
  if (!mm.ok()) return mm.status();
  const uint64_t rb_gu = quant::row_bytes(GgmlType::Q4_K, H);
  auto gate = filled(dev, rb_gu * F * E), up = filled(dev, rb_gu * F * E);
  if (!gate.ok()) return gate.status();
  if (!up.ok()) return up.status();
  for (GgmlType down_type : {GgmlType::Q6_K, GgmlType::Q4_K}) {
    const uint64_t rb_dn = quant::row_bytes(down_type, F);
    auto down = filled(dev, rb_dn * H * E);
    if (!down.ok()) return down.status();
    const char* dname = down_type == GgmlType::Q6_K ? "Q6_K" : "Q4_K";
    for (uint32_t T : {1u, 2u, 4u, 8u, o.quick ? 16u : 512u}) {
      const std::string shape = fmt::format("{} {} tokens, down {}", o.quick ? "tiny" : "30B-A3B", T, dname);
      auto want = [&](const std::string& op) { return !o.wanted || o.wanted(op + " " + shape); };
      const uint32_t P = T * K;
      const auto L = ops::MoePlanLayout::make(P, E);
      auto xn = filled(dev, uint64_t{T} * H * 4, 0x3c23d70au), x = filled(dev, uint64_t{T} * H * 4, 0);
      auto logits = filled(dev, uint64_t{T} * E * 4, 0);
      auto h = filled(dev, uint64_t{P} * F * 4), d = filled(dev, uint64_t{P} * H * 4);
      auto g = filled(dev, uint64_t{P} * F * 4), u = filled(dev, uint64_t{P} * F * 4);
      auto norm_w = filled(dev, uint64_t{H} * 4, 0x3f800000u);  // 1.0f
      auto own_ids = filled(dev, uint64_t{P} * 4, 0), own_w = filled(dev, uint64_t{P} * 4, 0x3e000000u);
      for (auto* b : {&xn, &x, &logits, &h, &d, &g, &u, &norm_w, &own_ids, &own_w}) {
        if (!b->ok()) return b->status();
      }
      std::mt19937 rng(T);
      std::normal_distribution<float> nd(0.f, 2.f);
      std::vector<float> lg(size_t{T} * E);
      for (auto& v : lg) v = nd(rng);
      TROVE_RETURN_IF_ERROR(logits->upload(lg.data(), lg.size() * 4));
      struct Routing {
        vk::Buffer ids, w, plan;
      };
      std::vector<Routing> rts;
      double distinct = 0;
      auto s0 = dev.stream();
      if (!s0.ok()) return s0.status();
      for (uint32_t r = 0; r < kRoutings; ++r) {
        std::vector<uint32_t> ids(P);
        std::vector<float> w(P, 1.0f / K);
        std::set<uint32_t> used;
        for (uint32_t t = 0; t < T; ++t) {
          std::vector<uint32_t> all(E);
          std::iota(all.begin(), all.end(), 0u);
          std::shuffle(all.begin(), all.end(), rng);
          for (uint32_t j = 0; j < K; ++j) used.insert(ids[t * K + j] = all[j]);
        }
        distinct += double(used.size()) / kRoutings;
        auto bi = filled(dev, P * 4ull), bw = filled(dev, P * 4ull), bp = filled(dev, L.bytes());
        for (auto* b : {&bi, &bw, &bp}) {
          if (!b->ok()) return b->status();
        }
        TROVE_RETURN_IF_ERROR(bi->upload(ids.data(), P * 4ull));
        TROVE_RETURN_IF_ERROR(bw->upload(w.data(), P * 4ull));
        TROVE_RETURN_IF_ERROR(route->record_plan(*s0, *bi, *bp, L, T, K));
        rts.push_back({std::move(*bi), std::move(*bw), std::move(*bp)});
      }
      TROVE_RETURN_IF_ERROR(s0->submit_and_wait());
      uint32_t next = 0;
      bool by_pair = false;
      auto call = [&](ops::MoePrefill prefill = ops::MoePrefill::kExpertMatvec) {
        const Routing& r = rts[next++ % kRoutings];
        ops::MoeFfnCall c{{GgmlType::Q4_K, *gate, F, H, E}, {GgmlType::Q4_K, *up, F, H, E},
                          {down_type, *down, H, F, E}, T, K, *xn, r.ids, r.w, r.plan, L, *h, *d, *x,
                          &*mm, prefill, *g, *u};
        c.by_pair = by_pair;
        return c;
      };
      const double gu_bytes = distinct * 2.0 * F * rb_gu, dn_bytes = distinct * double(H) * rb_dn;
      auto add = [&](const std::string& op, double bytes, const std::function<Status(vk::CommandStream&)>& f) -> Status {
        if (!want(op)) return Status::Ok();
        auto t = time_reps(dev, o.reps, f);
        if (!t.ok()) return t.status();
        rows.push_back({op, shape, *t, bytes / *t / 1e3, 0});
        return Status::Ok();
      };
      if (down_type == GgmlType::Q6_K) {
        Routing& r0 = rts[0];
        TROVE_RETURN_IF_ERROR(add("moe route+plan", 4.0 * T * E, [&](vk::CommandStream& s) {
          return route->record(s, *logits, r0.ids, r0.w, r0.plan, L, T, K);
        }));
        TROVE_RETURN_IF_ERROR(add("moe route (ids only)", 4.0 * T * E, [&](vk::CommandStream& s) {
          return route->record_ids(s, *logits, r0.ids, r0.w, E, T, K);
        }));
        // The decode router from the residual stream (the FFN norm folded in; f32 weights, 16 copies so
        // that each rep reads its router from memory, as each layer's does): one dispatch (the
        // engine's default) against the norm + matvec, a barrier, and the routing (TROVE_MOE_ROUTER=split).
        if (T <= ops::MoeRoute::kRouterMaxTokens) {
          std::vector<vk::Buffer> routers;
          for (uint32_t i = 0; i < kRoutings; ++i) {
            auto b = filled(dev, uint64_t{E} * H * 4, 0x3c23d70au);  // 0.01f
            if (!b.ok()) return b.status();
            routers.push_back(std::move(*b));
          }
          auto norm_w = filled(dev, uint64_t{H} * 4, 0x3f800000u);  // 1.0f
          if (!norm_w.ok()) return norm_w.status();
          const double router_bytes = 4.0 * E * H;
          auto timed = [&](const std::string& op, const std::function<Status(vk::CommandStream&, int)>& f) -> Status {
            if (!want(op)) return Status::Ok();
            if (auto w = time_reps(dev, 1, f); !w.ok()) return w.status();  // warm-up: pipelines, first use
            auto t = time_reps(dev, o.reps, f);
            if (!t.ok()) return t.status();
            rows.push_back({op, shape, *t, router_bytes / *t / 1e3, 0});
            return Status::Ok();
          };
          TROVE_RETURN_IF_ERROR(timed("moe router+route (one dispatch)", [&](vk::CommandStream& s, int rep) {
            const ops::MoeRouterCall c{*xn, *norm_w, 1e-6f, routers[rep % kRoutings], *logits, r0.ids, r0.w, H, E, T, K};
            return route->record_router(s, c);
          }));
          auto mv = ops::Matvec::create(dev);
          if (!mv.ok()) return mv.status();
          TROVE_RETURN_IF_ERROR(timed("moe router matvec (+norm), route (ids)", [&](vk::CommandStream& s, int rep) {
            ops::MatvecCall c;
            c.cols = H;
            c.batch = T;
            c.x = *xn;
            c.norm_w = *norm_w;
            c.mats[0] = {GgmlType::F32, E, routers[rep % kRoutings], *logits, 0};
            TROVE_RETURN_IF_ERROR(mv->record(s, c));
            s.barrier();
            return route->record_ids(s, *logits, r0.ids, r0.w, E, T, K);
          }));
        }
      }
      // The expert dispatches in each kernel form (and, with --sweep, the direct form's work splits).
      struct Form {
        std::string name;
        ops::MoeTuning tuning;
        bool by_pair = false;  // MoeFfnCall::by_pair: no plan (the engine's decode)
      };
      std::vector<Form> forms = {{"staged", {ops::MoeTuning::Form::kStaged}}};
      if (dev.features().subgroup_arithmetic) {
        forms.push_back({"direct", {ops::MoeTuning::Form::kDirect}});
        if (T <= ops::MoeFfn::kDecodeMaxTokens) forms.push_back({"direct, by pair", {ops::MoeTuning::Form::kDirect}, true});
        // The q8 form (int8 activations, integer dot products; pair-indexed decode only): the default
        // split (2 rows per row group, 128 invocations, ~512 workgroups walking the row blocks), and at
        // 1 and 8 tokens 1 or 4 rows, 256 invocations, 256 or 1024 workgroups, one row block per
        // workgroup (every workgroup stages its inputs: the grid trades staging for width).
        if (T <= ops::MoeFfn::kDecodeMaxTokens && ffn->q8_supported()) {
          const auto Q8 = ops::MoeTuning::Form::kQ8;
          forms.push_back({"q8, by pair", {Q8}, true});
          if (T == 1 || T == 8) {
            forms.push_back({"q8 r1, by pair", {.form = Q8, .gate_up_rows = 1, .down_rows = 1}, true});
            forms.push_back({"q8 r4, by pair", {.form = Q8, .gate_up_rows = 4, .down_rows = 4}, true});
            forms.push_back({"q8 wg256, by pair", {.form = Q8, .workgroup = 256}, true});
            forms.push_back({"q8 256 wgs, by pair", {.form = Q8, .q8_workgroups = 256}, true});
            forms.push_back({"q8 1024 wgs, by pair", {.form = Q8, .q8_workgroups = 1024}, true});
            forms.push_back({"q8 block per wg, by pair", {.form = Q8, .q8_workgroups = 65535}, true});
          }
        }
        if (o.sweep && (T == 1 || T == 8)) {
          for (uint32_t rows : {1u, 2u, 4u}) {
            for (uint32_t wg : {64u, 128u, 256u}) {
              if (rows == 1 && wg == 128) continue;  // the default: the "direct" row
              const ops::MoeTuning t{.form = ops::MoeTuning::Form::kDirect,
                                     .gate_up_rows = rows,
                                     .down_rows = rows,
                                     .workgroup = wg};
              forms.push_back({fmt::format("direct r{} wg{}", rows, wg), t});
            }
          }
        }
      }
      for (const Form& f : forms) {
        ffn->set_tuning(f.tuning);
        by_pair = f.by_pair;
        if (down_type == GgmlType::Q6_K) {
          TROVE_RETURN_IF_ERROR(add(fmt::format("moe gate/up+SwiGLU (expert-indexed, {})", f.name), gu_bytes,
                                    [&](vk::CommandStream& s) { return ffn->record_gate_up(s, call()); }));
        }
        // The engine's decode gate/up with the router beside O (the FFN norm folded in, raw router logits
        // as weights): from ids MoeRoute wrote (TROVE_MOE_TOPK=router) or taking each token's top-k from
        // the logits itself (=experts) — the kernel-level cost of that top-k. Ids and weights of their own,
        // so the routings above stay as they are.
        if (down_type == GgmlType::Q6_K && f.by_pair && f.tuning.form == ops::MoeTuning::Form::kQ8) {
          for (const bool here : {false, true}) {
            const std::string op = fmt::format("moe gate/up+SwiGLU (expert-indexed, {}, norm, {})", f.name,
                                               here ? "top-k here" : "ids");
            TROVE_RETURN_IF_ERROR(add(op, gu_bytes, [&](vk::CommandStream& s) {
              ops::MoeFfnCall c = call();
              c.norm_w = *norm_w;
              c.eps = 1e-6f;
              c.weights_raw = true;
              c.weights = *own_w;
              if (here) {
                c.ids = *own_ids;
                c.route_logits = *logits;
              }
              return ffn->record_gate_up(s, c);
            }));
          }
        }
        TROVE_RETURN_IF_ERROR(add(fmt::format("{} ({})", T <= ops::MoeFfn::kDecodeMaxTokens ? "moe down+weighted sum+residual"
                                                                                             : "moe down (expert-indexed)+combine", f.name),
                                  dn_bytes, [&](vk::CommandStream& s) { return ffn->record_down(s, call()); }));
        TROVE_RETURN_IF_ERROR(add(fmt::format("moe experts (gate/up, down; {})", f.name), gu_bytes + dn_bytes,
                                  [&](vk::CommandStream& s) { return ffn->record(s, call()); }));
      }
      ffn->set_tuning({});
      by_pair = false;
      if (T > ops::MoeFfn::kDecodeMaxTokens) {  // the grouped GEMMs on the device's matmul path
        const std::string op = fmt::format("moe experts grouped GEMM ({})", ops::matmul_path_name(mm->path()));
        const double flops = 2.0 * P * (3.0 * F * H);
        if (want(op)) {
          auto t = time_reps(dev, o.reps, [&](vk::CommandStream& s) { return ffn->record(s, call(ops::MoePrefill::kGroupedGemm)); });
          if (!t.ok()) return t.status();
          rows.push_back({op, shape, *t, (gu_bytes + dn_bytes) / *t / 1e3, flops / *t / 1e6});
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace trove::bench
