// The engine's own behaviour on lavapipe with the tiny synthetic model (F32): a batched step computes
// what separate steps compute, chunked prefill equals one-shot prefill, truncate + recompute restores
// the same logits, and every refused step (context, batch limit, pool, unknown or repeated sequence,
// bad token) is a clear error that leaves every sequence as it was, and decode through the fused
// matvec (ops::Matvec) computes what the matmul path computes (on a 2-layer Q4_K_M model). ~35 s on 2
// cores (each logits row is a 152k × 256 product on the CPU's Vulkan).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "common/log.h"
#include "engine/gguf/synthetic.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/generate.h"
#include "engine/runtime/vulkan_engine.h"
#include "tests/scoped_env.h"

using namespace trove;
using engine::StepInput;

namespace {

const std::filesystem::path& work_dir() {
  static const auto dir = std::filesystem::temp_directory_path() / ("trove-test-engine-" + std::to_string(::getpid()));
  return dir;
}

struct RemoveWorkDir : testing::Environment {
  void TearDown() override { std::filesystem::remove_all(work_dir()); }
};
[[maybe_unused]] testing::Environment* const kCleanup = testing::AddGlobalTestEnvironment(new RemoveWorkDir);

// A synthetic model written once into the work directory (layers 0: the preset's).
std::string write_model(const char* preset, const char* type, uint32_t layers, const char* file, uint64_t seed) {
  const auto& dir = work_dir();
  std::filesystem::create_directories(dir);
  gguf::MkModelOptions o;
  o.preset = preset;
  o.type = type;
  if (layers) o.layers = layers;
  o.out = (dir / file).string();
  o.seed = seed;
  auto r = gguf::write_synthetic_model(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return o.out;
}

std::string model_path() {
  static const std::string path = write_model("tiny", "F32", 0, "tiny.gguf", 5);
  return path;
}

// The tiny preset in Q4_K_M (Q4_K and Q6_K weights) with 2 layers: decode through the quantized
// matvecs, and a head 7x smaller than F32's (each step's head is most of its time on lavapipe).
std::string quantized_model_path() {
  static const std::string path = write_model("tiny", "Q4_K_M", 2, "tiny-q4_k_m.gguf", 6);
  return path;
}

// The tiny-moe preset in Q4_K_M with 2 layers (8 experts, top-2): the MoE decode paths.
std::string moe_model_path() {
  static const std::string path = write_model("tiny-moe", "Q4_K_M", 2, "tiny-moe-q4_k_m.gguf", 7);
  return path;
}

std::unique_ptr<engine::Engine> load(uint32_t n_ctx = 256, uint32_t seqs = 3, uint64_t pool_bytes = 0,
                                     uint32_t max_batch = 64, const std::string& path = model_path()) {
  engine::EngineOptions o;
  o.model_path = path;
  o.n_ctx = n_ctx;
  o.max_sequences = seqs;
  o.kv_pool_bytes = pool_bytes;
  o.max_batch_tokens = max_batch;
  auto e = engine::Engine::load(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

std::vector<int32_t> prompt(uint32_t n, int32_t salt) {
  std::vector<int32_t> v(n);
  for (uint32_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * 7919 + salt * 104729) % 150000);
  return v;
}

// One step of a new sequence with the n tokens of prompt(n, salt), then the sequence closed: a prefill
// step of n tokens alone (the profile tests' steps).
void step_alone(engine::Engine& e, uint32_t n, int32_t salt) {
  auto seq = e.open_sequence();
  ASSERT_TRUE(seq.ok());
  StepInput in;
  in.seq = *seq;
  const std::vector<int32_t> tok = prompt(n, salt);
  in.tokens = tok;
  auto out = e.step(std::vector<StepInput>{in});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  e.close_sequence(*seq);
}

StepInput logits_of(engine::SeqId seq, const std::vector<int32_t>& toks) {
  StepInput in;
  in.seq = seq;
  in.tokens = toks;
  in.want_logits = true;
  return in;
}

// Opens a sequence, feeds `tok` and then each step's token, `steps` steps in all, and appends each
// step's logits. False (failures recorded) when a step fails.
bool greedy_logits(engine::Engine& e, std::vector<int32_t> tok, int steps, std::vector<std::vector<float>>* logits) {
  auto seq = e.open_sequence();
  EXPECT_TRUE(seq.ok());
  if (!seq.ok()) return false;
  for (int i = 0; i < steps; ++i) {
    auto out = e.step(std::vector<StepInput>{logits_of(*seq, tok)});
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return false;
    logits->push_back((*out)[0].logits);
    tok = {(*out)[0].token};
  }
  return true;
}

// The mean dispatches per decode step of the host profile (TROVE_PROFILE set) that an engine logged
// when it closed; -1 (a failure recorded) when none was.
double logged_dispatches(const log::ScopedLogCapture& logs) {
  for (const auto& r : logs.records()) {
    const size_t at = r.message.find("decode steps (");
    const size_t mean = r.message.find("per step (mean): ");
    if (at != std::string::npos && mean != std::string::npos) return std::stod(r.message.substr(mean + 17));
  }
  ADD_FAILURE() << "no host profile of decode steps was logged";
  return -1;
}

using trove::tests::ScopedEnv;

// Loading `path` (default options, a 256-token context) is refused with a message that says `what`.
void expect_load_refused(const std::string& path, const std::string& what) {
  engine::EngineOptions o;
  o.model_path = path;
  o.n_ctx = 256;
  auto e = engine::Engine::load(o);
  ASSERT_FALSE(e.ok()) << what;
  EXPECT_NE(e.status().message().find(what), std::string::npos) << e.status().ToString();
}

// ||a - b|| / ||b||.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double e = 0, n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(e / n);
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST(Engine, BatchedStepEqualsSeparateSteps) {
  // Both prompts longer than ops::Matvec::kMaxBatch, so that the separate steps take the same (Matmul)
  // path as the batched one; the matvec path against the matmul path is DecodeThroughMatvecEqualsMatmul.
  // Whole steps: on GPUs one sequence's step of 9-24 tokens would run in pieces on the decode matvecs
  // (int8 activations; 0.1-0.13 of the logits apart on the H100), which
  // SmallStepsRunInPiecesOnTheDecodeMatvecs covers.
  ScopedEnv whole("TROVE_STEP_PIECES_MAX", "0");
  auto e = load();
  ASSERT_TRUE(e);
  const auto pa = prompt(11, 1), pb = prompt(9, 2);
  auto a = e->open_sequence(), b = e->open_sequence();
  ASSERT_TRUE(a.ok() && b.ok());
  auto sa = e->step(std::vector<StepInput>{logits_of(*a, pa)});
  auto sb = e->step(std::vector<StepInput>{logits_of(*b, pb)});
  ASSERT_TRUE(sa.ok() && sb.ok());
  e->close_sequence(*a);
  e->close_sequence(*b);
  auto c = e->open_sequence(), d = e->open_sequence();
  ASSERT_TRUE(c.ok() && d.ok());
  auto both = e->step(std::vector<StepInput>{logits_of(*c, pa), logits_of(*d, pb)});
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_LT(max_abs_diff((*sa)[0].logits, (*both)[0].logits), 1e-3f);
  EXPECT_LT(max_abs_diff((*sb)[0].logits, (*both)[1].logits), 1e-3f);
  EXPECT_EQ((*sa)[0].token, (*both)[0].token);
  EXPECT_EQ((*sb)[0].token, (*both)[1].token);
  EXPECT_EQ(e->length(*c), pa.size());
  EXPECT_EQ(e->length(*d), pb.size());
}

// Steps of <= 8 tokens run the dense products through ops::Matvec (norms, residual adds and SwiGLU
// fused in); TROVE_DECODE=matmul keeps them on ops::Matmul. The reference engine also records q/k
// norm, RoPE and the KV write as three ops (TROVE_ROPE_KV=separate) where the other fuses them. Both sum in f32 (in other orders), so they
// must agree to rounding: the same greedy tokens and logits within 1e-4 relative L2 (measured: below
// 4e-5; a wrong row, column or epilogue is off by order 1) for a 3-token prompt (prefilled through the
// matvec), one sequence decoding alone (batch 1) and three decoding together (batch 3), on the 2-layer
// Q4_K_M model (Q4_K and Q6_K matrices). ~13 s on lavapipe, most of it compiling matvec pipelines.
TEST(Engine, DecodeThroughMatvecEqualsMatmul) {
  engine::EngineOptions bad_opts;
  bad_opts.model_path = quantized_model_path();
  ::setenv("TROVE_DECODE", "fast", 1);
  auto bad = engine::Engine::load(bad_opts);
  ::setenv("TROVE_DECODE", "matmul", 1);
  ::setenv("TROVE_ROPE_KV", "split", 1);
  auto bad_rope = engine::Engine::load(bad_opts);
  ::setenv("TROVE_ROPE_KV", "separate", 1);
  auto ref = load(256, 3, 0, 64, quantized_model_path());
  ::unsetenv("TROVE_DECODE");
  ::unsetenv("TROVE_ROPE_KV");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("TROVE_DECODE=fast"), std::string::npos) << bad.status().message();
  ASSERT_FALSE(bad_rope.ok());
  EXPECT_NE(bad_rope.status().message().find("TROVE_ROPE_KV=split"), std::string::npos) << bad_rope.status().message();
  std::unique_ptr<engine::Engine> mv;
  {  // the f32 matvec forms (GPUs decode one stream through the q8 form by default: ~1% of the logits)
    ScopedEnv f32("TROVE_MATVEC", "f32");
    mv = load(256, 3, 0, 64, quantized_model_path());
  }
  ASSERT_TRUE(ref && mv);

  const std::vector<std::vector<int32_t>> prompts = {prompt(3, 12), prompt(12, 13), prompt(9, 14)};
  std::vector<engine::SeqId> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto a = ref->open_sequence(), b = mv->open_sequence();
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(*a, *b);
    seqs.push_back(*a);
  }
  double worst = 0;
  // Runs the same step on both engines; returns the reference's tokens (fed to both next).
  auto both = [&](const std::vector<StepInput>& in, const std::string& what) {
    auto r = ref->step(in), m = mv->step(in);
    EXPECT_TRUE(r.ok() && m.ok()) << what << ": " << r.status().ToString() << " / " << m.status().ToString();
    std::vector<int32_t> next;
    if (!r.ok() || !m.ok()) return next;
    for (size_t i = 0; i < in.size(); ++i) {
      next.push_back((*r)[i].token);
      if (!in[i].want_logits) continue;
      EXPECT_EQ((*r)[i].token, (*m)[i].token) << what << ", input " << i;
      const double d = rel_diff((*m)[i].logits, (*r)[i].logits);
      EXPECT_LT(d, 1e-4) << what << ", input " << i;
      worst = std::max(worst, d);
    }
    return next;
  };
  std::vector<std::vector<int32_t>> last(prompts.size());
  last[0] = both({logits_of(seqs[0], prompts[0])}, "prefill of 3 tokens");  // matvec
  // The other two prompts in one step of 21 tokens (the Matmul path in both engines); one head row, so
  // that the steps use no more batch sizes (each one more set of matvec pipelines to compile) than needed.
  StepInput quiet = logits_of(seqs[2], prompts[2]);
  quiet.sample = quiet.want_logits = false;
  const auto rest = both({logits_of(seqs[1], prompts[1]), quiet}, "prefill of 21 tokens");
  ASSERT_EQ(last[0].size(), 1u);
  ASSERT_EQ(rest.size(), 2u);
  last[1] = {rest[0]};
  last[2] = {prompts[2].front()};
  last[0] = both({logits_of(seqs[0], last[0])}, "decode of one sequence");
  ASSERT_EQ(last[0].size(), 1u);
  std::vector<StepInput> in;
  for (size_t i = 0; i < seqs.size(); ++i) in.push_back(logits_of(seqs[i], last[i]));
  EXPECT_EQ(both(in, "decode of three sequences").size(), seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(ref->tokens(seqs[i]), mv->tokens(seqs[i]));
  std::printf("matvec vs matmul: largest relative logits difference %.3g\n", worst);
}

TEST(Engine, ChunkedPrefillAndTruncateRecomputeTheSameLogits) {
  auto e = load(/*n_ctx=*/256, /*seqs=*/3, /*pool_bytes=*/0, /*max_batch=*/128);
  ASSERT_TRUE(e);
  const auto p = prompt(70, 3);  // crosses a 64-token block
  auto s = e->open_sequence();
  ASSERT_TRUE(s.ok());
  auto whole = e->step(std::vector<StepInput>{logits_of(*s, p)});
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  ASSERT_EQ(e->length(*s), 70u);
  EXPECT_EQ(e->tokens(*s), p);

  // Drop the last 30 and feed them again in two chunks.
  ASSERT_TRUE(e->truncate(*s, 40).ok());
  EXPECT_EQ(e->length(*s), 40u);
  std::vector<int32_t> c1(p.begin() + 40, p.begin() + 53), c2(p.begin() + 53, p.end());
  StepInput in1 = logits_of(*s, c1);
  in1.want_logits = false;
  in1.sample = false;
  ASSERT_TRUE(e->step(std::vector<StepInput>{in1}).ok());
  auto again = e->step(std::vector<StepInput>{logits_of(*s, c2)});
  ASSERT_TRUE(again.ok());
  // A 70-token step may run on the matrix units (f16 activations, see kernels/ops/matmul.h) where
  // the chunks of 13 and 17 run in pieces on the decode matvecs (GPUs: TROVE_STEP_PIECES_MAX): the
  // same bound as the matmul test's for that path.
  EXPECT_LT(rel_diff((*again)[0].logits, (*whole)[0].logits), 2e-3);
  EXPECT_EQ((*whole)[0].token, (*again)[0].token);
  EXPECT_EQ(e->tokens(*s), p);
}

// Split K in the engine (kernels/ops/matmul.h): a 40-token prefill and two decode steps of the quantized
// tiny model (its attention output and FFN down have K = 512: two ranges) split by TROVE_MATMUL_SPLIT_K=2.
// On the CPU form (TROVE_MATMUL=cpu, any device: f32 products) the split engine gives the unsplit one's
// greedy tokens and logits within f32 rounding — and not its very bits, which says the sums did run
// apart. On a GPU the default path (the KHR kernel on the matrix units, f16 activations) is split too: an
// f32 ulp's change of a call's output flips the f16 rounding of some of the next call's operands, so the
// split may move the logits as far as the unsplit default path is from the CPU form, and no further
// (H100, 2026-12-07: 1.3e-3 against 3.8e-3 after the prefill, 7.5e-3 against 9.9e-3 after a decode step).
TEST(Engine, SplitKPrefillGivesTheUnsplitLogits) {
  std::string device;
  auto run = [&](const char* path, const char* splits, std::vector<std::vector<float>>* logits) {
    ScopedEnv p("TROVE_MATMUL", path);
    ScopedEnv env("TROVE_MATMUL_SPLIT_K", splits);
    auto e = load(256, 1, 0, 64, quantized_model_path());
    ASSERT_TRUE(e);
    device = e->device_name();
    ASSERT_TRUE(greedy_logits(*e, prompt(40, 41), 3, logits));
  };
  const auto top = [](const std::vector<float>& v) {
    return std::max_element(v.begin(), v.end()) - v.begin();
  };
  std::vector<std::vector<float>> whole, again, split;
  run("cpu", nullptr, &whole);
  run("cpu", nullptr, &again);
  run("cpu", "2", &split);
  ASSERT_EQ(again.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) {  // the engine repeats itself: a difference below is the split's
    ASSERT_EQ(again[i].size(), whole[i].size());
    EXPECT_EQ(0, std::memcmp(again[i].data(), whole[i].data(), whole[i].size() * sizeof(float)))
        << "step " << i << ": two unsplit runs differ (relative " << rel_diff(again[i], whole[i]) << ")";
  }
  ASSERT_EQ(whole.size(), 3u);
  ASSERT_EQ(split.size(), 3u);
  bool same_bits = true;
  for (size_t i = 0; i < whole.size(); ++i) {
    ASSERT_EQ(whole[i].size(), split[i].size());
    EXPECT_LT(rel_diff(split[i], whole[i]), 1e-5) << "step " << i;
    EXPECT_EQ(top(split[i]), top(whole[i])) << "step " << i;
    const size_t bytes = whole[i].size() * sizeof(float);
    same_bits = same_bits && std::memcmp(split[i].data(), whole[i].data(), bytes) == 0;
  }
  EXPECT_FALSE(same_bits) << "the split engine gave the unsplit bits: did any call split?";
  if (device.find("llvmpipe") != std::string::npos) return;  // lavapipe's default path is the CPU form

  std::vector<std::vector<float>> gpu_whole, gpu_split;
  run(nullptr, "1", &gpu_whole);  // 1: no call split (the default splits skinny KHR calls)
  run(nullptr, "2", &gpu_split);
  ASSERT_EQ(gpu_whole.size(), 3u);
  ASSERT_EQ(gpu_split.size(), 3u);
  for (size_t i = 0; i < whole.size(); ++i) {
    const double d_split = rel_diff(gpu_split[i], gpu_whole[i]), d_path = rel_diff(gpu_whole[i], whole[i]);
    std::printf("step %zu: default path split against unsplit %.3g; unsplit, against the CPU form %.3g\n", i,
                d_split, d_path);
    EXPECT_LT(d_split, std::max(1e-5, d_path)) << "step " << i;
    EXPECT_EQ(top(gpu_split[i]), top(gpu_whole[i])) << "step " << i;
  }
}

// A one-sequence step of 9..TROVE_STEP_PIECES_MAX tokens runs as pieces of at most 8 on the decode
// matvecs (the default on GPUs with matrix units; forced here, so lavapipe runs it too): a 20-token
// step gives the very bits of three steps of 7, 7 and 6 tokens, leaves the same tokens behind, and the
// next decode step agrees bit for bit too; steps that ask for something per token stay whole. A bad
// value is refused by name.
TEST(Engine, SmallStepsRunInPiecesOnTheDecodeMatvecs) {
  const auto p = prompt(20, 5);
  std::vector<std::vector<float>> manual, pieces;
  {
    ScopedEnv off("TROVE_STEP_PIECES_MAX", "0");
    auto e = load();
    ASSERT_TRUE(e);
    auto s = e->open_sequence();
    ASSERT_TRUE(s.ok());
    for (auto [from, to] : {std::pair{0, 7}, std::pair{7, 14}, std::pair{14, 20}}) {
      const std::vector<int32_t> part(p.begin() + from, p.begin() + to);
      StepInput in = logits_of(*s, part);
      in.want_logits = in.sample = to == 20;
      auto out = e->step(std::vector<StepInput>{in});
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      if (to == 20) manual.push_back((*out)[0].logits);
    }
    const std::vector<int32_t> one = {p[3]};
    auto next = e->step(std::vector<StepInput>{logits_of(*s, one)});
    ASSERT_TRUE(next.ok());
    manual.push_back((*next)[0].logits);
  }
  ScopedEnv on("TROVE_STEP_PIECES_MAX", "24");
  auto e = load();
  ASSERT_TRUE(e);
  auto s = e->open_sequence();
  ASSERT_TRUE(s.ok());
  auto out = e->step(std::vector<StepInput>{logits_of(*s, p)});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(e->tokens(*s), p);
  pieces.push_back((*out)[0].logits);
  const std::vector<int32_t> one = {p[3]};
  auto next = e->step(std::vector<StepInput>{logits_of(*s, one)});
  ASSERT_TRUE(next.ok());
  pieces.push_back((*next)[0].logits);
  ASSERT_EQ(manual.size(), pieces.size());
  for (size_t i = 0; i < manual.size(); ++i) {
    ASSERT_EQ(manual[i].size(), pieces[i].size());
    EXPECT_EQ(std::memcmp(manual[i].data(), pieces[i].data(), manual[i].size() * sizeof(float)), 0)
        << "step " << i;
  }
  // Logits after every token: one step of 20 (20 rows back, the last the pieces' row within rounding).
  auto t = e->open_sequence();
  ASSERT_TRUE(t.ok());
  StepInput all = logits_of(*t, p);
  all.all_logits = true;
  auto rows = e->step(std::vector<StepInput>{all});
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ((*rows)[0].logits.size(), 20 * manual[0].size());
  const std::vector<float> last((*rows)[0].logits.end() - manual[0].size(), (*rows)[0].logits.end());
  EXPECT_LT(rel_diff(last, manual[0]), 2e-3);
  ScopedEnv bad("TROVE_STEP_PIECES_MAX", "65");
  expect_load_refused(model_path(), "TROVE_STEP_PIECES_MAX=65");
  for (const char* v : {"8", "257", "32x"}) {
    ScopedEnv f16_min("TROVE_PREFILL_F16_MIN", v);
    expect_load_refused(model_path(), fmt::format("TROVE_PREFILL_F16_MIN={} is not a token count", v));
  }
  // The default: the first step size above the pieces (kStepPiecesMax 24), named in the refusal.
  ScopedEnv f16_min("TROVE_PREFILL_F16_MIN", "0");
  expect_load_refused(model_path(), "reads the resident f16 rows on matrix units (default 25)");
  // The test-only failure switch is refused the same way (parsed after the two above: unset them).
  ScopedEnv no_min("TROVE_PREFILL_F16_MIN", nullptr), no_pieces("TROVE_STEP_PIECES_MAX", nullptr);
  ScopedEnv fail0("TROVE_TEST_FAIL_STEP", "0");
  expect_load_refused(model_path(), "TROVE_TEST_FAIL_STEP=0 is not a step number: give N >= 1");
}

// A step of several sequences with at most 8 tokens each and 9..TROVE_STEP_PIECES_MAX in all (concurrent
// decode streams) runs as groups of whole inputs of at most 8 tokens (forced here, as above): inputs of
// 4, 4 and 3 tokens give the bits of a step of the first two and then one of the third, each input
// keeps what it asks for (the third's greedy token after every one of its tokens), and the outputs come
// back in the inputs' order.
TEST(Engine, ConcurrentStreamsRunInGroupsOnTheDecodeMatvecs) {
  const std::vector<std::vector<int32_t>> prompts = {prompt(5, 11), prompt(6, 12), prompt(7, 13)};
  const std::vector<std::vector<int32_t>> more = {prompt(4, 21), prompt(4, 22), prompt(3, 23)};
  // Each sequence prefilled alone, then the step of `more` as `steps` (index lists into the sequences).
  auto run = [&](const char* pieces_max, const std::vector<std::vector<size_t>>& steps) {
    ScopedEnv env("TROVE_STEP_PIECES_MAX", pieces_max);
    std::vector<engine::StepOutput> outs(3);
    auto e = load();
    EXPECT_TRUE(e);
    if (!e) return outs;
    std::vector<engine::SeqId> seqs;
    for (const auto& p : prompts) {
      auto s = e->open_sequence();
      EXPECT_TRUE(s.ok());
      seqs.push_back(*s);
      StepInput in = logits_of(*s, p);
      in.want_logits = in.sample = false;
      EXPECT_TRUE(e->step(std::vector<StepInput>{in}).ok());
    }
    for (const auto& group : steps) {
      std::vector<StepInput> ins;
      for (size_t k : group) {
        ins.push_back(logits_of(seqs[k], more[k]));
        ins.back().all_tokens = k == 2;
      }
      auto out = e->step(ins);
      EXPECT_TRUE(out.ok()) << out.status().ToString();
      if (!out.ok()) return outs;
      EXPECT_EQ(out->size(), group.size());
      for (size_t i = 0; i < group.size() && i < out->size(); ++i) outs[group[i]] = (*out)[i];
    }
    for (size_t k = 0; k < 3; ++k) {
      std::vector<int32_t> want = prompts[k];
      want.insert(want.end(), more[k].begin(), more[k].end());
      EXPECT_EQ(e->tokens(seqs[k]), want) << "sequence " << k;
    }
    return outs;
  };
  const auto manual = run("0", {{0, 1}, {2}});
  const auto groups = run("24", {{0, 1, 2}});
  for (size_t k = 0; k < 3; ++k) {
    ASSERT_EQ(manual[k].logits.size(), groups[k].logits.size()) << "sequence " << k;
    ASSERT_FALSE(groups[k].logits.empty()) << "sequence " << k;
    const size_t bytes = manual[k].logits.size() * sizeof(float);
    EXPECT_EQ(std::memcmp(manual[k].logits.data(), groups[k].logits.data(), bytes), 0) << "sequence " << k;
    EXPECT_EQ(manual[k].token, groups[k].token) << "sequence " << k;
  }
  EXPECT_EQ(groups[2].tokens.size(), 3u);
  EXPECT_EQ(groups[2].tokens, manual[2].tokens);
}

// Eight streams' one-token steps in one step (MatvecCall::batch1_bits false: on GPUs with the q8 coopmat
// register kernel their Q4_K matvecs take it, kernels/ops/matvec.h) keep each stream's greedy token, and
// its logits within 2e-2 of the same token stepped alone (truncated back, then stepped again).
TEST(Engine, EightStreamsInOneStepKeepEachStreamsTokens) {
  auto e = load(256, 8, 0, 64, quantized_model_path());
  ASSERT_TRUE(e);
  std::vector<engine::SeqId> seqs;
  std::vector<std::vector<int32_t>> next(8);  // the inputs' tokens (StepInput holds a span)
  std::vector<StepInput> together;
  for (int i = 0; i < 8; ++i) {
    auto sq = e->open_sequence();
    ASSERT_TRUE(sq.ok()) << sq.status().ToString();
    seqs.push_back(*sq);
    auto out = e->step(std::vector<StepInput>{logits_of(*sq, prompt(6, 60 + i))});
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    next[i] = {(*out)[0].token};
    together.push_back(logits_of(*sq, next[i]));
  }
  auto both = e->step(together);
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  ASSERT_EQ(both->size(), 8u);
  double largest = 0;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(e->truncate(seqs[i], 6).ok());
    auto alone = e->step(std::vector<StepInput>{together[i]});
    ASSERT_TRUE(alone.ok()) << alone.status().ToString();
    EXPECT_EQ((*alone)[0].token, (*both)[i].token) << "stream " << i;
    const double d = rel_diff((*both)[i].logits, (*alone)[0].logits);
    EXPECT_LT(d, 2e-2) << "stream " << i;
    largest = std::max(largest, d);
  }
  std::printf("eight streams in one step against each alone: largest relative logits difference %.3g\n",
              largest);
}

// A step in pieces or in groups that fails on the GPU part-way (TROVE_TEST_FAIL_STEP=N: the engine's
// N-th GPU step fails after placing its inputs, as a lost device would) returns the error and leaves
// every sequence it touched as before the step — its tokens and its KV blocks, including what the
// pieces or groups before the failing one wrote — and the same step then runs as on an engine that
// never failed (the same logits, bit for bit).
TEST(Engine, AFailedPieceOrGroupCutsTheSequencesBack) {
  ScopedEnv pieces("TROVE_STEP_PIECES_MAX", "24");
  const auto p = prompt(20, 31);
  std::vector<float> want;
  {
    auto e = load();
    ASSERT_TRUE(e);
    auto s = e->open_sequence();
    ASSERT_TRUE(s.ok());
    auto out = e->step(std::vector<StepInput>{logits_of(*s, p)});
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    want = (*out)[0].logits;
  }
  {  // one sequence, 20 tokens: pieces of 7, 7 and 6; the second fails
    ScopedEnv fail("TROVE_TEST_FAIL_STEP", "2");
    auto e = load();
    ASSERT_TRUE(e);
    auto s = e->open_sequence();
    ASSERT_TRUE(s.ok());
    const engine::PoolStats before = e->pool_stats();
    auto bad = e->step(std::vector<StepInput>{logits_of(*s, p)});
    ASSERT_FALSE(bad.ok());
    const std::string why = bad.status().message();
    EXPECT_NE(why.find("TROVE_TEST_FAIL_STEP=2"), std::string::npos) << why;
    EXPECT_EQ(e->length(*s), 0u);
    EXPECT_TRUE(e->tokens(*s).empty());
    EXPECT_EQ(e->pool_stats().used_blocks, before.used_blocks);
    auto again = e->step(std::vector<StepInput>{logits_of(*s, p)});
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    ASSERT_EQ((*again)[0].logits.size(), want.size());
    EXPECT_EQ(std::memcmp((*again)[0].logits.data(), want.data(), want.size() * sizeof(float)), 0);
    EXPECT_EQ(e->tokens(*s), p);
  }
  {  // three sequences prefilled (GPU steps 1-3), then 4 + 4 + 3 tokens: groups {0, 1} and {2}; the second
     // fails after the first took a fresh KV block for sequence 0 (62 + 4 tokens, blocks of 64)
    ScopedEnv fail("TROVE_TEST_FAIL_STEP", "5");
    auto e = load();
    ASSERT_TRUE(e);
    const std::vector<std::vector<int32_t>> prompts = {prompt(62, 32), prompt(6, 33), prompt(7, 34)};
    const std::vector<std::vector<int32_t>> more = {prompt(4, 35), prompt(4, 36), prompt(3, 37)};
    std::vector<engine::SeqId> seqs;
    for (const auto& pr : prompts) {
      auto s = e->open_sequence();
      ASSERT_TRUE(s.ok());
      seqs.push_back(*s);
      ASSERT_TRUE(e->step(std::vector<StepInput>{logits_of(*s, pr)}).ok());
    }
    const engine::PoolStats before = e->pool_stats();
    std::vector<StepInput> ins;
    for (size_t k = 0; k < 3; ++k) ins.push_back(logits_of(seqs[k], more[k]));
    auto bad = e->step(ins);
    ASSERT_FALSE(bad.ok());
    const std::string why = bad.status().message();
    EXPECT_NE(why.find("TROVE_TEST_FAIL_STEP=5"), std::string::npos) << why;
    for (size_t k = 0; k < 3; ++k) EXPECT_EQ(e->tokens(seqs[k]), prompts[k]) << "sequence " << k;
    EXPECT_EQ(e->pool_stats().used_blocks, before.used_blocks);
    auto again = e->step(ins);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    for (size_t k = 0; k < 3; ++k) {
      std::vector<int32_t> all = prompts[k];
      all.insert(all.end(), more[k].begin(), more[k].end());
      EXPECT_EQ(e->tokens(seqs[k]), all) << "sequence " << k;
    }
  }
  ScopedEnv bad_env("TROVE_TEST_FAIL_STEP", "0");
  expect_load_refused(model_path(), "TROVE_TEST_FAIL_STEP=0");
}

TEST(Engine, RefusedStepsAreNamedAndChangeNothing) {
  auto e = load(/*n_ctx=*/100, /*seqs=*/2, /*pool_bytes=*/0, /*max_batch=*/32);
  ASSERT_TRUE(e);
  auto a = e->open_sequence(), b = e->open_sequence();
  ASSERT_TRUE(a.ok() && b.ok());
  auto third = e->open_sequence();
  ASSERT_FALSE(third.ok());
  EXPECT_NE(third.status().message().find("slots are busy"), std::string::npos) << third.status().message();

  const auto p = prompt(20, 4);
  StepInput in = logits_of(*a, p);
  in.want_logits = false;
  ASSERT_TRUE(e->step(std::vector<StepInput>{in}).ok());
  const auto before = e->tokens(*a);

  auto expect_refused = [&](std::vector<StepInput> inputs, const std::string& words) {
    auto r = e->step(inputs);
    ASSERT_FALSE(r.ok()) << "expected a refusal mentioning '" << words << "'";
    EXPECT_NE(r.status().message().find(words), std::string::npos) << r.status().message();
    EXPECT_EQ(e->tokens(*a), before);
    EXPECT_EQ(e->length(*b), 0u);
  };
  const auto big = prompt(33, 5), long_ = prompt(30, 6);
  expect_refused({logits_of(*b, big)}, "exceeds the batch limit of 32");
  // 20 + 30 + 30 + 30 > 100: the third chunk would pass the context.
  for (int i = 0; i < 2; ++i) {
    StepInput ok = logits_of(*a, long_);
    ok.want_logits = false;
    ASSERT_TRUE(e->step(std::vector<StepInput>{ok}).ok());
  }
  const auto at80 = e->tokens(*a);
  auto r = e->step(std::vector<StepInput>{logits_of(*a, long_)});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("exceed the context of 100"), std::string::npos) << r.status().message();
  EXPECT_EQ(e->tokens(*a), at80);
  ASSERT_TRUE(e->truncate(*a, 20).ok());
  EXPECT_EQ(e->tokens(*a), before);

  expect_refused({logits_of(*a, p), logits_of(*a, p)}, "appears twice");
  expect_refused({logits_of(*b, std::vector<int32_t>{1, 2, 999999})}, "outside the vocabulary");
  expect_refused({logits_of(7, p)}, "not open");
  // A refusal in a batch leaves the other (valid) input's sequence alone too.
  expect_refused({logits_of(*b, prompt(4, 7)), logits_of(*a, std::vector<int32_t>{-1})}, "outside the vocabulary");
  EXPECT_FALSE(e->truncate(*a, 21).ok());
}

TEST(Engine, PoolExhaustionIsRefusedAndClosingFreesBlocks) {
  // Room for 2 blocks of 64 tokens in all: two sequences of 64 fill it.
  auto probe = load();
  ASSERT_TRUE(probe);
  const uint64_t block_bytes = probe->config().kv_bytes_per_token() * 64;
  probe.reset();
  auto e = load(/*n_ctx=*/256, /*seqs=*/3, /*pool_bytes=*/2 * block_bytes, /*max_batch=*/128);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->pool_stats().total_blocks, 2u);
  auto a = e->open_sequence(), b = e->open_sequence(), c = e->open_sequence();
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const auto pa = prompt(64, 8), pb = prompt(10, 9), pc = prompt(10, 10);  // StepInput holds spans
  StepInput ia = logits_of(*a, pa), ib = logits_of(*b, pb), ic = logits_of(*c, pc);
  ia.want_logits = ib.want_logits = ic.want_logits = false;
  auto first = e->step(std::vector<StepInput>{ia, ib});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(e->pool_stats().used_blocks, 2u);
  auto r = e->step(std::vector<StepInput>{ic});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("KV pool needs 1 more blocks but only 0 of 2 are free"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(e->length(*c), 0u);
  e->close_sequence(*b);
  EXPECT_EQ(e->pool_stats().used_blocks, 1u);
  EXPECT_TRUE(e->step(std::vector<StepInput>{ic}).ok());
}

TEST(Engine, ModelThatDoesNotFitIsRefusedWithTheSizes) {
  engine::EngineOptions o;
  o.model_path = model_path();
  o.n_ctx = 256;
  o.kv_pool_bytes = uint64_t{1} << 50;  // a petabyte of KV pool
  auto e = engine::Engine::load(o);
  ASSERT_FALSE(e.ok());
  const std::string m = e.status().message();
  EXPECT_NE(m.find("does not fit"), std::string::npos) << m;
  EXPECT_NE(m.find("weights"), std::string::npos) << m;
  EXPECT_NE(m.find("KV pool"), std::string::npos) << m;
  EXPECT_NE(m.find("shorter --ctx"), std::string::npos) << m;
}

// TROVE_PROFILE=ops leaves out of its per-op GPU times the steps in which the host compiled pipelines
// (the GPU waits for the pieces behind the compile, and that wait would land on whichever op follows):
// the first decode step of a fresh engine compiles the matvec pipelines, later ones reuse them, so the
// log counts it apart and the rest as profiled steps.
// L2 warm-ups (TROVE_L2_WARM) only read weights: decode with one beside every dispatch they can sit
// beside, reading every weight they can read, computes the very bits it computes without (memcmp of
// the logits), and records more dispatches (the host profile's count: the warm-ups did run). A bad
// spec is refused by name.
TEST(Engine, L2WarmUpsChangeNoResult) {
  engine::EngineOptions bad_opts;
  bad_opts.model_path = quantized_model_path();
  {
    ScopedEnv bad_env("TROVE_L2_WARM", "attn:everything");
    auto bad = engine::Engine::load(bad_opts);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("'attn:everything' is not AT:WHAT"), std::string::npos) << bad.status().message();
  }
  // Runs a 3-token prompt and 3 one-token decode steps; returns the logits of every step and the
  // mean dispatches per decode step from the host profile logged when the engine closes.
  auto run = [&](const char* spec, std::vector<std::vector<float>>* logits) -> double {
    log::ScopedLogCapture logs;
    {
      ScopedEnv warm("TROVE_L2_WARM", spec);
      ScopedEnv prof("TROVE_PROFILE", "steps");
      auto e = load(256, 1, 0, 64, quantized_model_path());
      if (!e || !greedy_logits(*e, prompt(3, 21), 4, logits)) return -1.0;
    }
    return logged_dispatches(logs);
  };
  std::vector<std::vector<float>> plain, warmed;
  const double d_plain = run("none", &plain);
  const double d_warm = run("rope:o,attn:o,attn:gu1,o:gu,gu:down,down:qkv", &warmed);
  ASSERT_EQ(plain.size(), 4u);
  ASSERT_EQ(warmed.size(), 4u);
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_EQ(plain[i].size(), warmed[i].size());
    EXPECT_EQ(std::memcmp(plain[i].data(), warmed[i].data(), plain[i].size() * sizeof(float)), 0) << "step " << i;
  }
  // Per layer: rope:o, attn:o, attn:gu1 and o:gu (two weights each), gu:down, down:qkv (three, the
  // last layer none): at least 6 more dispatches a layer but the last.
  EXPECT_GE(d_warm, d_plain + 6) << "dispatches per decode step: " << d_warm << " with the warm-ups, " << d_plain << " without";
}

// Decode replay (TROVE_DECODE_REPLAY=1): two sequences decoding in turns, one greedy and one sampled
// (temperature 0.9, top-k 40, a fixed seed), 30 steps each (across a KV block), some steps asking for
// logits and some only for the token, then 8 steps of both together, then 6 verifications of 3 tokens
// (both sequences or one; every row's argmax, the sampled one drawing at its last row), give the tokens
// and the logits (bit for bit) of engines that record every step, on the dense and the MoE model; and
// the steps were replayed: one submit a decode step and no host recording in the median step (the host
// profile's numbers).
TEST(Engine, DecodeReplayGivesTheBitsOfRecordedSteps) {
  // Sequence 1's sampling in every phase: temperature 0.9, top-k 40, a fixed seed.
  auto sampled = [](StepInput& in) {
    in.sampling.temperature = 0.9f;
    in.sampling.top_k = 40;
    in.sampling.seed = 7;
  };
  struct Run {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> logits;
    double submits = -1, record_us = -1;
  };
  auto run = [&](const std::string& path, bool replay) {
    Run r;
    log::ScopedLogCapture logs;
    {
      ScopedEnv rep("TROVE_DECODE_REPLAY", replay ? "1" : "0");
      ScopedEnv prof("TROVE_PROFILE", "steps");
      auto e = load(256, 2, 0, 64, path);
      if (!e) return r;
      engine::SeqId seq[2];
      std::vector<int32_t> next[2];
      for (int i = 0; i < 2; ++i) {
        auto sq = e->open_sequence();
        EXPECT_TRUE(sq.ok());
        if (!sq.ok()) return r;
        seq[i] = *sq;
        next[i] = prompt(40 + 3 * i, 31 + i);
      }
      for (int step = 0; step < 12; ++step) {
        for (int i = 0; i < 2; ++i) {
          StepInput in = logits_of(seq[i], next[i]);
          in.sample = true;  // sequence 0 greedy (argmax), sequence 1 sampled (the seed read from a buffer)
          if (i == 1) sampled(in);
          in.want_logits = step % 3 != 1;
          auto out = e->step(std::vector<StepInput>{in});
          EXPECT_TRUE(out.ok()) << out.status().ToString();
          if (!out.ok()) return r;
          r.tokens.push_back((*out)[0].token);
          if (in.want_logits) r.logits.push_back((*out)[0].logits);
          next[i] = {(*out)[0].token};
        }
      }
      // Then both sequences in each step (batched decode), the sampled one asking only for its token.
      for (int step = 0; step < 8; ++step) {
        std::vector<StepInput> ins;
        for (int i = 0; i < 2; ++i) {
          StepInput in = logits_of(seq[i], next[i]);
          in.sample = true;
          in.want_logits = i == 0;
          if (i == 1) sampled(in);
          ins.push_back(in);
        }
        auto out = e->step(ins);
        EXPECT_TRUE(out.ok()) << out.status().ToString();
        if (!out.ok()) return r;
        for (int i = 0; i < 2; ++i) {
          r.tokens.push_back((*out)[i].token);
          if (ins[i].want_logits) r.logits.push_back((*out)[i].logits);
          next[i] = {(*out)[i].token};
        }
      }
      // Then verifications (3 tokens: the next one and two drafts, the argmax after each): both
      // sequences in even steps (6 tokens), sequence 0 alone in odd ones; sequence 1 samples its last
      // row (temperature 0.9: the replay writes its seed at that row, the third of its rows).
      for (int step = 0; step < 6; ++step) {
        std::vector<int32_t> fed[2];
        std::vector<StepInput> ins;
        for (int i = 0; i < (step % 2 == 0 ? 2 : 1); ++i) {
          fed[i] = {next[i][0], 1000 + step, 2000 + i};
          StepInput in = logits_of(seq[i], fed[i]);
          in.want_logits = false;
          in.all_tokens = true;
          if (i == 1) sampled(in);
          ins.push_back(in);
        }
        auto out = e->step(ins);
        EXPECT_TRUE(out.ok()) << out.status().ToString();
        if (!out.ok()) return r;
        for (size_t i = 0; i < ins.size(); ++i) {
          EXPECT_EQ((*out)[i].tokens.size(), 3u);
          r.tokens.insert(r.tokens.end(), (*out)[i].tokens.begin(), (*out)[i].tokens.end());
          r.tokens.push_back((*out)[i].token);
          next[i] = {(*out)[i].token};
        }
      }
    }
    for (const auto& rec : logs.records()) {
      const std::string& m = rec.message;
      if (m.find("decode steps (") == std::string::npos) continue;
      const size_t sub = m.find(" submits"), rec_at = m.find(" us recording");
      if (sub == std::string::npos || rec_at == std::string::npos) continue;
      r.submits = std::stod(m.substr(m.rfind(", ", sub) + 2));
      r.record_us = std::stod(m.substr(m.rfind(": ", rec_at) + 2));
    }
    return r;
  };
  for (const char* knob : {"TROVE_DECODE_REPLAY", "TROVE_MOE_F16"}) {  // 0 or 1 only
    ScopedEnv bad(knob, "yes");
    engine::EngineOptions o;
    o.model_path = quantized_model_path();
    auto e = engine::Engine::load(o);
    ASSERT_FALSE(e.ok()) << knob;
    EXPECT_NE(e.status().message().find(fmt::format("{}=yes is not a choice", knob)), std::string::npos) << e.status().message();
  }
  for (const std::string& path : {quantized_model_path(), moe_model_path()}) {
    SCOPED_TRACE(path);
    const Run plain = run(path, false), replayed = run(path, true);
    // 12 steps x 2 one at a time, 8 x 2 batched, 3 x (2 + 1) x 4 verified
    ASSERT_EQ(plain.tokens.size(), 76u);
    ASSERT_EQ(replayed.tokens, plain.tokens);
    ASSERT_EQ(replayed.logits.size(), plain.logits.size());
    for (size_t i = 0; i < plain.logits.size(); ++i) {
      ASSERT_EQ(replayed.logits[i].size(), plain.logits[i].size());
      EXPECT_EQ(0, std::memcmp(replayed.logits[i].data(), plain.logits[i].data(), plain.logits[i].size() * 4)) << "logits " << i;
    }
    EXPECT_DOUBLE_EQ(replayed.submits, 1.0) << "submits per decode step with replay (" << plain.submits << " without)";
    EXPECT_GT(plain.submits, 1.0);
    EXPECT_EQ(replayed.record_us, 0.0) << "median host recording per decode step (" << plain.record_us << " us without)";
  }
}

// TROVE_ATTENTION_STEP=batched (the default): a decode step's sequences share one attention dispatch
// per slice length (PagedAttention::record_decode_rows) instead of a call each (`each`) — on lavapipe
// with decode v2 forced (its default on GPUs). Three sequences at depths of one, two and three 128-key
// slices decode 6 steps together (step 2 gives the second sequence two tokens, as a verification
// would), then the first alone: every step's tokens and logits bit-equal to the per-sequence recording
// (replayed steps and recorded ones), and fewer dispatches a decode step (2 layers: 21.9 → 16.7 on
// lavapipe); the default records what batched does; TROVE_ATTENTION_COMBINE=fused (the slices merged
// by their own last workgroups) the same bits with fewer dispatches. A bad value is refused by name.
TEST(Engine, BatchedAttentionStepGivesTheBitsOfPerSequenceAttention) {
  struct Run {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> logits;
    double dispatches = -1;
  };
  ScopedEnv v2("TROVE_ATTENTION_DECODE", "v2");
  auto run = [&](const char* step, const char* replay) {
    Run r;
    log::ScopedLogCapture logs;
    {
      ScopedEnv st("TROVE_ATTENTION_STEP", step);
      ScopedEnv rep("TROVE_DECODE_REPLAY", replay);
      ScopedEnv prof("TROVE_PROFILE", "steps");
      auto e = load(1024, 3, 0, 512, quantized_model_path());
      if (!e) return r;
      engine::SeqId seq[3];
      std::vector<int32_t> next[3];
      for (int i = 0; i < 3; ++i) {
        auto sq = e->open_sequence();
        EXPECT_TRUE(sq.ok());
        if (!sq.ok()) return r;
        seq[i] = *sq;
        auto out = e->step(std::vector<StepInput>{logits_of(seq[i], prompt(100 + 120 * i, 41 + i))});
        EXPECT_TRUE(out.ok()) << out.status().ToString();
        if (!out.ok()) return r;
        next[i] = {(*out)[0].token};
      }
      for (int step = 0; step < 7; ++step) {
        std::vector<StepInput> ins;
        for (int i = 0; i < (step < 6 ? 3 : 1); ++i) {
          if (step == 2 && i == 1) next[i].push_back(777);
          ins.push_back(logits_of(seq[i], next[i]));
        }
        auto out = e->step(ins);
        EXPECT_TRUE(out.ok()) << out.status().ToString();
        if (!out.ok()) return r;
        for (size_t i = 0; i < ins.size(); ++i) {
          r.tokens.push_back((*out)[i].token);
          r.logits.push_back((*out)[i].logits);
          next[i] = {(*out)[i].token};
        }
      }
    }
    r.dispatches = logged_dispatches(logs);
    return r;
  };
  {
    // Decode replay on (the default): the one-token steps captured and replayed; step 2 (a sequence
    // with two tokens) and the last (one sequence) recorded.
    const Run each = run("each", "1"), batched = run("batched", "1"), by_default = run(nullptr, "1");
    ASSERT_EQ(each.tokens.size(), 19u);
    EXPECT_EQ(by_default.tokens, batched.tokens);
    EXPECT_EQ(by_default.dispatches, batched.dispatches) << "the default is batched";
    EXPECT_EQ(batched.tokens, each.tokens);
    ASSERT_EQ(batched.logits.size(), each.logits.size());
    for (size_t i = 0; i < each.logits.size(); ++i) {
      ASSERT_EQ(batched.logits[i].size(), each.logits[i].size());
      EXPECT_EQ(0, std::memcmp(batched.logits[i].data(), each.logits[i].data(), each.logits[i].size() * 4)) << "logits " << i;
    }
    EXPECT_LT(batched.dispatches, each.dispatches) << "dispatches per decode step";
    // TROVE_ATTENTION_COMBINE=fused: split attention merged by its own last workgroups — the same bits,
    // fewer dispatches (no combine) a decode step.
    ScopedEnv fused("TROVE_ATTENTION_COMBINE", "fused");
    const Run f = run("batched", "1");
    EXPECT_EQ(f.tokens, batched.tokens);
    ASSERT_EQ(f.logits.size(), batched.logits.size());
    for (size_t i = 0; i < f.logits.size(); ++i) {
      EXPECT_EQ(0, std::memcmp(f.logits[i].data(), batched.logits[i].data(), f.logits[i].size() * 4)) << "logits " << i;
    }
    EXPECT_LT(f.dispatches, batched.dispatches) << "dispatches per decode step with the fused combine";
  }
  ScopedEnv bad("TROVE_ATTENTION_STEP", "one");
  engine::EngineOptions o;
  o.model_path = quantized_model_path();
  auto e = engine::Engine::load(o);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("TROVE_ATTENTION_STEP=one is not a choice"), std::string::npos) << e.status().message();
}

// TROVE_PREFILL_WEIGHTS=f16: the matmul steps read each layer's dense weights as f16 rows, dequantized into
// per-role buffers in the barrier interval before their GEMM (Q/K/V of the next layer beside this layer's
// down — or its O projection in MoE layers). On the tiled matmul path (TROVE_MATMUL=tiled here, so that a GPU
// runs what lavapipe runs) every matmul step takes it (no matrix units), so two prefill chunks (24 and 20
// tokens: layer 0's Q/K/V written at each step's start) and a one-token decode step (the matvec, untouched)
// must give the quantized engine's greedy tokens and logits within the weights' f16 rounding (2e-3 relative
// L2, measured up to 3.4e-4; a weight in the wrong slot or read before it is written is off by order 1) — and
// not its bits on the prefill steps, or the f16 rows were not read. Dense (Q4_K / Q6_K) and MoE models —
// `f16` with its experts in f16 too (gate, up and down dequantized beside QKV, attention and O; on lavapipe
// the expert matvec kernels read them), `f16-dense` its attention weights only — and `f16-resident` (every
// layer's rows made once, at load) the per-step form's bits, dense and MoE, `f16-dense-resident` those of
// `f16-dense`. A bad value is named.
TEST(Engine, PrefillWeightsInF16GiveTheQuantizedLogits) {
  // Matrix units (a GPU) take f16 weights only in steps of 256+ tokens, and decode K-quants to the same
  // f16 values the rows hold (the same bits, nothing to tell apart); the tiled path decodes them to f32.
  // The products outside it keep f32 activations too: a GPU's q8 matvec and expert forms round them to
  // int8 (a step of ~1% of a block's largest), which turns the weights' f16 rounding into differences
  // of several 1e-3 (H100, 2026-12-06: 10 of 18 steps over the bound) — the test measures the rounding.
  ScopedEnv tiled("TROVE_MATMUL", "tiled"), f32_matvec("TROVE_MATVEC", "f32"), staged("TROVE_MOE", "staged");
  std::vector<std::vector<std::vector<float>>> runs;  // each run's logits, step by step
  const auto p = prompt(44, 61);
  for (const auto& [path, modes] :
       {std::pair<std::string, std::vector<const char*>>{quantized_model_path(), {"f16", "f16-resident"}},
        std::pair<std::string, std::vector<const char*>>{
            moe_model_path(), {"f16", "f16-dense", "f16-resident", "f16-dense-resident"}}}) {
    // The quantized engine's steps once: two prefill chunks, then its greedy token.
    std::vector<std::vector<int32_t>> steps = {{p.begin(), p.begin() + 24}, {p.begin() + 24, p.end()}};
    std::vector<engine::StepOutput> want;
    {
      log::ScopedLogCapture logs;
      ScopedEnv quant("TROVE_PREFILL_WEIGHTS", "quant");
      auto q = load(256, 1, 0, 64, path);
      ASSERT_TRUE(q);
      EXPECT_TRUE(logs.contains("prefill weights as stored"));
      auto a = q->open_sequence();
      ASSERT_TRUE(a.ok());
      for (size_t i = 0; i < 3; ++i) {
        if (i == 2) steps.push_back({want.back().token});
        auto r = q->step(std::vector<StepInput>{logits_of(*a, steps[i])});
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        want.push_back((*r)[0]);
      }
    }
    for (const char* mode : modes) {
      SCOPED_TRACE(mode);
      std::unique_ptr<engine::Engine> h;
      {
        log::ScopedLogCapture logs;
        ScopedEnv f16("TROVE_PREFILL_WEIGHTS", mode);
        h = load(256, 1, 0, 64, path);
        EXPECT_TRUE(logs.contains(fmt::format("prefill weights {} (", mode))) << "the load log names the mode";
      }
      ASSERT_TRUE(h);
      auto b = h->open_sequence();
      ASSERT_TRUE(b.ok());
      runs.emplace_back();
      for (size_t i = 0; i < steps.size(); ++i) {
        auto rh = h->step(std::vector<StepInput>{logits_of(*b, steps[i])});
        ASSERT_TRUE(rh.ok()) << rh.status().ToString();
        const double d = rel_diff((*rh)[0].logits, want[i].logits);
        std::printf(
            "%s, %s, step %zu (%zu tokens): f16 weights vs quantized, relative logits difference %.3g\n",
            path.c_str(), mode, i, steps[i].size(), d);
        EXPECT_EQ((*rh)[0].token, want[i].token) << path << " step " << i;
        EXPECT_LT(d, 2e-3) << path << " step " << i;
        if (i < 2) EXPECT_GT(d, 0.0) << path << " step " << i << ": the prefill step did not read f16 weights";
        runs.back().push_back((*rh)[0].logits);
      }
    }
  }
  // Runs: 0 dense f16, 1 dense f16-resident, 2 MoE f16, 3 MoE f16-dense, 4 MoE f16-resident, 5 MoE
  // f16-dense-resident.
  ASSERT_EQ(runs.size(), 6u);
  ASSERT_FALSE(runs[2].empty() || runs[3].empty());
  EXPECT_GT(rel_diff(runs[2][0], runs[3][0]), 0.0)
      << "f16 and f16-dense gave the same bits: the experts were not read as f16";
  // f16-resident: the same f16 rows, made once at load instead of in each step: the same bits.
  for (auto [resident, per_step] : {std::pair{1, 0}, std::pair{4, 2}, std::pair{5, 3}}) {
    ASSERT_EQ(runs[resident].size(), runs[per_step].size());
    for (size_t i = 0; i < runs[resident].size(); ++i) {
      ASSERT_EQ(runs[resident][i].size(), runs[per_step][i].size());
      EXPECT_EQ(0,
                std::memcmp(runs[resident][i].data(), runs[per_step][i].data(), runs[resident][i].size() * 4))
          << "f16-resident against f16, run " << per_step << " step " << i;
    }
  }
  ScopedEnv bad("TROVE_PREFILL_WEIGHTS", "f32");
  engine::EngineOptions o;
  o.model_path = quantized_model_path();
  auto e = engine::Engine::load(o);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("TROVE_PREFILL_WEIGHTS=f32 is not a choice"), std::string::npos)
      << e.status().message();
}

// The memory plan's rule that the default prefill weights (`auto`) keep their f16 rows by: weights,
// scratch (with the rows) and the requested KV pool must fit as the plan fills the device — the pool
// at most 90% of what weights and scratch leave. 8B on an 80 GB card: 4.7 GB of weights, 0.4 GB of
// f16 rows, 1 GB of other scratch; the rows stay with a 60 GB pool and go with a 66.7 GB one (which
// fits without them: 0.9 x 74.3 GB against 0.9 x 73.9 GB). An unknown device size (0) never drops them.
// The same rule picks between every layer's rows (resident) and one layer's (per step).
TEST(Engine, DefaultF16PrefillRowsNeverTakeTheRequestedPool) {
  using trove::engine::internal::VulkanEngine;
  constexpr uint64_t GB = 1000ull * 1000 * 1000;
  const uint64_t have = 80 * GB, weights = 4700 * GB / 1000, scratch = 1 * GB, rows = 400 * GB / 1000;
  EXPECT_TRUE(VulkanEngine::pool_fits(have, weights, scratch + rows, 60 * GB));
  EXPECT_FALSE(VulkanEngine::pool_fits(have, weights, scratch + rows, 66700 * GB / 1000));
  EXPECT_TRUE(VulkanEngine::pool_fits(have, weights, scratch, 66700 * GB / 1000));
  // The boundary: 100 - 40 - 10 leaves 50, of which the pool may take 45.
  EXPECT_TRUE(VulkanEngine::pool_fits(100, 40, 10, 45));
  EXPECT_FALSE(VulkanEngine::pool_fits(100, 40, 10, 46));
  EXPECT_FALSE(VulkanEngine::pool_fits(100, 60, 40, 0));  // weights and scratch alone fill the device
  EXPECT_TRUE(VulkanEngine::pool_fits(0, weights, scratch + rows, 1000 * GB));
  // The default's pick: the 8B's resident rows (36 layers of 386 MB: 13.9 GB) where they fit beside the
  // pool, one layer's (0.4 GB) where only they do, none where neither does or without matrix units or
  // 256-token steps.
  const uint64_t resident = 13900 * GB / 1000;
  auto pick = [&](bool units, uint32_t max_tokens, uint64_t pool) {
    return std::string(
        VulkanEngine::auto_prefill_weights(units, max_tokens, have, weights, scratch, resident, rows, pool)
            .name);
  };
  EXPECT_EQ(pick(true, 2048, 5 * GB), "f16-dense-resident");
  EXPECT_EQ(pick(true, 2048, 54 * GB), "f16-dense-resident");  // 0.9 x 60.4 GB left: 54.36
  EXPECT_EQ(pick(true, 2048, 55 * GB), "f16-dense");
  EXPECT_EQ(pick(true, 2048, 66700 * GB / 1000), "quant");
  EXPECT_EQ(pick(true, 255, 5 * GB), "quant");
  EXPECT_EQ(pick(false, 2048, 5 * GB), "quant");
  EXPECT_EQ(pick(true, 256, 5 * GB), "f16-dense-resident");
  EXPECT_EQ(
      VulkanEngine::auto_prefill_weights(true, 2048, 0, weights, scratch, resident, rows, 1000 * GB).name,
      "f16-dense-resident");  // a device that names no memory size
}

TEST(Engine, OpProfileLeavesOutStepsThatCompiledPipelines) {
  log::ScopedLogCapture logs;
  {
    ScopedEnv ops("TROVE_PROFILE", "ops");
    auto e = load(256, 1, 0, 64, quantized_model_path());
    ASSERT_TRUE(e);
    auto seq = e->open_sequence();
    ASSERT_TRUE(seq.ok());
    std::vector<int32_t> tok = prompt(1, 5);
    for (int i = 0; i < 5; ++i) {
      if (i == 4) tok = prompt(5, 6);  // then one step of 5 tokens: its own table
      StepInput in;
      in.seq = *seq;
      in.tokens = tok;
      auto out = e->step(std::vector<StepInput>{in});
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      tok = {(*out)[0].token};
    }
  }  // the profile is logged when the engine closes
  // One table per decode step size: of the one-token steps the first compiled pipelines (left out) and
  // three were measured; the 5-token step is in a table of its own.
  std::string one, five;
  for (const auto& r : logs.records()) {
    if (r.message.find("TROVE_PROFILE=ops, decode steps of 1 token ") != std::string::npos) one = r.message;
    if (r.message.find("TROVE_PROFILE=ops, decode steps of 5 tokens") != std::string::npos) five = r.message;
  }
  ASSERT_FALSE(one.empty()) << "no op profile of one-token decode steps was logged";
  EXPECT_NE(one.find("(3 steps, 3 tokens (1 steps that compiled pipelines left out)"), std::string::npos) << one;
  ASSERT_FALSE(five.empty()) << "no op profile of 5-token steps was logged";
  EXPECT_TRUE(five.find("(1 steps, 5 tokens") != std::string::npos ||
              five.find("every one compiled pipelines (1 steps") != std::string::npos)
      << five;
}

// TROVE_PROFILE=ops tables longer steps by power-of-two class: steps of 12, 20 and 40 tokens land in
// "9-16", "17-32" and "33-64", each with its own step count (the first step of a class may compile
// pipelines and is then left out, as in the decode tables).
TEST(Engine, OpProfileTablesPrefillStepsBySize) {
  log::ScopedLogCapture logs;
  {
    // Whole steps (GPUs run one sequence's 12- and 20-token steps in pieces of <= 8 tokens otherwise).
    ScopedEnv ops("TROVE_PROFILE", "ops"), whole("TROVE_STEP_PIECES_MAX", "0");
    auto e = load(256, 1, 0, 64, quantized_model_path());
    ASSERT_TRUE(e);
    for (uint32_t n : {12u, 20u, 40u, 40u, 20u, 40u}) step_alone(*e, n, static_cast<int32_t>(n));
  }  // the profile is logged when the engine closes
  std::map<std::string, std::string> tables;
  for (const auto& r : logs.records()) {
    for (const char* kind : {"9-16", "17-32", "33-64"}) {
      if (r.message.find(std::string("TROVE_PROFILE=ops, prefill steps of ") + kind + " tokens") != std::string::npos) {
        tables[kind] = r.message;
      }
    }
    EXPECT_EQ(r.message.find("TROVE_PROFILE=ops, prefill steps ("), std::string::npos) << "a table of all prefill steps: " << r.message;
  }
  ASSERT_EQ(tables.size(), 3u) << "expected one table per class of 12-, 20- and 40-token steps";
  auto counted = [](const std::string& t, int steps, int tokens) {
    return t.find(fmt::format("({} steps, {} tokens", steps, tokens)) != std::string::npos;
  };
  // Each class: all its steps measured, or the first left out for compiling pipelines.
  EXPECT_TRUE(counted(tables["9-16"], 1, 12) || tables["9-16"].find("every one compiled pipelines") != std::string::npos) << tables["9-16"];
  EXPECT_TRUE(counted(tables["17-32"], 2, 40) || counted(tables["17-32"], 1, 20)) << tables["17-32"];
  EXPECT_TRUE(counted(tables["33-64"], 3, 120) || counted(tables["33-64"], 2, 80)) << tables["33-64"];
  EXPECT_NE(tables["33-64"].find("us/step"), std::string::npos) << tables["33-64"];
}

TEST(Engine, GenerateStopsAtMaxTokensAndReusesThePrefix) {
  auto e = load();
  ASSERT_TRUE(e);
  auto s = e->open_sequence();
  ASSERT_TRUE(s.ok());
  const auto p = prompt(12, 11);
  engine::GenerateOptions g;
  g.max_tokens = 4;
  std::string streamed;
  auto r = engine::generate(*e, *s, p, g, [&](std::string_view t) { streamed += t; return true; });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->prompt_tokens, 12u);
  EXPECT_EQ(r->reused_tokens, 0u);
  EXPECT_LE(r->generated_tokens, 4u);
  if (r->finish == engine::FinishReason::kLength) EXPECT_EQ(r->generated_tokens, 4u);
  EXPECT_EQ(streamed, r->text);
  // The text is every generated token rendered, special tokens included (the chat parser needs them).
  if (r->finish == engine::FinishReason::kLength) {
    auto text = e->tokenizer().decode(r->tokens, /*render_special=*/true);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(r->text, *text);
  }
  // Same prompt plus what was generated: everything but the last token is reused.
  std::vector<int32_t> next = p;
  next.insert(next.end(), r->tokens.begin(), r->tokens.end());
  g.max_tokens = 1;
  auto r2 = engine::generate(*e, *s, next, g, [](std::string_view) { return true; });
  ASSERT_TRUE(r2.ok());
  EXPECT_GE(r2->reused_tokens, next.size() - 1) << "the held prefix must not be prefilled again";
}

// TROVE_PROFILE=ops times the four dispatches of an MoE decode layer apart (router, routing, gate/up,
// down: MoeLayer::record_fused_norm's `after` hook), in the table of one-token decode steps.
TEST(Engine, OpProfileTimesTheMoeStagesApart) {
  // Fused (the default): router and routing in one dispatch, so no routing of its own; split: four;
  // beside: the router runs beside QKV and O, so neither row appears (its time is theirs).
  for (const char* router : {"fused", "split", "beside"}) {
    SCOPED_TRACE(fmt::format("TROVE_MOE_ROUTER={}", router));
    log::ScopedLogCapture logs;
    {
      ScopedEnv direct("TROVE_MOE", "direct"), ops("TROVE_PROFILE", "ops"), r("TROVE_MOE_ROUTER", router);
      auto e = load(256, 1, 0, 64, moe_model_path());
      ASSERT_TRUE(e);
      auto seq = e->open_sequence();
      ASSERT_TRUE(seq.ok());
      std::vector<int32_t> tok = prompt(1, 9);
      for (int i = 0; i < 3; ++i) {  // the first compiles pipelines (left out), two are timed
        auto out = e->step(std::vector<StepInput>{logits_of(*seq, tok)});
        ASSERT_TRUE(out.ok()) << out.status().ToString();
        tok = {(*out)[0].token};
      }
    }  // the profile is logged when the engine closes
    std::string one;
    for (const auto& rec : logs.records()) {
      if (rec.message.find("TROVE_PROFILE=ops, decode steps of 1 token ") != std::string::npos) one = rec.message;
    }
    ASSERT_FALSE(one.empty()) << "no op profile of one-token decode steps was logged";
    for (const char* kind : {"moe gate/up (+norm)", "moe down (+add) / combine / ffn"}) {
      EXPECT_NE(one.find(kind), std::string::npos) << kind << " missing from:\n" << one;
    }
    const bool split = std::string_view(router) == "split", beside = std::string_view(router) == "beside";
    EXPECT_EQ(one.find("moe router (+norm, +routing)") != std::string::npos, !beside) << one;
    EXPECT_EQ(one.find("moe routing") != std::string::npos, split) << one;
  }
}

// TROVE_PROFILE=routing tables how each MoE prefill step spread its slots (tokens × k) over the
// experts, read back from every layer's routing: the tiny-moe model (8 experts, top-2, 2 layers) puts
// 40 slots a layer in a 20-token step and 80 in a 40-token one, 5 and 10 an expert on average, in the
// classes of 17-32 and 33-64 tokens; the buckets of experts add up to 100%. Decode steps are not
// counted, and without the setting nothing is logged.
TEST(Engine, RoutingProfileCountsEverySlot) {
  for (const char* setting : {"routing", "steps"}) {
    SCOPED_TRACE(fmt::format("TROVE_PROFILE={}", setting));
    log::ScopedLogCapture logs;
    {
      ScopedEnv prof("TROVE_PROFILE", setting), whole("TROVE_STEP_PIECES_MAX", "0");
      auto e = load(256, 1, 0, 64, moe_model_path());
      ASSERT_TRUE(e);
      for (uint32_t n : {20u, 40u, 1u}) step_alone(*e, n, static_cast<int32_t>(n) + 3);
    }  // the profile is logged when the engine closes
    std::map<std::string, std::string> tables;
    for (const auto& r : logs.records()) {
      for (const char* kind : {"17-32", "33-64"}) {
        const std::string head = std::string("TROVE_PROFILE=routing, prefill steps of ") + kind;
        if (r.message.find(head) != std::string::npos) {
          tables[kind] = r.message;
        }
      }
      EXPECT_EQ(r.message.find("TROVE_PROFILE=routing, prefill steps of 9-1"), std::string::npos)
          << r.message;
    }
    if (std::string_view(setting) != "routing") {
      EXPECT_TRUE(tables.empty()) << "a routing table without TROVE_PROFILE=routing";
      continue;
    }
    ASSERT_EQ(tables.size(), 2u) << "expected the 20- and the 40-token step's classes";
    const std::string twenty = "(1 steps, 20 tokens, 2 step-layers): 40.0 slots a layer, 5.00 slots an "
                               "expert",
                      forty = "(1 steps, 40 tokens, 2 step-layers): 80.0 slots a layer, 10.00 slots an "
                              "expert";
    EXPECT_NE(tables["17-32"].find(twenty), std::string::npos) << tables["17-32"];
    EXPECT_NE(tables["33-64"].find(forty), std::string::npos) << tables["33-64"];
    for (const auto& [kind, t] : tables) {
      double experts = 0, slots = 0;
      for (size_t at = t.find("% of experts"); at != std::string::npos; at = t.find("% of experts", at + 1)) {
        experts += std::stod(t.substr(t.rfind(':', at) + 1, at - t.rfind(':', at) - 1));
        const size_t s_end = t.find("% of slots", at);
        const size_t s_begin = t.rfind(',', s_end) + 1;
        slots += std::stod(t.substr(s_begin, s_end - s_begin));
      }
      EXPECT_NEAR(experts, 100.0, 0.5) << t;
      EXPECT_NEAR(slots, 100.0, 0.5) << t;
    }
  }
}

// The routing profile's buckets at their edges (StepProfile::add_routing, no device): one layer of 13
// experts holding 0, 1, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257 and 1000 slots puts 1, 2, 2, 2, 2, 2
// and 2 experts in the buckets 0, 1-16, ..., 257+, and its 1998 slots in them as summed here.
TEST(StepProfile, RoutingBucketsAtTheirEdges) {
  log::ScopedLogCapture logs;
  {
    ScopedEnv prof("TROVE_PROFILE", "routing");
    engine::StepProfile p;
    ASSERT_TRUE(p.routing());
    const std::vector<uint32_t> counts = {0, 1, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 1000};
    std::vector<uint32_t> offsets = {0};
    for (uint32_t n : counts) offsets.push_back(offsets.back() + n);
    p.add_routing(600, offsets.data(), 1, static_cast<uint32_t>(counts.size()));
    p.log("cached", {});
  }
  std::string t;
  for (const auto& r : logs.records()) {
    if (r.message.find("TROVE_PROFILE=routing, prefill steps of 513-1024 tokens") != std::string::npos) {
      t = r.message;
    }
  }
  ASSERT_FALSE(t.empty()) << "no routing table for the 600-token step's class";
  EXPECT_NE(t.find("(1 steps, 600 tokens, 1 step-layers): 1998.0 slots a layer, 153.69 slots an expert "
                   "(mean), the largest expert 1000.0"),
            std::string::npos)
      << t;
  const double e = 100.0 / 13, s = 100.0 / 1998;
  for (const auto& [bucket, experts, slots] :
       {std::tuple{"      0 slots:", 1, 0}, std::tuple{"   1-16 slots:", 2, 17},
        std::tuple{"  17-32 slots:", 2, 49}, std::tuple{"  33-64 slots:", 2, 97},
        std::tuple{" 65-128 slots:", 2, 193}, std::tuple{"129-256 slots:", 2, 385},
        std::tuple{"   257+ slots:", 2, 1257}}) {
    const std::string line =
        fmt::format("{} {:5.1f}% of experts, {:5.1f}% of slots", bucket, e * experts, s * slots);
    EXPECT_NE(t.find(line), std::string::npos) << line << " missing from\n" << t;
  }
}

TEST(Engine, BadMoeRouterSettingIsNamed) {
  ScopedEnv r("TROVE_MOE_ROUTER", "both");
  expect_load_refused(moe_model_path(), "TROVE_MOE_ROUTER=both is not a choice");
}

// Two engines stepped alike (tests comparing one setting with another): n sequences opened in both
// (the same ids), and steps whose greedy tokens must agree input by input, `compare` checking each
// input's logits (theirs, ours, what); returns the first engine's tokens (empty on a failed step).
using LogitsCheck =
    std::function<void(const std::vector<float>&, const std::vector<float>&, const std::string&)>;
std::vector<engine::SeqId> open_in_both(engine::Engine& a, engine::Engine& b, int n) {
  std::vector<engine::SeqId> seqs;
  for (int i = 0; i < n; ++i) {
    auto x = a.open_sequence(), y = b.open_sequence();
    EXPECT_TRUE(x.ok() && y.ok());
    if (!x.ok() || !y.ok()) break;
    EXPECT_EQ(*x, *y);
    seqs.push_back(*x);
  }
  return seqs;
}
std::vector<int32_t> step_both(engine::Engine& a, engine::Engine& b, const std::vector<StepInput>& in,
                               const std::string& what, const LogitsCheck& compare) {
  auto r = a.step(in), m = b.step(in);
  EXPECT_TRUE(r.ok() && m.ok()) << what << ": " << r.status().ToString() << " / " << m.status().ToString();
  std::vector<int32_t> next;
  if (!r.ok() || !m.ok()) return next;
  for (size_t i = 0; i < in.size(); ++i) {
    next.push_back((*r)[i].token);
    EXPECT_EQ((*r)[i].token, (*m)[i].token) << what << ", input " << i;
    compare((*r)[i].logits, (*m)[i].logits, fmt::format("{}, input {}", what, i));
  }
  return next;
}

// MoE decode on the direct expert kernels (TROVE_MOE=direct, the GPUs' default) folds the FFN RMSNorm
// into the router matvec and the gate/up kernel (MoeLayer::record_fused_norm: no norm dispatch); the
// staged kernels (TROVE_MOE=staged, lavapipe's default) keep the norm, the router matmul and the
// expert kernels apart. Same greedy tokens and logits within 1e-4 relative L2, for a prefill of 3
// tokens (a decode-sized step), one sequence decoding and two decoding together.
TEST(Engine, MoeDecodeWithTheNormFoldedEqualsTheSeparateNorm) {
  // The router and routing in one dispatch (fused, the default), as a matvec + routing (split) and
  // split around the O projection with its weights folded through W_o (beside).
  for (const char* router : {"fused", "split", "beside"}) {
    SCOPED_TRACE(fmt::format("TROVE_MOE_ROUTER={}", router));
    ScopedEnv f32("TROVE_MATVEC", "f32");  // both engines' dense matvecs and router in f32 (no q8 on GPUs)
    ::setenv("TROVE_MOE", "staged", 1);
    auto ref = load(256, 2, 0, 64, moe_model_path());
    ::setenv("TROVE_MOE", "direct", 1);
    ::setenv("TROVE_MOE_ROUTER", router, 1);
    auto fused = load(256, 2, 0, 64, moe_model_path());
    ::unsetenv("TROVE_MOE");
    ::unsetenv("TROVE_MOE_ROUTER");
    ASSERT_TRUE(ref && fused);
    const auto seqs = open_in_both(*ref, *fused, 2);
    ASSERT_EQ(seqs.size(), 2u);
    double worst = 0;
    auto both = [&](const std::vector<StepInput>& in, const std::string& what) {
      return step_both(*ref, *fused, in, what, [&](const auto& r, const auto& m, const std::string& w) {
        const double d = rel_diff(m, r);
        EXPECT_LT(d, 1e-4) << w;
        worst = std::max(worst, d);
      });
    };
    auto t0 = both({logits_of(seqs[0], prompt(3, 21))}, "prefill of 3 tokens");
    auto t1 = both({logits_of(seqs[1], prompt(5, 22))}, "prefill of 5 tokens");
    ASSERT_EQ(t0.size(), 1u);
    ASSERT_EQ(t1.size(), 1u);
    t0 = both({logits_of(seqs[0], t0)}, "decode of one sequence");
    ASSERT_EQ(t0.size(), 1u);
    EXPECT_EQ(both({logits_of(seqs[0], t0), logits_of(seqs[1], t1)}, "decode of two sequences").size(), 2u);
    for (auto s : seqs) EXPECT_EQ(ref->tokens(s), fused->tokens(s));
    std::printf("MoE folded norm (router %s) vs separate: largest relative logits difference %.3g\n", router, worst);
  }
}

// With the router beside O and the q8 expert kernels (TROVE_MOE=q8, the GPUs' default), the experts'
// gate/up kernel can take each token's top-k from the router logits (TROVE_MOE_TOPK=experts) instead
// of the router's last workgroup (router, the default): the same picks and the same arithmetic, so the
// same bits — for a decode-sized prefill, one sequence decoding and two decoding together.
TEST(Engine, MoeTopkInTheExpertKernelEqualsTheRoutersTopk) {
  ScopedEnv moe("TROVE_MOE", "q8"), router("TROVE_MOE_ROUTER", "beside");
  std::unique_ptr<engine::Engine> e[2];
  for (int i = 0; i < 2; ++i) {
    ScopedEnv topk("TROVE_MOE_TOPK", i == 0 ? "router" : "experts");
    e[i] = load(256, 2, 0, 64, moe_model_path());
    ASSERT_TRUE(e[i]);
  }
  const auto seqs = open_in_both(*e[0], *e[1], 2);
  ASSERT_EQ(seqs.size(), 2u);
  auto both = [&](const std::vector<StepInput>& in, const std::string& what) {
    return step_both(*e[0], *e[1], in, what, [](const auto& r, const auto& m, const std::string& w) {
      ASSERT_EQ(r.size(), m.size()) << w;
      EXPECT_EQ(0, std::memcmp(r.data(), m.data(), r.size() * 4))
          << w << ": relative difference " << rel_diff(m, r);
    });
  };
  auto t0 = both({logits_of(seqs[0], prompt(3, 31))}, "prefill of 3 tokens");
  auto t1 = both({logits_of(seqs[1], prompt(5, 32))}, "prefill of 5 tokens");
  ASSERT_EQ(t0.size(), 1u);
  ASSERT_EQ(t1.size(), 1u);
  for (int step = 0; step < 3; ++step) {
    t0 = both({logits_of(seqs[0], t0)}, "decode of one sequence");
    ASSERT_EQ(t0.size(), 1u);
  }
  EXPECT_EQ(both({logits_of(seqs[0], t0), logits_of(seqs[1], t1)}, "decode of two sequences").size(), 2u);
  ScopedEnv bad("TROVE_MOE_TOPK", "gpu");
  expect_load_refused(moe_model_path(), "TROVE_MOE_TOPK=gpu is not a choice");
}
