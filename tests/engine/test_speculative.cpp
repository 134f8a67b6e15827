// Speculative decoding (engine/runtime/speculative.h): prompt lookup, greedy verification, speculative
// sampling, rollback.
//  - Host-only: the lookup's match, greedy acceptance, the adaptive draft length, the host sampling
//    distribution against kernels/ref's (what ops::Sampler draws from), and chi-square tests that
//    speculative sampling leaves the target's distribution unchanged (point-mass and draft-model q).
//  - lavapipe, synthetic tiny models (2 layers, Q4_K_M): a step that verifies drafts gives, for every
//    position, the token one-at-a-time greedy decoding gives (dense and MoE); rejected drafts are rolled
//    back, and the pool and the prefix cache hold exactly the accepted tokens (a rejected draft that
//    completed a block registers nothing; an accepted one registers it).
//  - lavapipe, the trained fixture models (tiny-coder + tiny-coder-draft): greedy output with prompt
//    lookup, the draft model and auto equals the output without speculation, through generate() and
//    through the Scheduler with two concurrent sequences; chi-square on the fixtures' real
//    distributions. About 25 s on 2 idle cores (each step's 152k-row head is most of it on lavapipe).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/log.h"
#include "engine/gguf/synthetic.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/generate.h"
#include "engine/runtime/speculative.h"
#include "kernels/ref/sample_ref.h"
#include "server/scheduler.h"
#include "tests/scoped_env.h"

using namespace trove;
using engine::SparseDist;
using engine::SpecMethod;
using engine::StepInput;

namespace {

const std::filesystem::path& work_dir() {
  static const auto dir = std::filesystem::temp_directory_path() / ("trove-test-spec-" + std::to_string(::getpid()));
  return dir;
}

struct RemoveWorkDir : testing::Environment {
  void TearDown() override { std::filesystem::remove_all(work_dir()); }
};
[[maybe_unused]] testing::Environment* const kCleanup = testing::AddGlobalTestEnvironment(new RemoveWorkDir);

std::string synthetic(const std::string& preset) {
  const auto& dir = work_dir();
  std::filesystem::create_directories(dir);
  gguf::MkModelOptions o;
  o.preset = preset;
  o.type = "Q4_K_M";
  o.layers = 2;
  o.out = (dir / (preset + ".gguf")).string();
  o.seed = 6;
  auto r = gguf::write_synthetic_model(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return o.out;
}

std::unique_ptr<engine::Engine> load(const std::string& path, uint32_t n_ctx, uint32_t seqs, uint32_t block_tokens) {
  engine::EngineOptions o;
  o.model_path = path;
  o.n_ctx = n_ctx;
  o.max_sequences = seqs;
  o.block_tokens = block_tokens;
  o.max_batch_tokens = 256;
  auto e = engine::Engine::load(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

std::vector<int32_t> prompt(uint32_t n, int32_t salt) {
  std::vector<int32_t> v(n);
  for (uint32_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 7919 + salt * 104729) % 150000);
  return v;
}

// Greedy decoding one token per step: the prompt's step, then `n - 1` more. Returns g[0..n).
std::vector<int32_t> decode_one_at_a_time(engine::Engine& e, engine::SeqId seq, const std::vector<int32_t>& p, uint32_t n) {
  std::vector<int32_t> g;
  StepInput in;
  in.seq = seq;
  in.tokens = p;
  auto out = e.step(std::span<const StepInput>(&in, 1));
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  if (!out.ok()) return g;
  g.push_back((*out)[0].token);
  while (g.size() < n) {
    in.tokens = std::span<const int32_t>(&g.back(), 1);
    out = e.step(std::span<const StepInput>(&in, 1));
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return g;
    g.push_back((*out)[0].token);
  }
  return g;
}

// Pearson chi-square of observed counts against expected probabilities (bins under 5 expected counts
// pooled), and the 0.1% critical value for its degrees of freedom (Wilson-Hilferty).
struct ChiSquare {
  double stat = 0, critical = 0;
  int df = 0;
};
ChiSquare chi_square(const std::map<int32_t, uint64_t>& observed, const SparseDist& expected, uint64_t n) {
  ChiSquare c;
  double pooled_e = 0, pooled_o = 0;
  uint64_t seen = 0;
  int bins = 0;
  for (const auto& [t, p] : expected.p) {
    const double e = p * n;
    const auto it = observed.find(t);
    const double o = it == observed.end() ? 0 : double(it->second);
    seen += static_cast<uint64_t>(o);
    if (e < 5) {
      pooled_e += e;
      pooled_o += o;
      continue;
    }
    c.stat += (o - e) * (o - e) / e;
    ++bins;
  }
  pooled_o += double(n - seen);  // tokens outside the expected support land here (and should not exist)
  if (pooled_e > 0 || pooled_o > 0) {
    c.stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / std::max(pooled_e, 1e-9);
    ++bins;
  }
  c.df = std::max(1, bins - 1);
  const double z = 3.09, k = c.df;
  c.critical = k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
  return c;
}

SparseDist dist(std::vector<std::pair<int32_t, double>> p) {
  double s = 0;
  for (auto& e : p) s += e.second;
  for (auto& e : p) e.second /= s;
  return SparseDist{std::move(p)};
}

}  // namespace

TEST(Speculative, LookupDraftsTheContinuationOfTheLongestRecentMatch) {
  //                          0  1  2  3  4  5  6  7  8  9 10 11 12 13
  const std::vector<int32_t> h{5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 2, 3};
  // Suffix [2 3]: at 2..3 (then 9 9 1) and 7..8 (then 7 8 4); [1 2 3] is not the suffix ([4 2 3] is),
  // so both match 2 tokens and the most recent wins.
  auto d = engine::lookup_draft(h, 3);
  EXPECT_EQ(d.ngram, 2u);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{7, 8, 4}));
  // A longer match beats a more recent one: suffix [1 2 3] matches at 1..3 with 3 tokens.
  const std::vector<int32_t> h2{1, 2, 3, 6, 6, 2, 3, 5, 1, 2, 3};
  d = engine::lookup_draft(h2, 2);
  EXPECT_EQ(d.ngram, 3u);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{6, 6}));
  EXPECT_TRUE(engine::lookup_draft(std::vector<int32_t>{1, 2, 3, 4}, 4).tokens.empty()) << "no repeat, no draft";
  EXPECT_TRUE(engine::lookup_draft(h, 0).tokens.empty());
  // A repeating pattern drafts into its own suffix.
  d = engine::lookup_draft(std::vector<int32_t>{4, 5, 4, 5, 4, 5}, 4);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{4, 5}));
}

TEST(Speculative, GreedyVerificationKeepsTheDraftsUpToTheFirstDisagreement) {
  const std::vector<int32_t> drafts{10, 11, 12};
  EXPECT_EQ(engine::verify_greedy(drafts, std::vector<int32_t>{10, 11, 12, 13}).accepted, 3u);
  EXPECT_EQ(engine::verify_greedy(drafts, std::vector<int32_t>{10, 11, 12, 13}).next, 13);
  const auto v = engine::verify_greedy(drafts, std::vector<int32_t>{10, 5, 12, 13});
  EXPECT_EQ(v.accepted, 1u);
  EXPECT_EQ(v.next, 5) << "the target's own token replaces the first rejected draft";
  EXPECT_EQ(engine::verify_greedy({}, std::vector<int32_t>{7}).next, 7);
  engine::AdaptiveK k;
  k.update(4, 4);
  EXPECT_EQ(k.k, 6u);
  k.update(6, 6);
  EXPECT_EQ(k.k, engine::kMaxDraftTokens);
  for (int i = 0; i < 10; ++i) k.update(3, 1);
  EXPECT_EQ(k.k, 1u);
}

// ops::Sampler draws from kernels/ref's sampling_probs; the host's sampling_dist (used for p and q)
// must be the same distribution, for the settings clients send.
// kAuto's guard: the draft length with the most expected tokens a second, from the draft model's step
// time, its acceptance and the target's step time by width. With the H100's measured costs
// (docs/performance.md, 2026-12-05: the 8B's steps of 1..8 tokens at depth 1024, a Qwen3-0.6B step 1.54 ms)
// and 70% acceptance: k = 0 yields 1/3.84 = 0.2604 tokens a ms, k = 1 1.7/(4.73 + 1.54) = 0.2711, k = 2
// 2.19/(5.32 + 3.08) = 0.2607, k = 3 2.533/(6.04 + 4.62) = 0.2376: one draft.
TEST(Speculative, BestDraftLengthWeighsDraftStepsAgainstTargetSteps) {
  using engine::best_draft_k;
  const std::vector<double> h100 = {0, 3.84, 4.73, 5.32, 6.04, 6.73, 7.63, 8.52, 9.38};
  EXPECT_EQ(best_draft_k(0.7, 1.54, h100, 7), 1u);
  // A draft step of 0.2 ms: k = 2 2.19/5.72 = 0.3829 beats k = 3 2.533/6.64 = 0.3815 and k = 1 0.3448.
  EXPECT_EQ(best_draft_k(0.7, 0.2, h100, 7), 2u);
  EXPECT_EQ(best_draft_k(0.7, 0.2, h100, 1), 1u) << "never beyond k_max";
  // A draft step as slow as the target's, or drafts never accepted: no drafting.
  EXPECT_EQ(best_draft_k(0.7, 3.84, h100, 7), 0u);
  EXPECT_EQ(best_draft_k(0.0, 0.01, h100, 7), 0u);
  // Free drafts that are always right: the widest step (8 tokens / 9.38 ms beats 7 / 8.52).
  EXPECT_EQ(best_draft_k(1.0, 0.0, h100, 7), 7u);
  // Only one-token steps measured: wider steps taken as free. a = 0.5, draft 1 ms: k = 1 1.5/4.84 = 0.310,
  // k = 2 1.75/5.84 = 0.300, k = 0 0.260.
  const std::vector<double> one = {0, 3.84, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(best_draft_k(0.5, 1.0, one, 7), 1u);
  // Widths 1 and 4 measured: 2 and 3 grow by (6.04 - 3.84) / 3 per token from width 1, 5.. from width 4.
  // a = 0.9, draft 0.5 ms: k = 1 1.9/(4.573 + 0.5) = 0.3745, k = 2 2.71/(5.307 + 1) = 0.4297, k = 3
  // 3.439/(6.04 + 1.5) = 0.4561, k = 4 4.095/(6.773 + 2) = 0.4668, k = 5 4.686/(7.507 + 2.5) = 0.4683,
  // k = 6 5.217/(8.24 + 3) = 0.4642: five.
  const std::vector<double> two = {0, 3.84, 0, 0, 6.04, 0, 0, 0, 0};
  EXPECT_EQ(best_draft_k(0.9, 0.5, two, 7), 5u);
  EXPECT_EQ(best_draft_k(0.9, 0.5, std::vector<double>(9, 0.0), 7), 0u) << "no target step measured";
  // No one-token step measured (speculation that always drafts): widths 3 and 5 at 5.32 and 6.73 ms,
  // 0.705 ms a token, so T(1) = 5.32 - 2 * 0.705 = 3.91, T(2) = 4.615, T(4) = 6.025. a = 0.7, draft
  // 1.54 ms: k = 0 0.2558, k = 1 1.7/(4.615 + 1.54) = 0.2762, k = 2 2.19/(5.32 + 3.08) = 0.2607: one;
  // a draft step of 3 ms: k = 1 1.7/7.615 = 0.2232, none.
  const std::vector<double> wide = {0, 0, 0, 5.32, 0, 6.73, 0, 0, 0};
  EXPECT_EQ(best_draft_k(0.7, 1.54, wide, 7), 1u);
  EXPECT_EQ(best_draft_k(0.7, 3.0, wide, 7), 0u);
}

TEST(Speculative, HostSamplingDistributionIsTheSamplersReference) {
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0, 3);
  std::vector<float> logits(5000);
  for (auto& l : logits) l = n(rng);
  logits[17] = logits[18] = 12.5f;  // a tie at the top: lower id first, as the reference sorts
  struct Case {
    float t;
    uint32_t k;
    float p, m;
  };
  for (const Case c : {Case{1.0f, 40, 1.0f, 0.0f}, Case{0.7f, 20, 0.95f, 0.0f}, Case{1.3f, 64, 0.8f, 0.05f},
                       Case{0.6f, 1, 1.0f, 0.0f}}) {
    engine::Sampling s;
    s.temperature = c.t;
    s.top_k = c.k;
    s.top_p = c.p;
    s.min_p = c.m;
    const SparseDist d = engine::sampling_dist(logits, s);
    const auto ref = ref::sampling_probs(logits.data(), logits.size(), c.t, c.k, c.p, c.m);
    double total = 0;
    size_t support = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_NEAR(d.prob(static_cast<int32_t>(i)), ref[i], 1e-12) << "token " << i << ", temperature " << c.t;
      support += ref[i] > 0;
    }
    for (const auto& e : d.p) total += e.second;
    EXPECT_NEAR(total, 1.0, 1e-12);
    EXPECT_EQ(d.p.size(), support);
  }
}

// The first token of a round is distributed as p[0] whatever q drafted (the point mass of prompt
// lookup, a draft model's q that disagrees with p), and, given that the first draft was accepted, the
// second token is distributed as p[1].
TEST(Speculative, SpeculativeSamplingDrawsFromTheTargetDistribution) {
  const SparseDist p0 = dist({{1, 0.40}, {2, 0.25}, {3, 0.15}, {4, 0.10}, {5, 0.06}, {6, 0.04}});
  const SparseDist p1 = dist({{7, 0.5}, {8, 0.3}, {9, 0.2}});
  const SparseDist p2 = dist({{1, 1.0}});
  const SparseDist q0 = dist({{2, 0.5}, {5, 0.3}, {9, 0.2}});  // puts mass where p has little or none
  const SparseDist q1 = dist({{8, 0.9}, {9, 0.1}});
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uni(0, 1);
  const uint64_t n = 40000;
  for (const bool point_mass : {true, false}) {
    std::map<int32_t, uint64_t> first, second;
    uint64_t n_second = 0;
    for (uint64_t i = 0; i < n; ++i) {
      std::vector<int32_t> drafts;
      if (point_mass) {
        drafts = {2, 8};  // prompt lookup: always the same continuation
      } else {
        drafts = {q0.draw(uni(rng)), q1.draw(uni(rng))};
      }
      const std::vector<SparseDist> p{p0, p1, p2}, q{q0, q1};
      const auto v = engine::verify_sampled(drafts, p, point_mass ? std::span<const SparseDist>{} : std::span<const SparseDist>(q), rng);
      const int32_t t0 = v.accepted >= 1 ? drafts[0] : v.next;
      ++first[t0];
      if (v.accepted >= 1) {  // the context after the first token is the drafted one: p1 applies
        ++n_second;
        ++second[v.accepted >= 2 ? drafts[1] : v.next];
      }
    }
    const auto c0 = chi_square(first, p0, n);
    EXPECT_LT(c0.stat, c0.critical) << (point_mass ? "point mass" : "draft q") << ": first token, df " << c0.df;
    const auto c1 = chi_square(second, p1, n_second);
    EXPECT_LT(c1.stat, c1.critical) << (point_mass ? "point mass" : "draft q") << ": second token, df " << c1.df;
    std::printf("%s: chi-square first %.1f (df %d, 0.1%% critical %.1f), second %.1f (df %d, %.1f; %llu samples)\n",
                point_mass ? "point mass q" : "draft-model q", c0.stat, c0.df, c0.critical, c1.stat, c1.df, c1.critical,
                static_cast<unsigned long long>(n_second));
  }
  // A broken rule must fail: accepting every draft gives q's distribution, not p's.
  std::map<int32_t, uint64_t> naive;
  for (uint64_t i = 0; i < n; ++i) ++naive[q0.draw(uni(rng))];
  EXPECT_GT(chi_square(naive, p0, n).stat, chi_square(naive, p0, n).critical);
}

// One step verifying [next, d1..dk] gives, at every position, the token greedy decoding one token per
// step gives; accept() keeps the agreeing drafts and rolls the rest back, and only accepted tokens'
// full blocks reach the prefix cache (blocks of 16 tokens; the prompt is 13).
TEST(Speculative, VerificationStepEqualsOneAtATimeDecodeAndKeepsOnlyAcceptedTokens) {
  auto e = load(synthetic("tiny"), 128, 3, 16);
  ASSERT_TRUE(e);
  const auto p = prompt(13, 1);
  auto a = e->open_sequence();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(e->attach_prefix(*a, {}, "a").ok());
  const auto g = decode_one_at_a_time(*e, *a, p, 5);  // A holds p + g0..g3 (17 tokens)
  ASSERT_EQ(g.size(), 5u);

  auto b = e->open_sequence();
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(e->attach_prefix(*b, {}, "b").ok());
  StepInput pre;
  pre.seq = *b;
  pre.tokens = p;
  pre.sample = false;
  ASSERT_TRUE(e->step(std::span<const StepInput>(&pre, 1)).ok());

  engine::Speculator sp(*e, nullptr);
  engine::SpecStats stats;
  engine::SpecSequence s;
  s.history = p;
  s.history.push_back(g[0]);
  sp.start(s, SpecMethod::kLookup, {});
  // Round 1: drafts [X, Y] at positions 14, 15; X is wrong. Y completes block 0, provisionally.
  const int32_t x = (g[1] + 1) % 1000, y = 77;
  s.used = SpecMethod::kLookup;
  s.fed = {g[0], x, y};
  StepInput in;
  sp.fill(s, *b, in);
  EXPECT_TRUE(in.all_tokens);
  EXPECT_EQ(in.provisional, 2u);
  auto out = e->step(std::span<const StepInput>(&in, 1));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ((*out)[0].tokens.size(), 3u);
  EXPECT_EQ((*out)[0].tokens[0], g[1]) << "the argmax after the fed token is the one-at-a-time token";
  auto emitted = sp.accept(s, *b, (*out)[0], stats);
  ASSERT_TRUE(emitted.ok());
  EXPECT_EQ(*emitted, (std::vector<int32_t>{g[1]}));
  EXPECT_EQ(e->length(*b), 14u) << "the rejected drafts are rolled back";
  EXPECT_EQ(e->pool_stats().used_blocks, 3u) << "A: 2 blocks, B: 1";
  {
    auto c = e->open_sequence();
    ASSERT_TRUE(c.ok());
    std::vector<int32_t> with_drafts = p;
    with_drafts.insert(with_drafts.end(), {g[0], x, y, 5, 6});
    auto got = e->attach_prefix(*c, with_drafts, "b");
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, 0u) << "the block the rejected draft completed was never registered";
    e->close_sequence(*c);
  }
  // Round 2: drafts [g2, g3] at 15, 16: both right; g2 completes block 0, which is registered once kept.
  s.used = SpecMethod::kLookup;
  s.fed = {g[1], g[2], g[3]};
  StepInput in2;
  sp.fill(s, *b, in2);
  out = e->step(std::span<const StepInput>(&in2, 1));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ((*out)[0].tokens, (std::vector<int32_t>{g[2], g[3], g[4]})) << "every position equals one-at-a-time decode";
  emitted = sp.accept(s, *b, (*out)[0], stats);
  ASSERT_TRUE(emitted.ok());
  EXPECT_EQ(*emitted, (std::vector<int32_t>{g[2], g[3], g[4]}));
  EXPECT_EQ(e->tokens(*b), e->tokens(*a)) << "B holds exactly what one-at-a-time decoding put in A";
  EXPECT_EQ(s.history.back(), g[4]);
  EXPECT_EQ(stats.lookup.drafted, 4u);
  EXPECT_EQ(stats.lookup.accepted, 2u);
  EXPECT_EQ(stats.lookup.steps, 2u);
  {
    auto c = e->open_sequence();
    ASSERT_TRUE(c.ok());
    auto got = e->attach_prefix(*c, e->tokens(*b), "b");
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, 16u) << "the accepted block is in the prefix cache";
    e->close_sequence(*c);
  }
  e->close_sequence(*a);
  e->close_sequence(*b);
  EXPECT_EQ(e->pool_stats().used_blocks, 0u);
  EXPECT_EQ(e->pool_stats().cached_blocks, 2u) << "block 0 of A (namespace a) and of B (namespace b)";
}

void moe_verification_equals_one_at_a_time();

// The MoE's verification step of 3 tokens equals one-token steps, with the device's default kernels
// and with the decode path GPUs take (the q8 expert kernels with the FFN norm folded in), its router
// fused after O or beside O (the default), its top-k in the router (the default) or in the experts'
// gate/up kernel (TROVE_MOE_TOPK=experts).
TEST(Speculative, MoeVerificationStepEqualsOneAtATimeDecode) {
  struct Setting {
    const char *moe, *router, *topk;
  };
  for (const Setting set : {Setting{nullptr, nullptr, nullptr}, Setting{"q8", "fused", nullptr},
                            Setting{"q8", "beside", "router"}, Setting{"q8", "beside", "experts"}}) {
    auto name = [](const char* v) { return v ? v : "(default)"; };
    SCOPED_TRACE(fmt::format("TROVE_MOE={} TROVE_MOE_ROUTER={} TROVE_MOE_TOPK={}", name(set.moe),
                             name(set.router), name(set.topk)));
    tests::ScopedEnv moe("TROVE_MOE", set.moe), router("TROVE_MOE_ROUTER", set.router);
    tests::ScopedEnv topk("TROVE_MOE_TOPK", set.topk);
    moe_verification_equals_one_at_a_time();
  }
}

void moe_verification_equals_one_at_a_time() {
  auto e = load(synthetic("tiny-moe"), 128, 1, 16);
  ASSERT_TRUE(e);
  const auto p = prompt(11, 2);
  auto a = e->open_sequence();
  ASSERT_TRUE(a.ok());
  const auto g = decode_one_at_a_time(*e, *a, p, 4);
  ASSERT_EQ(g.size(), 4u);
  ASSERT_TRUE(e->truncate(*a, static_cast<uint32_t>(p.size())).ok());
  const std::vector<int32_t> fed{g[0], g[1], g[2]};
  StepInput in;
  in.seq = *a;
  in.tokens = fed;
  in.all_tokens = true;
  in.provisional = 2;
  auto out = e->step(std::span<const StepInput>(&in, 1));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ((*out)[0].tokens, (std::vector<int32_t>{g[1], g[2], g[3]}));
  EXPECT_EQ((*out)[0].token, g[3]);
}

// The trained fixtures: the draft model agrees with the target often, prompt lookup finds the code the
// prompt holds. Greedy output is the same with every method, alone and beside another sequence.
class FixtureModels : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = TROVE_FIXTURE_MODELS;
    target_ = load(dir + "/tiny-coder.gguf", 512, 2, 64).release();
    draft_ = load(dir + "/tiny-coder-draft.gguf", 512, 2, 64).release();
  }
  static void TearDownTestSuite() {
    delete target_;
    delete draft_;
  }
  static std::vector<int32_t> chat_prompt() {
    // An agent's second request: the model's first turn is in the prompt, and its next turn starts
    // the same way (prompt lookup's case).
    const std::string text =
        "<|im_start|>user\nRename the function parse_args to parse_options in main.py<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nI need to find the definition of `parse_args` in main.py first, then "
        "replace that line exactly.\n</think>\n\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": "
        "{\"path\": \"main.py\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n"
        "1\tdef parse_args(argv):\n2\t    return argv[1:]\n</tool_response><|im_end|>\n<|im_start|>assistant\n";
    return target_->tokenizer().encode(text, /*parse_special=*/true);
  }
  static constexpr uint32_t kTokens = 10;
  static inline engine::Engine* target_ = nullptr;
  static inline engine::Engine* draft_ = nullptr;
};

TEST_F(FixtureModels, GreedyOutputIsTheSameWithEverySpeculationMethod) {
  ASSERT_TRUE(target_ && draft_);
  ASSERT_TRUE(engine::Speculator::check_draft_model(*target_, *draft_).ok());
  const auto p = chat_prompt();
  // The Scheduler: three sequences decoding together — without speculation, with prompt lookup, with
  // the draft model — so steps mix 1 to 8 tokens per sequence; each must write the same text. Drafts of
  // at most 3: every step size compiles its own matvec pipelines on lavapipe (seconds each), and
  // 1..3 drafts cover acceptance, rejection and the bonus token all the same.
  server::SchedulerOptions so;
  so.draft = draft_;
  so.max_draft = 3;
  std::vector<std::string> texts;
  {
    server::Scheduler sched(*target_, {}, so);
    std::vector<std::shared_ptr<server::GenerationStream>> streams;
    for (SpecMethod m : {SpecMethod::kOff, SpecMethod::kLookup, SpecMethod::kDraft}) {
      server::GenerationRequest r;
      r.prompt = p;
      r.max_tokens = kTokens;
      r.use_cache = false;
      r.speculative = m;
      streams.push_back(sched.submit(std::move(r)));
    }
    for (auto& s : streams) {
      std::string text;
      for (bool done = false; !done;) {
        std::vector<server::GenerationEvent> evs;
        s->wait(evs, std::chrono::milliseconds(200));
        for (auto& ev : evs) {
          if (ev.kind == server::GenerationEvent::Kind::kText) text += ev.text;
          if (ev.kind != server::GenerationEvent::Kind::kDone) continue;
          EXPECT_NE(ev.result.finish, server::FinishReason::kError) << ev.result.error;
          EXPECT_EQ(ev.result.generated_tokens, kTokens);
          done = true;
        }
      }
      texts.push_back(text);
    }
    EXPECT_EQ(texts[1], texts[0]) << "prompt lookup";
    EXPECT_EQ(texts[2], texts[0]) << "draft model";
    const auto st = sched.stats();
    EXPECT_GT(st.spec.draft.accepted, 0u);
    EXPECT_GT(st.spec.lookup.drafted, 0u);
    // What auto would weigh the draft model by: its steps timed, the decode-only steps reported by width.
    EXPECT_TRUE(st.draft_model);
    EXPECT_GT(st.draft_costs.draft_step_s, 0.0);
    EXPECT_GT(*std::max_element(st.draft_costs.target_step_s.begin(), st.draft_costs.target_step_s.end()), 0.0);
    EXPECT_EQ(st.draft_costs.drafted, st.spec.draft.drafted);
    EXPECT_EQ(st.draft_costs.accepted, st.spec.draft.accepted);
    std::printf("scheduler: lookup %llu/%llu, draft %llu/%llu accepted, %llu steps for 3 x %u tokens\n",
                static_cast<unsigned long long>(st.spec.lookup.accepted), static_cast<unsigned long long>(st.spec.lookup.drafted),
                static_cast<unsigned long long>(st.spec.draft.accepted), static_cast<unsigned long long>(st.spec.draft.drafted),
                static_cast<unsigned long long>(st.steps), kTokens);
  }
  EXPECT_EQ(target_->pool_stats().used_blocks, 0u);
  EXPECT_EQ(draft_->pool_stats().used_blocks, 0u) << "finished requests close their draft sequences";

  // generate() (trove run) alone with auto: lookup where it finds a 3-gram, the draft model elsewhere.
  engine::Speculator sp(*target_, draft_);
  auto seq = target_->open_sequence();
  ASSERT_TRUE(seq.ok());
  engine::GenerateOptions go;
  go.max_tokens = kTokens;
  go.max_draft = 3;
  go.speculative = SpecMethod::kAuto;
  go.speculator = &sp;
  auto r = engine::generate(*target_, *seq, p, go, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text, texts[0]);
  EXPECT_LT(r->decode_steps, kTokens - 1) << "fewer target steps than tokens";
  EXPECT_GT(r->spec.draft.accepted + r->spec.lookup.accepted, 0u);
  std::printf("generate auto: %u tokens in %u target steps; drafts accepted: lookup %llu/%llu, draft model %llu/%llu\n",
              r->generated_tokens, r->decode_steps, static_cast<unsigned long long>(r->spec.lookup.accepted),
              static_cast<unsigned long long>(r->spec.lookup.drafted), static_cast<unsigned long long>(r->spec.draft.accepted),
              static_cast<unsigned long long>(r->spec.draft.drafted));
  target_->close_sequence(*seq);
  EXPECT_EQ(draft_->pool_stats().used_blocks, 0u) << "generate() closes the draft model's sequence";
}

// kAuto's guard on the fixtures, driven as the scheduler drives it: rounds of propose, one target step,
// accept, and the step's time reported. Until kAutoLearnDrafts draft-model drafts are verified auto
// drafts with the draft model wherever lookup finds no 3-token match; then only if that pays against
// the reported target steps: never when a target step is reported at 0.1 us (the draft's own steps
// take milliseconds), still when one is reported at 100 s. Greedy output stays what the target writes.
TEST_F(FixtureModels, AutoDraftsByTheDraftModelOnlyWhereItPays) {
  ASSERT_TRUE(target_ && draft_);
  const auto p = chat_prompt();
  struct Run {
    uint32_t draft_rounds_learning = 0, draft_rounds_after = 0;
    std::vector<int32_t> tokens;
    bool told = false;
  };
  auto run = [&](double target_step_s) {
    Run r;
    log::ScopedLogCapture logs;
    engine::Speculator sp(*target_, draft_);
    engine::SpecStats stats;
    auto seq = target_->open_sequence();
    EXPECT_TRUE(seq.ok());
    if (!seq.ok()) return r;
    StepInput pre;
    pre.seq = *seq;
    pre.tokens = p;
    auto first = target_->step(std::span<const StepInput>(&pre, 1));
    EXPECT_TRUE(first.ok());
    if (!first.ok()) return r;
    engine::SpecSequence s;
    s.history = p;
    s.history.push_back((*first)[0].token);
    sp.start(s, SpecMethod::kAuto, {});
    for (int round = 0; round < 24 && target_->length(*seq) + 8 < 512; ++round) {
      const bool learning = sp.draft_costs().drafted < engine::kAutoLearnDrafts;
      s.cap = 3;
      engine::SpecSequence* one = &s;
      sp.propose(std::span<engine::SpecSequence* const>(&one, 1), engine::kMaxDraftTokens);
      if (s.used == SpecMethod::kDraft) ++(learning ? r.draft_rounds_learning : r.draft_rounds_after);
      StepInput in;
      sp.fill(s, *seq, in);
      auto out = target_->step(std::span<const StepInput>(&in, 1));
      EXPECT_TRUE(out.ok()) << out.status().ToString();
      if (!out.ok()) break;
      sp.observe_target_step(static_cast<uint32_t>(in.tokens.size()), target_step_s);  // every width alike
      auto got = sp.accept(s, *seq, (*out)[0], stats);
      EXPECT_TRUE(got.ok());
      if (!got.ok()) break;
    }
    r.tokens.assign(s.history.begin() + static_cast<std::ptrdiff_t>(p.size()), s.history.end());
    r.told = logs.contains("auto: the draft model's rounds do not pay here");
    sp.stop(s);
    target_->close_sequence(*seq);
    return r;
  };
  const Run slow_draft = run(1e-7), cheap_draft = run(100.0);
  std::printf("draft-model rounds while learning / after: target steps of 0.1 us %u / %u, of 100 s %u / %u\n",
              slow_draft.draft_rounds_learning, slow_draft.draft_rounds_after, cheap_draft.draft_rounds_learning,
              cheap_draft.draft_rounds_after);
  EXPECT_GT(slow_draft.draft_rounds_learning, 0u);
  EXPECT_EQ(slow_draft.draft_rounds_after, 0u) << "a draft step that costs more than it saves";
  EXPECT_TRUE(slow_draft.told);
  EXPECT_GT(cheap_draft.draft_rounds_after, 0u) << "drafts that pay are kept after the learning phase";
  EXPECT_FALSE(cheap_draft.told);
  const size_t n = std::min(slow_draft.tokens.size(), cheap_draft.tokens.size());
  ASSERT_GT(n, 40u);
  EXPECT_TRUE(std::equal(slow_draft.tokens.begin(), slow_draft.tokens.begin() + static_cast<std::ptrdiff_t>(n),
                         cheap_draft.tokens.begin()))
      << "greedy output does not depend on how it was drafted";
  EXPECT_EQ(draft_->pool_stats().used_blocks, 0u);
}

// Speculative sampling with the fixtures' real distributions after a prompt: the target's p and the
// draft model's q (temperature 2, top-k 40). The first token of a round must follow p.
TEST_F(FixtureModels, SpeculativeSamplingFollowsTheTargetOnRealDistributions) {
  ASSERT_TRUE(target_ && draft_);
  const auto p = chat_prompt();
  engine::Sampling s;
  s.temperature = 2.0f;  // a broad p: many bins for the test
  s.top_k = 40;
  auto logits_after = [&](engine::Engine& e) {
    auto seq = e.open_sequence();
    EXPECT_TRUE(seq.ok());
    StepInput in;
    in.seq = *seq;
    in.tokens = p;
    in.sample = false;
    in.want_logits = true;
    auto out = e.step(std::span<const StepInput>(&in, 1));
    EXPECT_TRUE(out.ok());
    e.close_sequence(*seq);
    return out.ok() ? (*out)[0].logits : std::vector<float>{};
  };
  const SparseDist pt = engine::sampling_dist(logits_after(*target_), s);
  const SparseDist qd = engine::sampling_dist(logits_after(*draft_), s);
  ASSERT_FALSE(pt.p.empty());
  ASSERT_FALSE(qd.p.empty());
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> uni(0, 1);
  const uint64_t n = 30000;
  std::map<int32_t, uint64_t> first;
  const std::vector<SparseDist> pp{pt, pt}, qq{qd};
  for (uint64_t i = 0; i < n; ++i) {
    const std::vector<int32_t> d{qd.draw(uni(rng))};
    const auto v = engine::verify_sampled(d, pp, qq, rng);
    ++first[v.accepted ? d[0] : v.next];
  }
  const auto c = chi_square(first, pt, n);
  std::printf("fixture p vs draft q: chi-square %.1f (df %d, 0.1%% critical %.1f)\n", c.stat, c.df, c.critical);
  EXPECT_LT(c.stat, c.critical);
}
