// The GPU MoE expert FFN (kernels/ops/moe_ffn.h MoeFfn, over a plan built on the GPU by MoeRoute)
// against the float64 reference (kernels/ref/matmul_ref.h moe_ffn): x_out = x_in + MoE(xn) for fresh
// random stacked experts of every weight type (gate, up and down of different types too), through
// both paths — decode (<= 8 tokens: fused down + weighted sum + residual add) and prefill (grouped
// down + scatter-combine) — with routings from the GPU router and adversarial ones given as ids:
// every token to the same experts, uniform, most experts without tokens, k = 1 and k = 8, batches of
// 1, 7, 64 and 512 tokens. Scratch (h, d) is NaN-poisoned and the plan filled with garbage before
// every run; the prefill path must also give bit-identical results when run twice. Bound: 1e-4 of
// the MoE output's norm (three f32 matvecs and SwiGLU in a row against float64).
// lavapipe: ~10 s (pipelines for 7 weight types). TROVE_KERNEL_FULL=1 adds the Qwen3-30B-A3B layer
// (hidden 2048, expert FFN 768, 128 experts, top-8; Q4_K gate/up, Q6_K or Q4_K down) at 1, 7, 64 and
// 512 tokens — meant for a real GPU (the reference takes a few seconds on 16 cores).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kernels/ops/moe_ffn.h"
#include "kernels/ref/matmul_ref.h"
#include "tests/scoped_env.h"

using namespace trove;
using quant::GgmlType;
namespace kref = trove::kernels::ref;

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
  auto b = d.buffer(std::max<size_t>(16, (v.size() * sizeof(T) + 3) / 4 * 4));
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).ok());
  return std::move(*b);
}

// One layer's stacked experts [E][rows][cols] per kind, on the host (for the reference) and the GPU.
struct Experts {
  GgmlType type;
  uint32_t rows, cols, n;
  std::vector<uint8_t> bytes;
  vk::Buffer buf;
  kref::WeightMatrix matrix(uint32_t e) const {
    const size_t eb = bytes.size() / n;
    return {type, rows, cols, std::span<const uint8_t>(bytes.data() + e * eb, eb)};
  }
  ops::StackedExperts gpu() const { return {type, buf, rows, cols, n}; }
};

Experts make_experts(vk::Device& d, GgmlType type, uint32_t n, uint32_t rows, uint32_t cols, uint64_t seed) {
  Experts x{type, rows, cols, n, {}, {}};
  const float scale = 1.7f / std::sqrt(static_cast<float>(cols));  // outputs of about unit size
  std::vector<std::future<std::vector<uint8_t>>> parts;
  for (uint32_t e = 0; e < n; ++e) {
    parts.push_back(std::async(n > 16 ? std::launch::async : std::launch::deferred,
                               [=] { return kref::random_weights(type, rows, cols, scale, seed * 1000 + e); }));
  }
  for (auto& p : parts) {
    auto b = p.get();
    x.bytes.insert(x.bytes.end(), b.begin(), b.end());
  }
  x.buf = upload(d, x.bytes);
  return x;
}

struct Case {
  std::string name;
  uint32_t tokens, n_expert, k, hidden, ffn;
  GgmlType gate, up, down;
  enum Routing { kRouter, kRandom, kAllSame, kUniform, kFewExperts } routing;
  ops::MoePrefill prefill = ops::MoePrefill::kAuto;
  bool norm = false;  // the RMSNorm prologue: the kernel gets the raw rows and the norm weights
  bool by_pair = false;  // pair-indexed decode: routing without a plan (MoeRoute::record_ids), the plan poisoned
  double bound = 0;      // error bound relative to the MoE output's norm (0: the f32 kernels' 1e-4 / 3e-3)
  double min_err = 0;    // and a floor: the int8 rounding of the q8 form must show (it ran, not the direct form)
  bool f16_in = false;   // the grouped GEMMs read xn rounded to f16 (MoeFfnCall::xn_f16); xn itself is poisoned
  // The weights buffer holds each token's k raw router logits, largest first (MoeFfnCall::weights_raw:
  // the router beside O); gate/up must turn them into softmax(z / rms) over the k in place. By pair,
  // with the norm prologue, given routings (not kRouter).
  bool raw_weights = false;
  // And routing in the gate/up kernel (MoeFfnCall::route_logits, the q8 form): the ids come from the
  // router logits' top-k (ties → the smaller index), the raw weights are the chosen logits; ids and
  // weights are poisoned before the run, so the kernel must write both. tied_logits: logits of a few
  // integer values, so that most picks are ties.
  bool route_in_gate_up = false, tied_logits = false;
};

std::string type_name(GgmlType t) { return std::string(quant::traits(t)->name); }

class MoeFfnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = open_device();
    ASSERT_TRUE(dev_);
    auto r = ops::MoeRoute::create(*dev_);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    route_ = std::make_unique<ops::MoeRoute>(std::move(*r));
    auto f = ops::MoeFfn::create(*dev_);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    ffn_ = std::make_unique<ops::MoeFfn>(std::move(*f));
    auto m = ops::Matmul::create(*dev_);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    matmul_ = std::make_unique<ops::Matmul>(std::move(*m));
  }
  // An op multiplying 2 slots per pass over the weights (GPUs use up to 8, lavapipe 1 by default),
  // optionally in the form GPUs compile (subgroup reduction stage, unrolled column loops).
  void use_two_slots_per_pass(bool gpu_form = false) {
    auto f = ops::MoeFfn::create(*dev_, 2, gpu_form);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    ffn_ = std::make_unique<ops::MoeFfn>(std::move(*f));
  }

  void run(const Case& c) {
    SCOPED_TRACE(fmt::format("{}: {} tokens, {} experts, k {}, {}x{}, {}/{}/{}", c.name, c.tokens, c.n_expert, c.k,
                             c.hidden, c.ffn, type_name(c.gate), type_name(c.up), type_name(c.down)));
    vk::Device& d = *dev_;
    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> nd(0.f, 1.f);
    const uint32_t T = c.tokens, E = c.n_expert, K = c.k, P = T * K;
    Experts gate = make_experts(d, c.gate, E, c.ffn, c.hidden, rng());
    Experts up = make_experts(d, c.up, E, c.ffn, c.hidden, rng());
    Experts down = make_experts(d, c.down, E, c.hidden, c.ffn, rng());
    std::vector<float> xn(size_t{T} * c.hidden), x(xn.size());
    for (auto& v : xn) v = nd(rng);
    for (auto& v : x) v = nd(rng);
    // With the norm prologue the kernel reads raw rows (here: xn scaled per token) and the norm weights;
    // the reference gets the normalised rows, computed in double.
    std::vector<float> raw = xn, norm_w(c.hidden, 1.f);
    std::vector<double> inv_rms(T, 1.0);  // each token's 1/rms of its raw row (with the norm prologue)
    const float eps = 1e-6f;
    if (c.norm) {
      std::uniform_real_distribution<float> us(0.5f, 1.5f);
      for (auto& v : norm_w) v = us(rng);
      for (uint32_t t = 0; t < T; ++t) {
        const float scale = 0.1f + 3.f * us(rng);
        double ss = 0;
        for (uint32_t i = 0; i < c.hidden; ++i) {
          raw[size_t{t} * c.hidden + i] *= scale;
          ss += double(raw[size_t{t} * c.hidden + i]) * raw[size_t{t} * c.hidden + i];
        }
        const double inv = inv_rms[t] = 1.0 / std::sqrt(ss / c.hidden + eps);
        for (uint32_t i = 0; i < c.hidden; ++i) {
          xn[size_t{t} * c.hidden + i] = static_cast<float>(raw[size_t{t} * c.hidden + i] * inv * norm_w[i]);
        }
      }
    }

    const auto L = ops::MoePlanLayout::make(P + 3, E);
    auto bxn = upload(d, c.norm ? raw : xn);
    std::vector<quant::f16_bits> xh(xn.size());
    for (size_t i = 0; i < xn.size(); ++i) xh[i] = quant::f32_to_f16(xn[i]);
    auto bxh = upload(d, xh);
    if (c.f16_in) ASSERT_TRUE(bxn.fill(0x7fc00000u).ok());  // only the f16 rows may be read
    auto bnorm = upload(d, norm_w);
    auto bids = d.buffer(P * 4ull), bw = d.buffer(P * 4ull), bplan = d.buffer(L.bytes());
    auto bh = d.buffer(uint64_t{P} * c.ffn * 4), bd = d.buffer(uint64_t{P} * c.hidden * 4);
    auto bg = d.buffer(uint64_t{P} * c.ffn * 4), bu = d.buffer(uint64_t{P} * c.ffn * 4);
    ASSERT_TRUE(bids.ok() && bw.ok() && bplan.ok() && bh.ok() && bd.ok() && bg.ok() && bu.ok());
    std::vector<uint32_t> ids(P);
    std::vector<float> wts(P);
    std::vector<float> logits(size_t{T} * E);
    for (auto& v : logits) v = c.tied_logits ? std::round(nd(rng)) : 2.f * nd(rng);
    auto bl = upload(d, logits);
    if (c.routing == Case::kRouter) {
      auto s = d.stream();
      ASSERT_TRUE(route_->record(*s, bl, *bids, *bw, *bplan, L, T, K).ok());
      ASSERT_TRUE(s->submit_and_wait().ok());
      ASSERT_TRUE(bids->download(ids.data(), P * 4ull).ok());
      ASSERT_TRUE(bw->download(wts.data(), P * 4ull).ok());
    } else {
      std::uniform_real_distribution<float> uw(0.05f, 1.f);
      for (uint32_t t = 0; t < T; ++t) {
        std::vector<uint32_t> all(E);
        std::iota(all.begin(), all.end(), 0u);
        std::shuffle(all.begin(), all.end(), rng);
        for (uint32_t j = 0; j < K; ++j) {
          uint32_t e = all[j];
          if (c.routing == Case::kAllSame) e = j == 0 ? E - 1 : j;
          if (c.routing == Case::kUniform) e = (t * K + j) % E;
          if (c.routing == Case::kFewExperts) e = (3 + 7 * ((t + j) % (K + 1))) % E;  // K+1 experts in use
          ids[t * K + j] = e;
          wts[t * K + j] = uw(rng);
        }
        if (c.route_in_gate_up) {  // the k best logits, descending, ties to the smaller expert
          std::stable_sort(all.begin(), all.end(), [&](uint32_t a, uint32_t b) { return a < b; });
          std::stable_sort(all.begin(), all.end(), [&](uint32_t a, uint32_t b) {
            return logits[size_t{t} * E + a] > logits[size_t{t} * E + b];
          });
          for (uint32_t j = 0; j < K; ++j) ids[t * K + j] = all[j];
        }
      }
      ASSERT_TRUE(bids->upload(ids.data(), P * 4ull).ok());
      if (c.raw_weights) {
        // Raw logits z (largest first, spread over ~4 so the weights differ); the reference's weights
        // are softmax(z · 1/rms) over the k, in double.
        ASSERT_TRUE(c.by_pair && c.norm && c.routing != Case::kRouter)
            << "raw weights: by pair, norm, given ids";
        std::vector<float> z(P);
        for (uint32_t t = 0; t < T; ++t) {
          for (uint32_t j = 0; j < K; ++j) {
            z[t * K + j] = c.route_in_gate_up ? logits[size_t{t} * E + ids[t * K + j]] : 4.f * nd(rng);
          }
          std::sort(z.begin() + t * K, z.begin() + (t + 1) * K, std::greater<float>());
          double sum = 0;
          for (uint32_t j = 0; j < K; ++j) sum += std::exp(inv_rms[t] * (double(z[t * K + j]) - z[t * K]));
          for (uint32_t j = 0; j < K; ++j) {
            wts[t * K + j] =
                static_cast<float>(std::exp(inv_rms[t] * (double(z[t * K + j]) - z[t * K])) / sum);
          }
        }
        ASSERT_TRUE(bw->upload(z.data(), P * 4ull).ok());
      } else {
        ASSERT_TRUE(bw->upload(wts.data(), P * 4ull).ok());
      }
    }
    // The reference: x + MoE(xn), tokens in parallel pieces (each piece gathers per expert itself).
    std::vector<kref::ExpertWeights> rex;
    for (uint32_t e = 0; e < E; ++e) rex.push_back({gate.matrix(e), up.matrix(e), down.matrix(e)});
    std::vector<int32_t> ids_i(ids.begin(), ids.end());
    std::vector<float> moe(xn.size());
    {
      const uint32_t pieces = std::min<uint32_t>(T, std::max(1u, std::thread::hardware_concurrency()));
      std::vector<std::future<Status>> work;
      for (uint32_t p = 0; p < pieces; ++p) {
        const uint32_t t0 = T * p / pieces, t1 = T * (p + 1) / pieces;
        if (t0 == t1) continue;
        work.push_back(std::async(std::launch::async, [&, t0, t1] {
          const size_t h = c.hidden;
          return kref::moe_ffn(rex, std::span<const float>(xn).subspan(t0 * h, (t1 - t0) * h), t1 - t0,
                              std::span<const int32_t>(ids_i).subspan(size_t{t0} * K, size_t{t1 - t0} * K),
                              std::span<const float>(wts).subspan(size_t{t0} * K, size_t{t1 - t0} * K), K,
                              std::span<float>(moe).subspan(t0 * h, (t1 - t0) * h));
        }));
      }
      for (auto& w : work) ASSERT_TRUE(w.get().ok());
    }

    std::vector<float> first;
    for (int rep = 0; rep < (T > ops::MoeFfn::kDecodeMaxTokens ? 2 : 1); ++rep) {
      auto bx = upload(d, x);
      ASSERT_TRUE(bh->fill(0x7fc00000u).ok() && bd->fill(0x7fc00000u).ok() && bg->fill(0x7fc00000u).ok() &&
                  bu->fill(0x7fc00000u).ok());
      ASSERT_TRUE(bplan->fill(0x00ffff00u).ok());
      if (c.route_in_gate_up) ASSERT_TRUE(bids->fill(0xffffffffu).ok() && bw->fill(0x7fc00000u).ok());
      auto s = d.stream();
      // Routing and plan in the same command stream as the experts, as the engine records them.
      if (c.by_pair) {
        if (c.routing == Case::kRouter) ASSERT_TRUE(route_->record_ids(*s, bl, *bids, *bw, E, T, K).ok());
      } else if (c.routing == Case::kRouter) {
        ASSERT_TRUE(route_->record(*s, bl, *bids, *bw, *bplan, L, T, K).ok());
      } else {
        ASSERT_TRUE(route_->record_plan(*s, *bids, *bplan, L, T, K).ok());
      }
      s->barrier();
      ops::MoeFfnCall call{gate.gpu(), up.gpu(), down.gpu(), T, K, bxn, *bids, *bw, *bplan, L, *bh, *bd, bx,
                           matmul_.get(), c.prefill, *bg, *bu};
      if (c.norm) {
        call.norm_w = bnorm;
        call.eps = eps;
      }
      call.by_pair = c.by_pair;
      call.weights_raw = c.raw_weights;
      if (c.route_in_gate_up) call.route_logits = bl;
      if (c.f16_in) call.xn_f16 = bxh;
      Status st = ffn_->record(*s, call);
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_TRUE(s->submit_and_wait().ok());
      std::vector<float> got(x.size());
      ASSERT_TRUE(bx.download(got.data(), got.size() * 4).ok());
      double err2 = 0, ref2 = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got[i])) << "element " << i << " (token " << i / c.hidden << ")";
        const double want = double(x[i]) + moe[i];
        err2 += (got[i] - want) * (got[i] - want);
        ref2 += double(moe[i]) * moe[i];
      }
      // Grouped GEMMs on matrix units round activations to f16 (ops::Matmul's bound: 2e-3 of the norm).
      const bool grouped = c.prefill == ops::MoePrefill::kGroupedGemm ||
                           (c.prefill == ops::MoePrefill::kAuto && T >= ops::MoeFfn::kGroupedMinTokens);
      const bool lossy =
          c.f16_in || (T > ops::MoeFfn::kDecodeMaxTokens && matmul_->uses_coopmat() && grouped);
      const double bound = c.bound ? c.bound : lossy ? 3e-3 : 1e-4;
      EXPECT_LT(std::sqrt(err2), bound * std::sqrt(ref2)) << "error norm " << std::sqrt(err2) << " of " << std::sqrt(ref2);
      EXPECT_GE(std::sqrt(err2), c.min_err * std::sqrt(ref2)) << "error norm " << std::sqrt(err2) << " of " << std::sqrt(ref2);
      worst_ = std::max(worst_, std::sqrt(err2 / ref2));
      if (rep == 0) first = got;
      else EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * 4)) << "two runs differ";
      if (c.route_in_gate_up) {  // the ids gate/up wrote for down
        std::vector<uint32_t> got_ids(P);
        ASSERT_TRUE(bids->download(got_ids.data(), P * 4ull).ok());
        EXPECT_EQ(got_ids, ids);
      }
      if (c.raw_weights) {  // the weights as scaled in place
        std::vector<float> w(P);
        ASSERT_TRUE(bw->download(w.data(), P * 4ull).ok());
        for (uint32_t i = 0; i < P; ++i)
          ASSERT_NEAR(w[i], wts[i], 2e-6 + 1e-5 * wts[i]) << "weight of pair " << i;
      }
    }
  }

  double worst_ = 0;  // the largest relative error norm of the runs so far
  std::unique_ptr<vk::Device> dev_;
  std::unique_ptr<ops::MoeRoute> route_;
  std::unique_ptr<ops::MoeFfn> ffn_;
  std::unique_ptr<ops::Matmul> matmul_;
};

constexpr auto F32 = GgmlType::F32, F16 = GgmlType::F16, BF16 = GgmlType::BF16, Q8_0 = GgmlType::Q8_0,
               Q4_K = GgmlType::Q4_K, Q5_K = GgmlType::Q5_K, Q6_K = GgmlType::Q6_K;

}  // namespace

TEST_F(MoeFfnTest, DecodeMatchesReference) {
  run({"router", 1, 16, 8, 256, 256, Q4_K, Q4_K, Q4_K, Case::kRouter});
  run({"random, mixed types", 7, 8, 2, 256, 256, Q4_K, Q5_K, Q6_K, Case::kRandom});
  run({"most experts idle", 7, 64, 4, 256, 256, Q6_K, Q6_K, Q4_K, Case::kFewExperts});
  run({"k=1", 5, 8, 1, 128, 192, BF16, BF16, BF16, Case::kRandom});
  run({"all to one set", 8, 8, 8, 192, 128, Q8_0, Q8_0, Q8_0, Case::kAllSame});
  run({"router, rows of 32 mod 64", 3, 8, 2, 96, 160, F32, F32, F32, Case::kRouter});
  run({"router", 2, 8, 2, 64, 128, F16, F16, F16, Case::kRouter});
}

TEST_F(MoeFfnTest, PrefillMatchesReference) {
  run({"all to one set", 64, 8, 2, 224, 96, Q8_0, Q8_0, Q8_0, Case::kAllSame});
  run({"uniform k=1", 512, 8, 1, 64, 64, F16, F16, F16, Case::kUniform});
  run({"router", 33, 16, 8, 256, 256, Q4_K, Q4_K, Q4_K, Case::kRouter});
  run({"random, mixed types", 40, 8, 2, 256, 256, Q6_K, Q4_K, Q5_K, Case::kRandom});
  run({"most experts idle", 20, 64, 4, 256, 256, Q5_K, Q5_K, Q6_K, Case::kFewExperts});
  run({"router, rows of 32 mod 64", 12, 8, 2, 160, 96, F32, F32, F32, Case::kRouter});
  run({"k=1", 9, 8, 1, 128, 192, BF16, BF16, BF16, Case::kRandom});
}

TEST_F(MoeFfnTest, PrefillThroughGroupedGemmMatchesReference) {
  const auto G = ops::MoePrefill::kGroupedGemm;
  run({"grouped, router", 40, 16, 8, 256, 256, Q4_K, Q4_K, Q6_K, Case::kRouter, G});
  run({"grouped, all to one set", 64, 8, 2, 224, 96, Q8_0, Q8_0, Q8_0, Case::kAllSame, G});
  run({"grouped, most experts idle", 20, 64, 4, 256, 256, Q5_K, Q5_K, Q4_K, Case::kFewExperts, G});
}

// The engine's MoE prefill on the matrix units: gate and up read the FFN input as f16 rows (xn_f16);
// xn is poisoned with NaN, so a GEMM that read it would fail the check.
TEST_F(MoeFfnTest, GroupedGemmReadsF16Rows) {
  const auto G = ops::MoePrefill::kGroupedGemm;
  Case a{"grouped, f16 rows", 40, 16, 8, 256, 256, Q4_K, Q4_K, Q6_K, Case::kRouter, G};
  a.f16_in = true;
  run(a);
  Case b{"grouped, f16 rows, most experts idle", 20, 64, 4, 256, 256, Q5_K, Q5_K, Q4_K, Case::kFewExperts, G};
  b.f16_in = true;
  run(b);
  // The rows put in slot order first (moe_gather_f16 into the d scratch, poisoned before each run),
  // then read as slot-ordered x (TROVE_MOE_GATHER).
  {
    tests::ScopedEnv bad("TROVE_MOE_GATHER", "on");
    auto f = ops::MoeFfn::create(*dev_);
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("TROVE_MOE_GATHER='on'"), std::string::npos) << f.status().message();
  }
  ffn_->force_gather(true);
  a.name = "grouped, f16 rows gathered first";
  run(a);
  b.name = "grouped, f16 rows gathered first, most experts idle";
  run(b);
}

TEST_F(MoeFfnTest, SeveralSlotsPerPass) {
  use_two_slots_per_pass();
  run({"all to one set", 5, 8, 3, 256, 256, Q4_K, Q4_K, Q4_K, Case::kAllSame});
  run({"all to one set", 11, 8, 3, 256, 256, Q4_K, Q4_K, Q4_K, Case::kAllSame});
}

TEST_F(MoeFfnTest, GpuFormOnThisDevice) {
  use_two_slots_per_pass(true);
  run({"gpu form", 3, 8, 2, 256, 256, Q4_K, Q4_K, Q6_K, Case::kRouter});
  run({"gpu form", 9, 8, 2, 256, 256, Q4_K, Q4_K, Q6_K, Case::kRouter});
}

// The direct form (moe_experts_direct / moe_down_direct: a subgroup per row group, inputs through the
// caches; the GPUs' default) on this device, whatever its default: decode steps (the fused down kernel
// spreading the k experts' row parts over the lanes — 24 Q4_K parts per 768-value row, fewer than
// some subgroups' lanes), an expert-matvec prefill, and other work splits.
TEST_F(MoeFfnTest, DirectForm) {
  ops::MoeTuning t;
  t.form = ops::MoeTuning::Form::kDirect;
  ffn_->set_tuning(t);
  ASSERT_TRUE(ffn_->direct());
  run({"direct, router", 1, 16, 8, 256, 768, Q4_K, Q4_K, Q4_K, Case::kRouter});
  run({"direct, random, mixed types", 7, 8, 2, 256, 256, Q4_K, Q5_K, Q6_K, Case::kRandom});
  run({"direct, k=1, float types", 3, 8, 1, 96, 160, BF16, F16, F32, Case::kRandom});
  run({"direct, all to one set", 8, 8, 8, 192, 128, Q8_0, Q8_0, Q8_0, Case::kAllSame});
  run({"direct, expert matvec prefill", 20, 64, 4, 256, 256, Q4_K, Q4_K, Q6_K, Case::kFewExperts,
       ops::MoePrefill::kExpertMatvec});
  t.gate_up_rows = 2;
  t.down_rows = 4;
  ffn_->set_tuning(t);
  run({"direct, rows 2 / 4", 5, 8, 3, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter});
  // The RMSNorm prologue (the engine's decode: no separate FFN norm dispatch), one and two passes over x.
  Case n{"direct, norm prologue", 3, 16, 4, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter};
  n.norm = true;
  run(n);
  n = {"direct, norm prologue, gate and up of different types", 2, 8, 2, 256, 256, Q4_K, Q6_K, Q4_K, Case::kRandom};
  n.norm = true;
  run(n);
  // Pair-indexed decode (the engine's decode: routing without a plan, experts read per (token, j)).
  t = {};
  t.form = ops::MoeTuning::Form::kDirect;
  ffn_->set_tuning(t);
  Case b{"direct, by pair, router", 1, 16, 8, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter};
  b.by_pair = true;
  run(b);
  b = {"direct, by pair, norm prologue, shared experts", 8, 8, 4, 256, 256, Q4_K, Q5_K, Q4_K, Case::kFewExperts};
  b.by_pair = b.norm = true;
  run(b);
  b = {"direct, by pair, router, 5 tokens", 5, 16, 2, 192, 256, Q8_0, Q8_0, Q6_K, Case::kRouter};
  b.by_pair = true;
  run(b);
  // Raw router logits as weights (the router beside O): gate/up scales them by its 1/rms.
  b = {"direct, by pair, raw router logits", 5, 16, 4, 256, 256, Q4_K, Q4_K, Q6_K, Case::kRandom};
  b.by_pair = b.norm = b.raw_weights = true;
  run(b);
  b = {"direct, by pair, raw router logits, k=8 of 8", 1, 8, 8, 256, 256, Q4_K, Q5_K, Q4_K, Case::kAllSame};
  b.by_pair = b.norm = b.raw_weights = true;
  run(b);
}

// The q8 form (TROVE_MOE=q8: moe_experts_q8 / moe_down_q8, x̂ and the SwiGLU rows h rounded to int8
// with a scale per 32 values, integer dot products) on pair-indexed decode steps of 1 and 7 tokens:
// Q4_K, Q5_K, Q6_K, Q8_0 as gate, up and down (gate and up of different types: two passes), the norm
// prologue, adversarial routings (one set for all tokens, few experts, k = 1), rows of 224 (a staged
// tile past the row), workgroups walking several row blocks (q8_workgroups) and 2 / 4 rows per row
// group (the default: 2), split rows in down (2 and 4 subgroups a row group); float experts and a
// plan-indexed step run the direct form (1e-4). Bound 3e-2 of the output's
// norm with a floor of 1e-4 (the rounding must show: the q8 kernels ran): each int8 rounding costs
// ~0.6% for Gaussian activations (the dense q8 test's 2e-2 for one), and a step rounds twice — x̂
// before gate/up (both, through SwiGLU) and h before down. lavapipe: ~10 s (a pipeline per shape).
TEST_F(MoeFfnTest, Q8Form) {
  if (!ffn_->q8_supported()) {
    GTEST_SKIP() << "the device lacks integer dot products, subgroup arithmetic or subgroup shuffles (the q8 form is refused there)";
  }
  ops::MoeTuning t;
  t.form = ops::MoeTuning::Form::kQ8;
  ffn_->set_tuning(t);
  ASSERT_TRUE(ffn_->direct() && ffn_->q8());
  auto q8 = [](Case c, bool norm) {
    c.by_pair = true;
    c.norm = norm;
    c.bound = 3e-2;
    c.min_err = 1e-4;
    return c;
  };
  run(q8({"q8, router", 1, 16, 8, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter}, true));
  run(q8({"q8, all to one set", 7, 8, 4, 256, 256, Q5_K, Q6_K, Q8_0, Case::kAllSame}, true));
  run(q8({"q8, few experts, rows of 224", 7, 16, 2, 224, 256, Q8_0, Q8_0, Q5_K, Case::kFewExperts}, false));
  run(q8({"q8, k=1", 1, 8, 1, 256, 512, Q6_K, Q6_K, Q4_K, Case::kRandom}, true));
  Case raw = q8({"q8, raw router logits", 7, 16, 4, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRandom}, true);
  raw.raw_weights = true;  // the router beside O: gate/up scales them
  run(raw);
  // The router beside O leaving the routing to gate/up (MoeFfnCall::route_logits): its picks from the
  // logits, also where most logits tie, at k = 1, 4 and 8 of 8..128 experts.
  ASSERT_TRUE(ffn_->routes_in_gate_up(ops::MoeFfnCall{.gate = {Q4_K, {}, 768, 256, 16},
                                                       .up = {Q4_K, {}, 768, 256, 16},
                                                       .by_pair = true}));
  const auto R = Case::kRandom;
  for (Case rc : {q8({"q8, routed in gate/up", 7, 16, 4, 256, 768, Q4_K, Q4_K, Q6_K, R}, true),
                  q8({"q8, routed in gate/up, ties", 5, 128, 8, 256, 512, Q4_K, Q5_K, Q4_K, R}, true),
                  q8({"q8, routed in gate/up, k=1", 3, 8, 1, 256, 256, Q6_K, Q6_K, Q8_0, R}, true),
                  q8({"q8, routed in gate/up, k=8 of 8", 2, 8, 8, 256, 256, Q8_0, Q4_K, Q4_K, R}, true)}) {
    rc.raw_weights = rc.route_in_gate_up = true;
    rc.tied_logits = rc.name.find("ties") != std::string::npos;
    run(rc);
  }
  t.q8_workgroups = 2;  // one workgroup per pair / token walks all row blocks
  t.gate_up_rows = 1;
  t.down_rows = 4;
  ffn_->set_tuning(t);
  run(q8({"q8, workgroups walking, rows 1 / 4", 7, 16, 4, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter}, true));
  // Split rows in down (MoeTuning::down_split, TROVE_MOE_Q8_DOWN_SPLIT): 2 with a block per
  // workgroup, 4 with workgroups walking several blocks and 2 rows per row group.
  t = {};
  t.form = ops::MoeTuning::Form::kQ8;
  t.down_split = 2;
  ffn_->set_tuning(t);
  run(q8({"q8, down split 2", 7, 16, 4, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter}, true));
  t.down_split = 4;
  t.down_rows = 2;
  t.q8_workgroups = 2;
  ffn_->set_tuning(t);
  run(q8({"q8, down split 4, rows 2, walking", 3, 8, 8, 256, 512, Q4_K, Q5_K, Q4_K, Case::kRouter}, true));
  for (auto [name, value] : {std::pair{"TROVE_MOE_Q8_DOWN_SPLIT", "3"}, std::pair{"TROVE_MOE_Q8_WG", "96"},
                             std::pair{"TROVE_MOE_Q8_TOUCH", "9"}}) {
    tests::ScopedEnv bad(name, value);
    auto f = ops::MoeFfn::create(*dev_);
    ASSERT_FALSE(f.ok()) << name;
    EXPECT_NE(f.status().message().find(fmt::format("{}='{}'", name, value)), std::string::npos) << f.status().message();
  }
  // A fresh op in the q8 form, reading the environment as it is now.
  auto fresh_q8_op = [&] {
    auto f = ops::MoeFfn::create(*dev_);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    ffn_ = std::make_unique<ops::MoeFfn>(std::move(*f));
    t = {};
    t.form = ops::MoeTuning::Form::kQ8;
    ffn_->set_tuning(t);
  };
  {  // TROVE_MOE_Q8_WG: workgroups of 256 (more row groups per staging), with down split in 2
    tests::ScopedEnv wg("TROVE_MOE_Q8_WG", "256"), split("TROVE_MOE_Q8_DOWN_SPLIT", "2");
    fresh_q8_op();
  }
  run(q8({"q8, workgroups of 256, down split 2", 7, 16, 4, 256, 768, Q4_K, Q4_K, Q6_K, Case::kRouter}, true));
  for (const char* n : {"0", "1", "8"}) {  // TROVE_MOE_Q8_TOUCH (default 4, the runs above): sectors loaded before the staging
    {
      tests::ScopedEnv touch("TROVE_MOE_Q8_TOUCH", n);
      fresh_q8_op();
    }
    run(q8({fmt::format("q8, first block touched {}", n), 7, 16, 4, 256, 768, Q4_K, Q5_K, Q6_K, Case::kRouter}, true));
  }
  fresh_q8_op();  // the rest with the defaults again
  // Float gate/up run the direct form, the Q4_K down the q8 form; a plan-indexed step the direct form.
  Case f = q8({"q8, float gate/up", 3, 8, 2, 256, 256, F16, BF16, Q4_K, Case::kRandom}, true);
  f.min_err = 0;
  run(f);
  run({"q8 form, plan-indexed (direct kernels)", 3, 8, 2, 256, 256, Q4_K, Q4_K, Q6_K, Case::kRouter});
  // Q6_K experts in both part widths (wide: 32 values from 16-byte runs, the default; narrow: 16).
  for (auto parts : {ops::MoeTuning::Q6Parts::kNarrow, ops::MoeTuning::Q6Parts::kWide}) {
    t = {};
    t.form = ops::MoeTuning::Form::kQ8;
    t.q6_parts = parts;
    ffn_->set_tuning(t);
    const bool wide = parts == ops::MoeTuning::Q6Parts::kWide;
    run(q8({wide ? "q8, Q6_K wide parts" : "q8, Q6_K narrow parts", 5, 16, 4, 256, 768, Q6_K, Q6_K, Q6_K, Case::kRouter}, true));
    run(q8({wide ? "q8, Q6_K wide, k=1, no norm" : "q8, Q6_K narrow, k=1, no norm", 1, 8, 1, 256, 512, Q6_K, Q4_K, Q6_K,
            Case::kRandom}, false));
  }
  std::printf("q8 form: largest relative error norm %.3g\n", worst_);
}

TEST_F(MoeFfnTest, RealShapes) {
  if (!std::getenv("TROVE_KERNEL_FULL")) GTEST_SKIP() << "TROVE_KERNEL_FULL=1 runs the Qwen3-30B-A3B layer (GPU)";
  for (uint32_t T : {1u, 7u, 64u, 512u}) {
    run({"30B-A3B, Q6_K down", T, 128, 8, 2048, 768, Q4_K, Q4_K, Q6_K, Case::kRouter});
  }
  run({"30B-A3B, expert matvec prefill", 512, 128, 8, 2048, 768, Q4_K, Q4_K, Q6_K, Case::kRouter,
       ops::MoePrefill::kExpertMatvec});
  run({"30B-A3B, Q4_K down", 8, 128, 8, 2048, 768, Q4_K, Q4_K, Q4_K, Case::kRouter});
  if (!ffn_->q8_supported()) return;
  ops::MoeTuning t;
  t.form = ops::MoeTuning::Form::kQ8;  // the q8 form at the engine's decode (by pair, norm prologue)
  ffn_->set_tuning(t);
  for (uint32_t T : {1u, 8u}) {
    for (GgmlType dn : {Q6_K, Q4_K}) {
      Case c{"30B-A3B, q8 form", T, 128, 8, 2048, 768, Q4_K, Q4_K, dn, Case::kRouter};
      c.by_pair = c.norm = true;
      c.bound = 3e-2;
      c.min_err = 1e-4;
      run(c);
    }
  }
  std::printf("largest relative error norm %.3g\n", worst_);
}

TEST_F(MoeFfnTest, RefusesBadShapes) {
  auto b = dev_->buffer(1 << 20);
  ASSERT_TRUE(b.ok());
  const auto L = ops::MoePlanLayout::make(64, 8);
  ops::StackedExperts g{Q4_K, *b, 256, 256, 8}, dn{Q4_K, *b, 256, 256, 8};
  auto s = dev_->stream();
  ops::MoeFfnCall call{g, g, dn, 4, 2, *b, *b, *b, *b, L, *b, *b, *b, nullptr, ops::MoePrefill::kAuto, *b, *b};
  EXPECT_TRUE(ffn_->record(*s, call).ok());
  call.down.rows = 128;
  EXPECT_NE(ffn_->record(*s, call).message().find("down experts are 8×[128×256]; the layer needs 8×[256×256]"),
            std::string::npos);
  call.down.rows = 256;
  call.gate.w = vk::BufferRange(*b, 0, 4096);
  EXPECT_NE(ffn_->record(*s, call).message().find("buffer 'gate' has 4096 bytes"), std::string::npos);
  call.gate = g;
  call.tokens = 40;
  EXPECT_NE(ffn_->record(*s, call).message().find("40 tokens"), std::string::npos);
  call.tokens = 4;
  call.weights_raw = true;  // raw router logits need the pair-indexed decode with the norm prologue
  EXPECT_NE(ffn_->record(*s, call).message().find("weights_raw"), std::string::npos);
  call.weights_raw = false;
  // Routing in gate/up needs the q8 form's pair-indexed decode with raw weights: refused by name
  // without them (this call: not by pair, no raw weights; then all of it on a form that is not q8).
  call.route_logits = *b;
  EXPECT_NE(ffn_->record(*s, call).message().find("route_logits"), std::string::npos);
  ops::MoeTuning direct;
  direct.form = ops::MoeTuning::Form::kDirect;
  ffn_->set_tuning(direct);
  call.by_pair = call.weights_raw = true;
  call.norm_w = *b;
  const std::string msg = ffn_->record(*s, call).message();
  EXPECT_NE(msg.find("route_logits"), std::string::npos) << msg;
  ffn_->set_tuning({});
  call.route_logits = {};
  call.by_pair = call.weights_raw = false;
  call.norm_w = {};
  ops::StackedExperts odd{F32, *b, 72, 72, 8};
  call.gate = call.up = odd;
  call.down = odd;
  EXPECT_NE(ffn_->record(*s, call).message().find("multiple of 32"), std::string::npos);
}

// TROVE_MOE_GROUPED_MIN (moe_ffn.h, for A/B) takes a token count past the decode kernels' 8; anything
// else is refused by name, on every device.
TEST_F(MoeFfnTest, GroupedMinTokensIsChecked) {
  for (const char* bad : {"8", "16x", "0"}) {
    tests::ScopedEnv env("TROVE_MOE_GROUPED_MIN", bad);
    auto f = ops::MoeFfn::create(*dev_);
    ASSERT_FALSE(f.ok()) << bad;
    EXPECT_NE(f.status().message().find(fmt::format("TROVE_MOE_GROUPED_MIN='{}'", bad)), std::string::npos)
        << f.status().message();
  }
  tests::ScopedEnv env("TROVE_MOE_GROUPED_MIN", "9");
  EXPECT_TRUE(ops::MoeFfn::create(*dev_).ok());
}
