// MoE routing and the routing plan on the GPU (kernels/ops/moe_ffn.h MoeRoute) against kernels/ref
// (layer_ref.h moe_route, moe_ref.h moe_plan): expert ids and every array of the plan exact, weights
// 1e-5 relative, on fresh random logits with planted ties, for 1, 7, 64 and 512 tokens (the fused
// one-workgroup path up to 16 tokens, routing + plan dispatches above), 8..256 experts and k = 1..32.
// record_plan() gets adversarial routings: every token to the same experts, uniform, most experts
// without tokens, k = 1. Every output buffer is poisoned before each run. lavapipe: ~2 s.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>

#include <fmt/format.h>

#include "kernels/ops/moe_ffn.h"
#include "kernels/ref/layer_ref.h"
#include "kernels/ref/moe_ref.h"
#include "tests/scoped_env.h"

using namespace trove;

namespace {

std::unique_ptr<vk::Device> open_device() {
  auto d = vk::Device::open();
  if (!d.ok()) {
    ADD_FAILURE() << d.status().ToString();
    return nullptr;
  }
  return std::move(*d);
}

template <class T>
vk::Buffer upload(vk::Device& d, const std::vector<T>& v) {
  auto b = d.buffer(std::max<size_t>(16, v.size() * sizeof(T)));
  EXPECT_TRUE(b.ok());
  EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).ok());
  return std::move(*b);
}

template <class T>
std::vector<T> download(const vk::Buffer& b, size_t n, size_t offset_words = 0) {
  std::vector<T> v(n);
  EXPECT_TRUE(b.download(v.data(), n * sizeof(T), offset_words * 4).ok());
  return v;
}

// The GPU plan in `plan` equals the reference plan of `ids`.
void expect_plan(const vk::Buffer& plan, const ops::MoePlanLayout& L, const std::vector<uint32_t>& ids,
                 uint32_t tokens, uint32_t k, const std::string& what) {
  const uint32_t pairs = tokens * k;
  auto want = kernels::ref::moe_plan(ids, tokens, k, L.n_expert, ops::MoePlanLayout::kSlotsPerEntry);
  EXPECT_EQ(download<uint32_t>(plan, L.n_expert + 1, L.offsets), want.offsets) << what;
  EXPECT_EQ(download<uint32_t>(plan, pairs, L.slot_pair), want.slot_pair) << what;
  EXPECT_EQ(download<uint32_t>(plan, pairs, L.pair_slot), want.pair_slot) << what;
  EXPECT_EQ(download<uint32_t>(plan, pairs, L.row_ids), want.row_ids) << what;
  std::vector<uint32_t> identity(pairs);
  std::iota(identity.begin(), identity.end(), 0u);
  EXPECT_EQ(download<uint32_t>(plan, pairs, L.slot_ids), identity) << what;
  const auto n = download<uint32_t>(plan, 1, L.n_entries);
  ASSERT_EQ(n[0], want.entries.size()) << what;
  ASSERT_LE(n[0], ops::MoePlanLayout::max_entries(pairs, L.n_expert)) << what;
  const auto got = download<uint32_t>(plan, 2 * want.entries.size(), L.entries);
  for (size_t q = 0; q < want.entries.size(); ++q) {
    EXPECT_EQ(got[2 * q], want.entries[q][0]) << what << " entry " << q;
    EXPECT_EQ(got[2 * q + 1] & 0xffffffu, want.entries[q][1]) << what << " entry " << q;
    EXPECT_EQ(got[2 * q + 1] >> 24, want.entries[q][2]) << what << " entry " << q;
  }
}

}  // namespace

TEST(MoeRoute, TopKWeightsAndPlanMatchReference) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::MoeRoute::create(*d);
  ASSERT_TRUE(op.ok()) << op.status().ToString();
  std::mt19937 rng(std::random_device{}());
  struct Shape { uint32_t tokens, experts, k; };
  for (auto sh : {Shape{1, 128, 8}, Shape{7, 128, 8}, Shape{64, 128, 8}, Shape{512, 128, 8}, Shape{5, 64, 4},
                  Shape{3, 8, 8}, Shape{9, 8, 1}, Shape{33, 256, 32}, Shape{16, 16, 2}, Shape{17, 16, 2}}) {
    const std::string what = fmt::format("{} tokens, {} experts, k {}", sh.tokens, sh.experts, sh.k);
    std::normal_distribution<float> nd(0.f, 2.f);
    std::vector<float> l(size_t(sh.tokens) * sh.experts);
    for (auto& x : l) x = nd(rng);
    l[3] = l[5] = 50.f;  // a tie at the top of token 0: expert 3 before 5
    if (sh.tokens > 1) {  // token 1: every logit equal → experts 0..k-1, weights 1/k
      std::fill(l.begin() + sh.experts, l.begin() + 2 * sh.experts, 0.25f);
    }
    if (sh.tokens > 2 && sh.k < sh.experts) {  // token 2: a tie across the k-th place — the smaller index wins
      float* t2 = l.data() + 2 * sh.experts;
      for (uint32_t e = 0; e < sh.experts; ++e) t2[e] = -10.f - float(e % 7);
      for (uint32_t j = 0; j + 1 < sh.k; ++j) t2[sh.experts - 1 - j] = 20.f + float(j);
      t2[sh.experts / 2] = t2[1] = 5.f;  // the k-th best: two equal, index 1 must be taken
    }
    std::vector<uint32_t> want_ids(size_t(sh.tokens) * sh.k);
    std::vector<float> want_w(want_ids.size());
    ref::moe_route(l.data(), want_ids.data(), want_w.data(), sh.tokens, sh.experts, sh.k);
    const auto L = ops::MoePlanLayout::make(sh.tokens * sh.k + 5, sh.experts);
    auto bl = upload(*d, l);
    auto bi = d->buffer(want_ids.size() * 4), bw = d->buffer(want_w.size() * 4), bp = d->buffer(L.bytes());
    ASSERT_TRUE(bi.ok() && bw.ok() && bp.ok());
    ASSERT_TRUE(bi->fill(0xffffffffu).ok() && bw->fill(0x7fc00000u).ok() && bp->fill(0xdeadbeefu).ok());
    auto s = d->stream();
    ASSERT_TRUE(s.ok());
    Status st = op->record(*s, bl, *bi, *bw, *bp, L, sh.tokens, sh.k);
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE(s->submit_and_wait().ok());
    auto ids = download<uint32_t>(*bi, want_ids.size());
    auto w = download<float>(*bw, want_w.size());
    EXPECT_EQ(ids, want_ids) << what;
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], want_w[i], 1e-5 * want_w[i] + 1e-7) << what << " " << i;
    for (uint32_t t = 0; t < sh.tokens; ++t)
      EXPECT_NEAR(std::accumulate(w.begin() + t * sh.k, w.begin() + (t + 1) * sh.k, 0.0), 1.0, 1e-5) << what;
    EXPECT_EQ(ids[0], 3u) << what;
    if (sh.k > 1) EXPECT_EQ(ids[1], 5u) << what;
    if (sh.tokens > 2 && sh.k < sh.experts) EXPECT_EQ(ids[3 * sh.k - 1], 1u) << what;
    expect_plan(*bp, L, want_ids, sh.tokens, sh.k, what);
  }
}

TEST(MoeRoute, NanLogitsRankLast) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::MoeRoute::create(*d);
  ASSERT_TRUE(op.ok());
  std::vector<float> l(16, 1.0f);
  for (uint32_t e = 0; e < 16; e += 2) l[e] = std::nanf("");
  l[9] = 3.0f;
  const auto L = ops::MoePlanLayout::make(4, 16);
  auto bl = upload(*d, l);
  auto bi = d->buffer(16), bw = d->buffer(16), bp = d->buffer(L.bytes());
  ASSERT_TRUE(bi->fill(0xffffffffu).ok() && bw->fill(0x7fc00000u).ok());
  auto s = d->stream();
  ASSERT_TRUE(op->record(*s, bl, *bi, *bw, *bp, L, 1, 4).ok());
  ASSERT_TRUE(s->submit_and_wait().ok());
  EXPECT_EQ(download<uint32_t>(*bi, 4), (std::vector<uint32_t>{9, 1, 3, 5}));
  for (float w : download<float>(*bw, 4)) EXPECT_TRUE(std::isfinite(w));
}

TEST(MoeRoute, PlanOfAdversarialRoutings) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::MoeRoute::create(*d);
  ASSERT_TRUE(op.ok());
  std::mt19937 rng(std::random_device{}());
  struct Case {
    const char* name;
    uint32_t tokens, experts, k;
    int kind;  // 0 every token to experts 0..k-1 (the last expert too), 1 uniform, 2 a few of many, 3 random
  };
  for (const Case& c : {Case{"all to one set", 512, 128, 8, 0}, Case{"all to one set k=1", 300, 64, 1, 0},
                        Case{"uniform", 512, 128, 8, 1}, Case{"uniform k=1", 7, 8, 1, 1},
                        Case{"3 of 256 experts", 64, 256, 3, 2}, Case{"random", 1, 128, 8, 3},
                        Case{"random", 7, 128, 8, 3}, Case{"random k=32", 100, 256, 32, 3}}) {
    std::vector<uint32_t> ids(size_t(c.tokens) * c.k);
    for (uint32_t t = 0; t < c.tokens; ++t) {
      std::vector<uint32_t> all(c.experts);
      std::iota(all.begin(), all.end(), 0u);
      if (c.kind == 3) std::shuffle(all.begin(), all.end(), rng);
      for (uint32_t j = 0; j < c.k; ++j) {
        uint32_t e = all[j];
        if (c.kind == 0) e = j == 0 ? c.experts - 1 : j;
        if (c.kind == 1) e = (t * c.k + j) % c.experts;  // distinct within a token while k <= experts
        if (c.kind == 2) e = 100 + 50 * j;
        ids[t * c.k + j] = e;
      }
    }
    const auto L = ops::MoePlanLayout::make(c.tokens * c.k, c.experts);
    auto bi = upload(*d, ids);
    auto bp = d->buffer(L.bytes());
    ASSERT_TRUE(bp->fill(0xdeadbeefu).ok());
    auto s = d->stream();
    Status st = op->record_plan(*s, bi, *bp, L, c.tokens, c.k);
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE(s->submit_and_wait().ok());
    expect_plan(*bp, L, ids, c.tokens, c.k, fmt::format("{} ({} tokens, k {})", c.name, c.tokens, c.k));
  }
}

TEST(MoeRoute, RefusesShapesItCannotRoute) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::MoeRoute::create(*d);
  ASSERT_TRUE(op.ok());
  auto b = d->buffer(1 << 20);
  auto s = d->stream();
  auto msg = [&](uint32_t experts, uint32_t pairs, uint32_t tokens, uint32_t k) {
    return op->record(*s, *b, *b, *b, *b, ops::MoePlanLayout::make(pairs, experts), tokens, k).message();
  };
  EXPECT_NE(msg(8, 64, 1, 9).find("top-k 9"), std::string::npos);
  EXPECT_NE(msg(300, 64, 1, 8).find("300 experts"), std::string::npos);
  EXPECT_NE(msg(128, 64, 9, 8).find("the plan holds 1..64"), std::string::npos);
  EXPECT_NE(msg(128, 64, 1, 33).find("top-k 33"), std::string::npos);
}

// MoeRoute::record_router (moe_router.comp): the FFN RMSNorm, the f32 router matvec and the top-k in
// one dispatch, the last workgroup routing. Logits against a float64 reference (the norm applied to x
// first); ids and weights exactly what ref::moe_route makes of the kernel's own logits, so a near-tie
// cannot make the test flaky while a wrong routing still fails. Two experts with equal rows tie at the
// top of token 0 (the smaller index first). Every shape records two calls behind a barrier, and the
// shapes share one op with different grids, so the completion counter must come back to 0 after each
// call: a counter left behind skips the next call's routing and leaves its poisoned ids.
// Also with other workgroup sizes, loads in flight and a subgroup per expert row instead of a workgroup
// (TROVE_MOE_ROUTER_WG / _LOADS / _SPLIT, read at create); bad values are refused by name.
TEST(MoeRoute, RouterAndRoutingInOneDispatchMatchReference) {
  auto d = open_device();
  ASSERT_TRUE(d);
  for (auto [name, value] :
       {std::pair{"TROVE_MOE_ROUTER_WG", "48"}, std::pair{"TROVE_MOE_ROUTER_LOADS", "32"},
        std::pair{"TROVE_MOE_ROUTER_SPLIT", "2"}}) {
    tests::ScopedEnv bad(name, value);
    auto op = ops::MoeRoute::create(*d);
    ASSERT_FALSE(op.ok()) << name << "=" << value;
    EXPECT_NE(op.status().message().find(fmt::format("{}='{}' is not", name, value)), std::string::npos)
        << op.status().message();
  }
  struct Setting {
    const char *wg, *loads, *split;
  };
  // The defaults (a workgroup per row); a subgroup per row at 32 / 4, 256 / 16 and the defaults; a
  // workgroup per row of 64 invocations with 4 loads.
  for (const Setting set :
       {Setting{nullptr, nullptr, nullptr}, Setting{"32", "4", "0"}, Setting{"256", "16", "0"},
        Setting{nullptr, nullptr, "0"}, Setting{"64", "4", "1"}}) {
    SCOPED_TRACE(fmt::format("TROVE_MOE_ROUTER_WG={} TROVE_MOE_ROUTER_LOADS={} TROVE_MOE_ROUTER_SPLIT={}",
                             set.wg ? set.wg : "(unset)", set.loads ? set.loads : "(unset)",
                             set.split ? set.split : "(unset)"));
    std::optional<ops::MoeRoute> op;
    {
      tests::ScopedEnv wg("TROVE_MOE_ROUTER_WG", set.wg), loads("TROVE_MOE_ROUTER_LOADS", set.loads),
          split("TROVE_MOE_ROUTER_SPLIT", set.split);
      auto o = ops::MoeRoute::create(*d);
      ASSERT_TRUE(o.ok()) << o.status().ToString();
      op.emplace(std::move(*o));
    }
    std::mt19937 rng(std::random_device{}());
    struct Shape {
      uint32_t tokens, experts, k, cols;
    };
    for (auto sh :
         {Shape{1, 128, 8, 2048}, Shape{3, 128, 8, 2048}, Shape{8, 128, 8, 512}, Shape{5, 64, 4, 256},
          Shape{2, 8, 8, 64}, Shape{1, 256, 32, 128}, Shape{7, 16, 1, 132}, Shape{4, 100, 6, 1000}}) {
      const std::string what =
          fmt::format("{} tokens, {} experts, k {}, {} columns", sh.tokens, sh.experts, sh.k, sh.cols);
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<float> nw(sh.cols), router(size_t(sh.experts) * sh.cols);
      for (auto& v : nw) v = 1.f + 0.2f * nd(rng);
      for (auto& v : router) v = 0.05f * nd(rng);
      const float eps = 1e-6f;
      struct Run {
        std::vector<float> x;
        vk::Buffer bx, bl, bi, bw;
      };
      Run runs[2];
      for (Run& r : runs) {
        r.x.resize(size_t(sh.tokens) * sh.cols);
        for (uint32_t t = 0; t < sh.tokens; ++t) {
          const float scale = 0.1f + 3.f * float(t);  // the norm must undo each token's scale
          for (uint32_t c = 0; c < sh.cols; ++c) r.x[size_t(t) * sh.cols + c] = scale * nd(rng);
        }
      }
      // Experts 3 and 5: one row, pointing along token 0 of the first run (its top two, tied).
      for (uint32_t c = 0; c < sh.cols; ++c) {
        const float v = 0.5f * (runs[0].x[c] * nw[c] >= 0 ? 1.f : -1.f);
        router[3 * size_t(sh.cols) + c] = router[5 * size_t(sh.cols) + c] = v;
      }
      auto bn = upload(*d, nw), brt = upload(*d, router);
      for (Run& r : runs) {
        r.bx = upload(*d, r.x);
        auto bl = d->buffer(size_t(sh.tokens) * sh.experts * 4), bi = d->buffer(size_t(sh.tokens) * sh.k * 4),
             bw = d->buffer(size_t(sh.tokens) * sh.k * 4);
        ASSERT_TRUE(bl.ok() && bi.ok() && bw.ok());
        ASSERT_TRUE(bl->fill(0x7fc00000u).ok() && bi->fill(0xffffffffu).ok() && bw->fill(0x7fc00000u).ok());
        r.bl = std::move(*bl);
        r.bi = std::move(*bi);
        r.bw = std::move(*bw);
      }
      auto s = d->stream();
      ASSERT_TRUE(s.ok());
      for (Run& r : runs) {
        ops::MoeRouterCall c{r.bx, bn, eps, brt, r.bl, r.bi, r.bw, sh.cols, sh.experts, sh.tokens, sh.k};
        Status st = op->record_router(*s, c);
        ASSERT_TRUE(st.ok()) << st.ToString();
        s->barrier();
      }
      ASSERT_TRUE(s->submit_and_wait().ok());
      for (int ri = 0; ri < 2; ++ri) {
        const Run& r = runs[ri];
        const std::string run_what = fmt::format("{}, call {}", what, ri + 1);
        auto logits = download<float>(r.bl, size_t(sh.tokens) * sh.experts);
        for (uint32_t t = 0; t < sh.tokens; ++t) {
          const float* x = r.x.data() + size_t(t) * sh.cols;
          double ss = 0;
          for (uint32_t c = 0; c < sh.cols; ++c) ss += double(x[c]) * x[c];
          const double rs = 1.0 / std::sqrt(ss / sh.cols + eps);
          for (uint32_t e = 0; e < sh.experts; ++e) {
            double dot = 0, mag = 0;
            for (uint32_t c = 0; c < sh.cols; ++c) {
              const double p = double(router[size_t(e) * sh.cols + c]) * nw[c] * x[c] * rs;
              dot += p;
              mag += std::abs(p);
            }
            ASSERT_NEAR(logits[size_t(t) * sh.experts + e], dot, 1e-5 * mag + 1e-6)
                << run_what << " token " << t << " expert " << e;
          }
        }
        std::vector<uint32_t> want_ids(size_t(sh.tokens) * sh.k);
        std::vector<float> want_w(want_ids.size());
        ref::moe_route(logits.data(), want_ids.data(), want_w.data(), sh.tokens, sh.experts, sh.k);
        auto ids = download<uint32_t>(r.bi, want_ids.size());
        auto w = download<float>(r.bw, want_w.size());
        EXPECT_EQ(ids, want_ids) << run_what;
        for (size_t i = 0; i < w.size(); ++i)
          ASSERT_NEAR(w[i], want_w[i], 1e-5 * want_w[i] + 1e-7) << run_what << " " << i;
        if (ri == 0) {
          EXPECT_EQ(logits[3], logits[5]) << run_what;
          EXPECT_EQ(ids[0], 3u) << run_what;
          if (sh.k > 1) EXPECT_EQ(ids[1], 5u) << run_what;
        }
      }
    }
  }
}

void router_beside_o_matches_reference(vk::Device* d, const ops::MoeRoute& op);

// The router beside O (MoeRouterCall::kPlain then kBiasRouteRaw, moe_layer.h): zh = R̃ · x, then
// logits = M · a + zh, top-k, with the chosen logits themselves as the weights. zh and the logits
// against float64; ids exactly ref::moe_route's choice on the kernel's own logits and the weights
// the very logits chosen (bit for bit). Experts 3 and 5 get equal rows in R̃ and M pointing along
// token 0 (its top two, tied: the smaller index first). Every token's logits equal, bit for bit, what
// a one-token call computes for it (batched steps must equal one-token ones: speculative
// verification). Two plain + routed pairs in one stream: the plain mode must leave the routed one's
// completion counter alone (else the second routing is skipped and its poisoned ids stay).
TEST(MoeRoute, RouterBesideOMatchesReference) {
  auto d = open_device();
  ASSERT_TRUE(d);
  for (const char* split : {"0", "1"}) {  // a subgroup per expert row, a workgroup per row
    SCOPED_TRACE(fmt::format("TROVE_MOE_ROUTER_SPLIT={}", split));
    std::optional<ops::MoeRoute> op;
    {
      tests::ScopedEnv env("TROVE_MOE_ROUTER_SPLIT", split);
      auto o = ops::MoeRoute::create(*d);
      ASSERT_TRUE(o.ok()) << o.status().ToString();
      op.emplace(std::move(*o));
    }
    router_beside_o_matches_reference(d.get(), *op);
  }
}

void router_beside_o_matches_reference(vk::Device* d, const ops::MoeRoute& op_ref) {
  const ops::MoeRoute* op = &op_ref;
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Shape {
    uint32_t tokens, experts, k, hidden, q_dim;
  };
  for (auto sh : {Shape{1, 128, 8, 2048, 4096}, Shape{3, 128, 8, 256, 512}, Shape{8, 16, 4, 64, 132},
                  Shape{2, 8, 8, 64, 64}, Shape{5, 100, 6, 1000, 252}, Shape{7, 256, 32, 128, 128}}) {
    const std::string what = fmt::format("{} tokens, {} experts, k {}, hidden {}, q_dim {}", sh.tokens,
                                         sh.experts, sh.k, sh.hidden, sh.q_dim);
    const uint32_t T = sh.tokens, E = sh.experts;
    std::vector<float> rn(size_t(E) * sh.hidden), m(size_t(E) * sh.q_dim);
    for (auto& v : rn) v = 0.05f * nd(rng);
    for (auto& v : m) v = 0.05f * nd(rng);
    struct Run {
      std::vector<float> x, a;
      vk::Buffer bx, ba, bz, bl, bi, bw;
      vk::Buffer bl2, bi2, bw2;  // kBiasLogits beside the routed call: its logits, ids and weights
    };
    Run runs[2];
    for (Run& r : runs) {
      r.x.resize(size_t(T) * sh.hidden);
      r.a.resize(size_t(T) * sh.q_dim);
      for (auto& v : r.x) v = nd(rng);
      for (auto& v : r.a) v = nd(rng);
    }
    for (uint32_t c = 0; c < sh.hidden; ++c) {
      rn[3 * size_t(sh.hidden) + c] = rn[5 * size_t(sh.hidden) + c] = runs[0].x[c] >= 0 ? 0.5f : -0.5f;
    }
    for (uint32_t c = 0; c < sh.q_dim; ++c) {
      m[3 * size_t(sh.q_dim) + c] = m[5 * size_t(sh.q_dim) + c] = runs[0].a[c] >= 0 ? 0.5f : -0.5f;
    }
    auto brn = upload(*d, rn), bm = upload(*d, m);
    auto fresh = [&](size_t words, uint32_t poison) {
      auto b = d->buffer(words * 4);
      EXPECT_TRUE(b.ok() && b->fill(poison).ok());
      return std::move(*b);
    };
    auto s = d->stream();
    ASSERT_TRUE(s.ok());
    // Both modes of one step (x, a: T rows from row `first` of the run's inputs) into r's buffers.
    auto record = [&](Run& r, vk::BufferRange x, vk::BufferRange a, uint32_t tokens) {
      ops::MoeRouterCall h{x, {}, 0.f, brn, r.bz, {}, {}, sh.hidden, E, tokens, sh.k};
      h.mode = ops::MoeRouterCall::kPlain;
      Status st = op->record_router(*s, h);
      ASSERT_TRUE(st.ok()) << st.ToString();
      s->barrier();
      ops::MoeRouterCall o{a, {}, 0.f, bm, r.bl, r.bi, r.bw, sh.q_dim, E, tokens, sh.k};
      o.mode = ops::MoeRouterCall::kBiasRouteRaw;
      o.bias = r.bz;
      st = op->record_router(*s, o);
      ASSERT_TRUE(st.ok()) << st.ToString();
      if (r.bl2.size() > 0) {  // the logits alone, no routing (the experts' kernel routes)
        ops::MoeRouterCall l{a, {}, 0.f, bm, r.bl2, r.bi2, r.bw2, sh.q_dim, E, tokens, sh.k};
        l.mode = ops::MoeRouterCall::kBiasLogits;
        l.bias = r.bz;
        st = op->record_router(*s, l);
        ASSERT_TRUE(st.ok()) << st.ToString();
      }
      s->barrier();
    };
    for (Run& r : runs) {
      r.bx = upload(*d, r.x);
      r.ba = upload(*d, r.a);
      r.bz = fresh(size_t(T) * E, 0x7fc00000u);
      r.bl = fresh(size_t(T) * E, 0x7fc00000u);
      r.bi = fresh(size_t(T) * sh.k, 0xffffffffu);
      r.bw = fresh(size_t(T) * sh.k, 0x7fc00000u);
      r.bl2 = fresh(size_t(T) * E, 0x7fc00000u);
      r.bi2 = fresh(size_t(T) * sh.k, 0xffffffffu);
      r.bw2 = fresh(size_t(T) * sh.k, 0x7fc00000u);
      record(r, r.bx, r.ba, T);
    }
    // The last token of the first run alone, as a one-token step.
    Run one;
    const uint32_t last = T - 1;
    one.bz = fresh(E, 0x7fc00000u);
    one.bl = fresh(E, 0x7fc00000u);
    one.bi = fresh(sh.k, 0xffffffffu);
    one.bw = fresh(sh.k, 0x7fc00000u);
    record(one, vk::BufferRange(runs[0].bx, uint64_t{last} * sh.hidden * 4, uint64_t{sh.hidden} * 4),
           vk::BufferRange(runs[0].ba, uint64_t{last} * sh.q_dim * 4, uint64_t{sh.q_dim} * 4), 1);
    ASSERT_TRUE(s->submit_and_wait().ok());
    for (int ri = 0; ri < 2; ++ri) {
      const Run& r = runs[ri];
      const std::string run_what = fmt::format("{}, pair of calls {}", what, ri + 1);
      auto zh = download<float>(r.bz, size_t(T) * E);
      auto logits = download<float>(r.bl, size_t(T) * E);
      // kBiasLogits: the same logits, bit for bit, and no routing (ids and weights still poisoned).
      auto logits2 = download<float>(r.bl2, size_t(T) * E);
      EXPECT_EQ(0, std::memcmp(logits2.data(), logits.data(), logits.size() * 4)) << run_what;
      const std::vector<uint32_t> poison(size_t(T) * sh.k, 0xffffffffu);
      EXPECT_EQ(download<uint32_t>(r.bi2, poison.size()), poison) << run_what << ": kBiasLogits routed";
      for (uint32_t t = 0; t < T; ++t) {
        for (uint32_t e = 0; e < E; ++e) {
          double h = 0, hmag = 0, o = 0, omag = 0;
          for (uint32_t c = 0; c < sh.hidden; ++c) {
            const double p = double(rn[size_t(e) * sh.hidden + c]) * r.x[size_t(t) * sh.hidden + c];
            h += p;
            hmag += std::abs(p);
          }
          for (uint32_t c = 0; c < sh.q_dim; ++c) {
            const double p = double(m[size_t(e) * sh.q_dim + c]) * r.a[size_t(t) * sh.q_dim + c];
            o += p;
            omag += std::abs(p);
          }
          ASSERT_NEAR(zh[size_t(t) * E + e], h, 1e-5 * hmag + 1e-6)
              << run_what << " token " << t << " expert " << e;
          ASSERT_NEAR(logits[size_t(t) * E + e], h + o, 1e-5 * (hmag + omag) + 1e-6)
              << run_what << " token " << t << " expert " << e;
        }
      }
      std::vector<uint32_t> want_ids(size_t(T) * sh.k);
      std::vector<float> unused(want_ids.size());
      ref::moe_route(logits.data(), want_ids.data(), unused.data(), T, E, sh.k);
      auto ids = download<uint32_t>(r.bi, want_ids.size());
      auto w = download<float>(r.bw, want_ids.size());
      EXPECT_EQ(ids, want_ids) << run_what;
      for (uint32_t t = 0; t < T; ++t) {
        for (uint32_t j = 0; j < sh.k; ++j) {
          const float chosen = logits[size_t(t) * E + ids[size_t(t) * sh.k + j]];
          ASSERT_EQ(std::memcmp(&w[size_t(t) * sh.k + j], &chosen, 4), 0)
              << run_what << " token " << t << " pick " << j << ": " << w[size_t(t) * sh.k + j] << " vs "
              << chosen;
        }
      }
      if (ri == 0) {
        EXPECT_EQ(logits[3], logits[5]) << run_what;
        EXPECT_EQ(ids[0], 3u) << run_what;
        if (sh.k > 1) EXPECT_EQ(ids[1], 5u) << run_what;
        auto alone = download<float>(one.bl, E);
        EXPECT_EQ(0, std::memcmp(alone.data(), logits.data() + size_t(last) * E, size_t(E) * 4))
            << run_what << ": token " << last << " alone differs from the same token in the " << T
            << "-token call";
        EXPECT_EQ(download<uint32_t>(one.bi, sh.k),
                  std::vector<uint32_t>(ids.begin() + size_t(last) * sh.k, ids.begin() + size_t(T) * sh.k))
            << run_what;
      }
    }
  }
}

TEST(MoeRoute, RouterRefusesShapesItCannotRoute) {
  auto d = open_device();
  ASSERT_TRUE(d);
  auto op = ops::MoeRoute::create(*d);
  ASSERT_TRUE(op.ok());
  auto b = d->buffer(1 << 20);
  auto small = d->buffer(64);
  auto s = d->stream();
  auto msg = [&](uint32_t tokens, uint32_t experts, uint32_t k, uint32_t cols, vk::BufferRange x) {
    ops::MoeRouterCall c{x, *b, 1e-6f, *b, *b, *b, *b, cols, experts, tokens, k};
    return op->record_router(*s, c).message();
  };
  EXPECT_NE(msg(9, 128, 8, 2048, *b).find("9 tokens"), std::string::npos);
  EXPECT_NE(msg(1, 128, 8, 2046, *b).find("2046 columns"), std::string::npos);
  EXPECT_NE(msg(1, 8, 9, 64, *b).find("top-k 9"), std::string::npos);
  EXPECT_NE(msg(1, 300, 8, 64, *b).find("300 experts"), std::string::npos);
  EXPECT_NE(msg(2, 128, 8, 2048, *small).find("buffer 'x' has 64 bytes"), std::string::npos);
  // The routed mode of the router beside O needs its bias, in a buffer of its own.
  ops::MoeRouterCall o{*b, {}, 0.f, *b, *b, *b, *b, 2048, 128, 1, 8};
  o.mode = ops::MoeRouterCall::kBiasRouteRaw;
  EXPECT_NE(op->record_router(*s, o).message().find("buffer 'bias' is missing"), std::string::npos);
  o.bias = *b;
  EXPECT_NE(op->record_router(*s, o).message().find("must not be the logits' buffer"), std::string::npos);
  o.mode = static_cast<ops::MoeRouterCall::Mode>(7);
  EXPECT_NE(op->record_router(*s, o).message().find("mode 7"), std::string::npos);
  EXPECT_EQ(s->counters().dispatches, 0u);
}
