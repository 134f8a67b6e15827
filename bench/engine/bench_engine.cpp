// Engine benchmark: prefill and decode speed of a model on the GPU, in llama-bench's terms, printed
// beside llama.cpp's numbers and the decode bandwidth limit from ../shared/docs/TARGETS.md (H100).
//
//   build/bench/engine/bench_engine --model M.gguf [--model M2.gguf ...] [--depth 16384] [--reps 3]
//                                   [--json FILE] [--profile] [--decode-only] [--tg 128] [--streams 1,2,4,8]
//                                   [--streams-depth 16] [--steps 16,32,128] [--steps-depth 4096]
//                                   [--chunk 512]
//
//   pp16      one step of 16 prompt tokens on an empty sequence (best of --reps; below the table)
//   pp512     one step of 512 prompt tokens on an empty sequence (best of --reps)
//   pp4096    4096 prompt tokens in steps of --chunk (chunked prefill), tokens / total time
//   tg128     128 greedy decode steps after a 16-token prompt, one token per step
//   tg64@16k  64 decode steps after --depth prompt tokens and 2 untimed decode steps (attention over a
//             long KV)
// Tokens are random ids (speed does not depend on them). bench/engine/run.sh writes the synthetic
// Qwen3-8B and Qwen3-30B-A3B Q4_K_M models and runs this; docs/performance.md records the table.
// --json FILE also writes the rows as JSON, which bench/peer/compare.mjs sets beside llama.cpp's
// (bench/peer/bench_peer.mjs) measured on the same files.
// --profile sets TROVE_PROFILE=steps (unless TROVE_PROFILE is set: =ops adds GPU time per op kind):
// when each model's engine closes it logs, per decode step and per prefill step, the dispatches,
// barriers, submits and descriptor sets written, the host's time (step, recording, the head start
// before the GPU gets its first piece, last submit + wait) and the GPU time (timestamps). The decode
// line covers the warm-up's 4 steps, tg128 and tg64 at depth. --decode-only skips pp512 and pp4096
// (warm-up: a 16-token prompt), --tg N sets the decode steps of the tg row (e.g. on lavapipe).
// --streams LIST adds a table of concurrent decode: for each N, N sequences (prompts of --streams-depth
// tokens, default 16) decode
// --tg steps together, one token each per step (one engine step of N tokens, as the scheduler runs
// them), and the row gives the aggregate tok/s (the best of --reps runs), tok/s per stream and the
// aggregate over one stream's.
// --steps LIST adds a table of medium steps (an agent's next turn after a cached prefix: a tool result
// of a few dozen to a few hundred tokens): for each N, one step of N new tokens after --steps-depth
// tokens (default 4096) already in the sequence (prefilled once; every rep rolls the sequence back to
// them), after one untimed step of each N; the best of max(--reps, 3), in ms and tok/s. Steps of 9–24
// tokens run in pieces on the decode matvecs, larger ones on the GEMMs (TROVE_STEP_PIECES_MAX,
// TROVE_PREFILL_F16_MIN).
// --chunk N (default 2048, the engine's and `trove serve --max-batch-tokens`' default) is the engine's
// largest step and the prefill step of pp4096 and of the depth prompt; pp512 stays one step of 512
// when N >= 512. (llama-bench's pp rows run in ubatches of 512.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <stdlib.h>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/runtime/engine.h"

using namespace trove;
using Clock = std::chrono::steady_clock;

namespace {

struct Row {
  std::string model, file;
  double pp16 = 0, pp512 = 0, pp4096 = 0, tg128 = 0, tg16k = 0, pp16k = 0;
  std::vector<std::pair<uint32_t, double>> streams;  // (concurrent sequences, aggregate decode tok/s)
  std::vector<std::pair<uint32_t, double>> steps;    // (new tokens, seconds of the step) after steps_depth
};

// --steps: medium steps after a cached context.
struct StepsOptions {
  std::vector<uint32_t> tokens;
  uint32_t depth = 4096;
};

// llama.cpp on the same H100 and the same synthetic files (TARGETS.md, 2026-11-22), and the decode
// bandwidth limit there (active weight bytes per token at ~3.0 TB/s).
struct Peer {
  const char* preset;
  double cuda[4], vulkan[4];  // pp512, pp4096, tg128, tg64@16k (0: not measured)
  double limit_tg;
};
const Peer kPeers[] = {
    {"qwen3-8b", {8907, 9956, 252, 0}, {10341, 10158, 206, 0}, 615},
    {"qwen3-30b-a3b", {10147, 10725, 288, 196}, {11338, 10684, 219, 165}, 1600},
};

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<int32_t> random_tokens(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, 150000);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

// Prefills `tokens` into seq in steps of at most `chunk`; returns seconds. The last step samples.
Result<double> prefill(engine::Engine& e, engine::SeqId seq, const std::vector<int32_t>& tokens, uint32_t chunk,
                       int32_t* next) {
  const auto t0 = Clock::now();
  for (size_t i = 0; i < tokens.size(); i += chunk) {
    const size_t n = std::min<size_t>(chunk, tokens.size() - i);
    engine::StepInput in;
    in.seq = seq;
    in.tokens = std::span<const int32_t>(tokens.data() + i, n);
    in.sample = i + n == tokens.size();
    auto out = e.step(std::span<const engine::StepInput>(&in, 1));
    if (!out.ok()) return out.status();
    if (in.sample && next) *next = (*out)[0].token;
  }
  return secs(t0);
}

Result<double> decode(engine::Engine& e, engine::SeqId seq, int32_t first, uint32_t n, int32_t* last = nullptr) {
  int32_t tok = first;
  const auto t0 = Clock::now();
  for (uint32_t i = 0; i < n; ++i) {
    engine::StepInput in;
    in.seq = seq;
    in.tokens = std::span<const int32_t>(&tok, 1);
    auto out = e.step(std::span<const engine::StepInput>(&in, 1));
    if (!out.ok()) return out.status();
    tok = (*out)[0].token;
  }
  if (last) *last = tok;
  return secs(t0);
}

// n sequences (prompts of `prompt_len` random tokens, prefilled in steps of `chunk`) decode `steps`
// tokens each, all in one engine step per token; returns seconds.
Result<double> decode_together(engine::Engine& e, uint32_t n, uint32_t steps, uint32_t prompt_len, uint32_t chunk,
                               std::mt19937& rng) {
  std::vector<engine::SeqId> seqs;
  std::vector<int32_t> next(n);
  auto close_all = [&] {
    for (auto s : seqs) e.close_sequence(s);
  };
  for (uint32_t i = 0; i < n; ++i) {
    auto s = e.open_sequence();
    if (!s.ok()) {
      close_all();
      return s.status();
    }
    seqs.push_back(*s);
    auto p = prefill(e, *s, random_tokens(prompt_len, rng), chunk, &next[i]);
    if (!p.ok()) {
      close_all();
      return p.status();
    }
  }
  std::vector<engine::StepInput> in(n);
  for (uint32_t i = 0; i < n; ++i) in[i].seq = seqs[i];
  auto one_step = [&]() -> Status {
    for (uint32_t i = 0; i < n; ++i) in[i].tokens = std::span<const int32_t>(&next[i], 1);
    auto out = e.step(in);
    if (!out.ok()) return out.status();
    for (uint32_t i = 0; i < n; ++i) next[i] = (*out)[i].token;
    return Status::Ok();
  };
  Status st = one_step();  // warm-up: the pipelines of this batch shape
  const auto t0 = Clock::now();
  for (uint32_t k = 0; st.ok() && k < steps; ++k) st = one_step();
  const double t = secs(t0);
  close_all();
  if (!st.ok()) return st;
  return t;
}

// One step of each `so.tokens` count after so.depth tokens of context (prefilled once in steps of
// `chunk`), rolled back after each; an untimed step of each count first, then the best of `reps`
// rounds taking the counts in turn. Seconds per count, in so.tokens' order.
Result<std::vector<double>> medium_steps(engine::Engine& e, const StepsOptions& so, int reps, uint32_t chunk,
                                         std::mt19937& rng) {
  auto s = e.open_sequence();
  if (!s.ok()) return s.status();
  int32_t next = 0;
  auto p = prefill(e, *s, random_tokens(so.depth, rng), chunk, &next);
  if (!p.ok()) return p.status();
  std::vector<double> best(so.tokens.size(), 1e30);
  for (int r = -1; r < reps; ++r) {  // r = -1: the untimed round
    for (size_t i = 0; i < so.tokens.size(); ++i) {
      const auto tokens = random_tokens(so.tokens[i], rng);
      auto t = prefill(e, *s, tokens, so.tokens[i], &next);
      if (!t.ok()) return t.status();
      if (r >= 0) best[i] = std::min(best[i], *t);
      if (Status st = e.truncate(*s, so.depth); !st.ok()) return st;
    }
  }
  e.close_sequence(*s);
  return best;
}

Result<Row> bench(const std::string& path, uint32_t depth, int reps, bool decode_only, uint32_t tg,
                  const std::vector<uint32_t>& streams, uint32_t streams_depth, uint32_t chunk,
                  const StepsOptions& so) {
  engine::EngineOptions o;
  o.model_path = path;
  const uint32_t most_steps = so.tokens.empty() ? 0 : *std::max_element(so.tokens.begin(), so.tokens.end());
  o.n_ctx = std::max<uint32_t>({4096, depth + 128, streams.empty() ? 0 : streams_depth + tg + 8,
                                so.tokens.empty() ? 0 : so.depth + most_steps + 8});
  o.max_sequences = std::max<uint32_t>(1, streams.empty() ? 1 : *std::max_element(streams.begin(), streams.end()));
  o.max_batch_tokens = chunk;
  o.progress = true;
  const uint32_t first = std::min<uint32_t>(chunk, 512);  // pp512's step (and the warm-up's)
  auto loaded = engine::Engine::load(o);
  if (!loaded.ok()) return loaded.status();
  engine::Engine& e = **loaded;
  Row row;
  row.model = e.config().name;
  row.file = path;
  std::mt19937 rng(7);
  auto fresh = [&]() -> Result<engine::SeqId> { return e.open_sequence(); };
  int32_t next = 0;
  {  // warm-up: pipelines (prefill and decode: the driver compiles each on first use), first-touch allocations
    // — in every step shape a timed row runs: 16 tokens, 512 (pp512's) and --chunk; then pp512's step
    // again for 2 s. On a machine's first run (no pipeline cache on disk) the 8B's 512-token step built
    // pipelines for ~10 s inside pp512's first rep, and once they were built the GPU ran them at a third
    // to a half of their speed for a few hundred ms more (H100, 2026-12-06 04:45: reps 53, 6299, 13525,
    // 13608 tok/s; with the shapes built in the warm-up, 4571, 4714, 9498; a second run 13705, 13735).
    auto s = fresh();
    if (!s.ok()) return s.status();
    auto t = prefill(e, *s, random_tokens(16, rng), 16, &next);
    if (t.ok() && !decode_only) t = prefill(e, *s, random_tokens(first, rng), first, &next);
    if (t.ok() && !decode_only && chunk > first) t = prefill(e, *s, random_tokens(chunk, rng), chunk, &next);
    if (!t.ok()) return t.status();
    auto d = decode(e, *s, next, 4);
    if (!d.ok()) return d.status();
    e.close_sequence(*s);
    for (const auto t0 = Clock::now(); !decode_only && secs(t0) < 2.0;) {
      auto w = fresh();
      if (!w.ok()) return w.status();
      auto p = prefill(e, *w, random_tokens(first, rng), first, &next);
      if (!p.ok()) return p.status();
      e.close_sequence(*w);
    }
  }
  double best = 1e30;
  std::string each;  // every rep's tok/s: a first process on a machine has read slow on all of them
  for (int r = 0; r < (decode_only ? 0 : reps); ++r) {
    auto s = fresh();
    auto t = prefill(e, *s, random_tokens(512, rng), first, &next);
    if (!t.ok()) return t.status();
    best = std::min(best, *t);
    each += fmt::format("{}{:.0f}", r ? ", " : "", 512 / *t);
    e.close_sequence(*s);
  }
  if (!decode_only) {
    row.pp512 = 512 / best;
    std::fprintf(stderr, "%s: pp512 %.0f tok/s (reps: %s)\n", row.model.c_str(), row.pp512, each.c_str());
  }
  if (!decode_only) {
    auto s = fresh();
    auto t = prefill(e, *s, random_tokens(4096, rng), chunk, &next);
    if (!t.ok()) return t.status();
    row.pp4096 = 4096 / *t;
    e.close_sequence(*s);
    std::fprintf(stderr, "%s: pp4096 %.0f tok/s\n", row.model.c_str(), row.pp4096);
  }
  {
    // pp16: a 16-token step (a short message, a prompt's last piece), best of --reps; the last rep's
    // sequence goes on to decode the tg row.
    double best16 = 1e30;
    engine::SeqId seq = 0;
    for (int r = 0; r < std::max(1, reps); ++r) {
      if (r > 0) e.close_sequence(seq);
      auto s = fresh();
      if (!s.ok()) return s.status();
      seq = *s;
      auto p = prefill(e, seq, random_tokens(16, rng), 16, &next);
      if (!p.ok()) return p.status();
      best16 = std::min(best16, *p);
    }
    row.pp16 = 16 / best16;
    std::fprintf(stderr, "%s: pp16 %.0f tok/s (%.2f ms a step)\n", row.model.c_str(), row.pp16, 1e3 * best16);
    auto t = decode(e, seq, next, tg);
    if (!t.ok()) return t.status();
    row.tg128 = tg / *t;
    e.close_sequence(seq);
    std::fprintf(stderr, "%s: tg%u %.1f tok/s\n", row.model.c_str(), tg, row.tg128);
  }
  if (depth > 0) {
    auto s = fresh();
    auto p = prefill(e, *s, random_tokens(depth, rng), chunk, &next);
    if (!p.ok()) return p.status();
    row.pp16k = depth / *p;
    // Two untimed steps first: a pipeline only a deep step uses (decode attention's forms by grid
    // size) is built there, not inside the timed 64 (on a fresh machine a build costs ~0.2 s).
    auto settle = decode(e, *s, next, 2, &next);
    if (!settle.ok()) return settle.status();
    auto t = decode(e, *s, next, 64);
    if (!t.ok()) return t.status();
    row.tg16k = 64 / *t;
    e.close_sequence(*s);
    std::fprintf(stderr, "%s: prefill to %u %.0f tok/s, tg64 there %.1f tok/s\n", row.model.c_str(), depth, row.pp16k,
                 row.tg16k);
  }
  for (uint32_t n : streams) {
    // Best of --reps: a fresh machine's first run of a step shape has read up to 20% low on the H100
    // (docs/performance.md, 2026-12-05 19:13) although one untimed step warms the shape up.
    double best = 0;
    for (int r = 0; r < std::max(1, reps); ++r) {
      auto t = decode_together(e, n, tg, streams_depth, chunk, rng);
      if (!t.ok()) return t.status();
      if (best == 0 || *t < best) best = *t;
    }
    row.streams.emplace_back(n, double(n) * tg / best);
    std::fprintf(stderr, "%s: %u streams %.1f tok/s together (prompts of %u tokens)\n", row.model.c_str(), n,
                 row.streams.back().second, streams_depth);
  }
  if (!so.tokens.empty()) {
    auto t = medium_steps(e, so, std::max(3, reps), chunk, rng);
    if (!t.ok()) return t.status();
    for (size_t i = 0; i < so.tokens.size(); ++i) {
      row.steps.emplace_back(so.tokens[i], (*t)[i]);
      std::fprintf(stderr, "%s: a step of %u tokens after %u: %.2f ms\n", row.model.c_str(), so.tokens[i],
                   so.depth, 1e3 * (*t)[i]);
    }
  }
  return row;
}

std::string num(double v) { return v > 0 ? fmt::format("{:.0f}", v) : "—"; }

// The rows in bench/peer/compare.mjs's terms: tok/s per llama-bench-style column, 0s left out.
bool write_json(const std::string& path, const std::vector<Row>& rows, uint32_t depth, int reps, uint32_t chunk) {
  nlohmann::ordered_json doc = {{"engine", "trove"}, {"depth", depth},   {"reps", reps},
                                {"chunk", chunk},    {"results", nlohmann::ordered_json::array()}};
  for (const auto& r : rows) {
    nlohmann::ordered_json j = {
        {"model", r.model}, {"file", r.file}, {"pp512", r.pp512}, {"pp4096", r.pp4096}, {"tg128", r.tg128}};
    if (r.pp16 > 0) j["pp16"] = r.pp16;
    if (r.tg16k > 0) j[fmt::format("tg64@{}", depth)] = r.tg16k;
    if (r.pp16k > 0) j[fmt::format("pp@{}", depth)] = r.pp16k;
    for (const auto& [n, tps] : r.streams) j["streams"][std::to_string(n)] = tps;  // aggregate tok/s
    doc["results"].push_back(j);
  }
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  return static_cast<bool>(out);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trove engine benchmark (prefill and decode tok/s beside llama.cpp and the bandwidth limit)"};
  std::vector<std::string> models;
  uint32_t depth = 16384;
  int reps = 3;
  std::string json_path;
  bool profile = false, decode_only = false;
  uint32_t tg = 128, chunk = 2048;
  std::vector<uint32_t> streams;
  uint32_t streams_depth = 16;
  app.add_option("--model", models, "GGUF model(s) to measure")->required();
  app.add_option("--depth", depth, "Prompt depth for the long-context decode (0: skip)");
  app.add_option("--reps", reps, "Repetitions of pp512 and of each --streams run (best kept)");
  app.add_option("--json", json_path, "Also write the rows as JSON to this file (for bench/peer/compare.mjs)");
  app.add_flag("--profile", profile, "Log host and GPU counters per step when each engine closes (TROVE_PROFILE=steps)");
  app.add_flag("--decode-only", decode_only, "Skip pp512 and pp4096");
  app.add_option("--tg", tg, "Decode steps of the tg row (default 128)")->check(CLI::Range(1u, 100000u));
  app.add_option("--streams", streams, "Concurrent decode: sequences decoding together (e.g. 1,2,4,8)")
      ->delimiter(',')
      ->check(CLI::Range(1u, 64u));
  app.add_option("--streams-depth", streams_depth, "Concurrent decode: each sequence's prompt, in tokens (default 16)")
      ->check(CLI::Range(1u, 1u << 20));
  StepsOptions so;
  app.add_option("--steps", so.tokens,
                 "Medium steps: new tokens of one step after --steps-depth (e.g. 16,32,128,256)")
      ->delimiter(',')
      ->check(CLI::Range(1u, 8192u));
  app.add_option("--steps-depth", so.depth, "Medium steps: tokens already in the sequence (default 4096)")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--chunk", chunk, "Largest engine step: the prefill step of pp4096 and of the depth prompt (default 2048, the engine's)")
      ->check(CLI::Range(16u, 8192u));
  CLI11_PARSE(app, argc, argv);
  if (profile) setenv("TROVE_PROFILE", "steps", /*overwrite=*/0);
  for (uint32_t n : so.tokens) {
    if (n > chunk) {
      std::fprintf(stderr, "bench_engine: --steps %u is more than the engine's largest step (--chunk %u)\n",
                   n, chunk);
      return 1;
    }
  }

  std::vector<Row> rows;
  std::string device;
  for (const auto& m : models) {
    auto r = bench(m, depth, reps, decode_only, tg, streams, streams_depth, chunk, so);
    if (!r.ok()) {
      std::fprintf(stderr, "bench_engine: %s: %s\n", m.c_str(), r.status().ToString().c_str());
      return 1;
    }
    rows.push_back(*r);
  }
  std::printf("| model | engine | pp512 | pp4096 | tg%u | tg64 @ %u | decode limit (bandwidth) |\n", tg, depth);
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %s | trove (Vulkan) | %s | %s | %.1f | %.1f | |\n", r.model.c_str(), num(r.pp512).c_str(),
                num(r.pp4096).c_str(), r.tg128, r.tg16k);
    for (const auto& p : kPeers) {
      if (r.model.find(p.preset) == std::string::npos) continue;
      std::printf("| %s | llama.cpp CUDA (TARGETS.md) | %s | %s | %s | %s | %s |\n", p.preset, num(p.cuda[0]).c_str(),
                  num(p.cuda[1]).c_str(), num(p.cuda[2]).c_str(), num(p.cuda[3]).c_str(), num(p.limit_tg).c_str());
      std::printf("| %s | llama.cpp Vulkan (TARGETS.md) | %s | %s | %s | %s | |\n", p.preset,
                  num(p.vulkan[0]).c_str(), num(p.vulkan[1]).c_str(), num(p.vulkan[2]).c_str(),
                  num(p.vulkan[3]).c_str());
    }
  }
  std::printf("\ntrove's prefill steps: %u tokens (--chunk; pp512 is one step of %u)\n",
              chunk, std::min<uint32_t>(chunk, 512));
  for (const auto& r : rows) {
    if (r.pp16k > 0) std::printf("\n%s: prefill to depth %u ran at %.0f tok/s\n", r.model.c_str(), depth, r.pp16k);
  }
  for (const auto& r : rows) {
    if (r.pp16 > 0) {
      std::printf("\n%s: a 16-token prefill step took %.2f ms (%.0f tok/s)\n", r.model.c_str(), 16e3 / r.pp16,
                  r.pp16);
    }
  }
  for (const auto& r : rows) {
    if (r.streams.empty()) continue;
    const double one = r.streams.front().first == 1 ? r.streams.front().second : r.tg128;
    std::printf("\nConcurrent decode, each stream's prompt %u tokens%s:\n", streams_depth,
                r.streams.front().first == 1 ? "" : " (one stream: the tg row, from a 16-token prompt)");
    std::printf("\n| %s | streams | aggregate tok/s | tok/s per stream | aggregate / one stream |\n", r.model.c_str());
    std::printf("|---|---|---|---|---|\n");
    for (const auto& [n, tps] : r.streams)
      std::printf("| | %u | %.1f | %.1f | %.2f× |\n", n, tps, tps / n, one > 0 ? tps / one : 0.0);
  }
  for (const auto& r : rows) {
    if (r.steps.empty()) continue;
    std::printf("\nMedium steps after %u tokens in the sequence (best of %d):\n", so.depth,
                std::max(3, reps));
    std::printf("\n| %s | new tokens | ms a step | tok/s |\n|---|---|---|---|\n", r.model.c_str());
    for (const auto& [n, t] : r.steps) std::printf("| | %u | %.2f | %.0f |\n", n, 1e3 * t, n / t);
  }
  if (!json_path.empty() && !write_json(json_path, rows, depth, reps, chunk)) {
    std::fprintf(stderr, "bench_engine: could not write --json file '%s'\n", json_path.c_str());
    return 1;
  }
  return 0;
}
