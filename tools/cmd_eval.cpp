// `trove eval`: next-token probabilities of the engine for given token ids, as JSON — what the
// oracle tests compare with llama.cpp's.
//   trove eval -m MODEL --tokens '[151644, 872, ...]' [--chunk N] [--copies C] [--top K] [--generate G]
// The prompt is fed in chunks of N tokens (1: one decode step per token; the prompt length: one
// prefill), and the distribution after every token is printed (rows per step are bounded by the
// engine's logit rows, 64). --tokens may hold several prompts ([[...], [...]]): each gets its own
// sequence and all go through the same steps (sequence i in chunks of N+i) — batched steps. --copies C
// repeats the prompt list C times. --generate G appends G greedy tokens after the first prompt.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/runtime/engine.h"
#include "tools/command.h"

namespace {

using namespace trove;

struct EvalArgs {
  std::string model;
  std::string tokens;
  uint32_t chunk = 1;
  uint32_t copies = 1;
  uint32_t top = 10;
  uint32_t generate = 0;
  uint32_t batch = 512;
};

nlohmann::json top_probs(const std::vector<float>& logits, uint32_t top) {
  double mx = -INFINITY;
  for (float l : logits) mx = std::max<double>(mx, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  std::vector<std::pair<double, int>> p;
  p.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) p.push_back({std::exp(static_cast<double>(logits[i]) - mx) / sum, static_cast<int>(i)});
  const size_t k = std::min<size_t>(top, p.size());
  std::partial_sort(p.begin(), p.begin() + static_cast<long>(k), p.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < k; ++i) out.push_back({p[i].second, p[i].first});
  return out;
}

void eval(const EvalArgs& a) {
  nlohmann::json ids_json;
  try {
    std::string text = a.tokens;
    if (!text.empty() && text[0] == '@') {
      std::ifstream f(text.substr(1));
      if (!f) cli::fail("cannot read " + text.substr(1));
      std::stringstream ss;
      ss << f.rdbuf();
      text = ss.str();
    }
    ids_json = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    cli::fail(std::string("--tokens must be a JSON array of token ids (or @file): ") + e.what());
  }
  if (!ids_json.is_array() || ids_json.empty()) cli::fail("--tokens must be a non-empty JSON array of token ids");
  // One prompt ([ids...]) or several ([[ids...], ...]), each fed to its own sequence in shared steps.
  std::vector<std::vector<int32_t>> prompts;
  const bool many = ids_json[0].is_array();
  for (const auto& p : many ? ids_json : nlohmann::json::array({ids_json})) {
    if (!p.is_array() || p.empty()) cli::fail("--tokens: every prompt must be a non-empty array of token ids");
    prompts.emplace_back();
    for (const auto& v : p) {
      if (!v.is_number_integer()) cli::fail("--tokens: every element must be an integer token id");
      prompts.back().push_back(v.get<int32_t>());
    }
  }
  if (a.chunk == 0 || a.copies == 0) cli::fail("--chunk and --copies must be at least 1");
  std::vector<std::vector<int32_t>> feeds;  // sequence c holds prompt c % prompts.size()
  for (uint32_t c = 0; c < a.copies; ++c) feeds.insert(feeds.end(), prompts.begin(), prompts.end());
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  engine::EngineOptions eo;
  eo.model_path = a.model;
  eo.max_sequences = static_cast<uint32_t>(feeds.size());
  eo.max_batch_tokens = a.batch;
  eo.n_ctx = static_cast<uint32_t>(longest + a.generate + 1);
  auto loaded = engine::Engine::load(eo);
  if (!loaded.ok()) cli::fail(loaded.status().message());
  engine::Engine& e = **loaded;
  std::vector<engine::SeqId> seqs;
  const uint32_t nseq = static_cast<uint32_t>(feeds.size());
  for (uint32_t c = 0; c < nseq; ++c) {
    auto s = e.open_sequence();
    if (!s.ok()) cli::fail(s.status().message());
    seqs.push_back(*s);
  }
  nlohmann::json copies = nlohmann::json::array();
  for (uint32_t c = 0; c < nseq; ++c) copies.push_back(nlohmann::json::array());
  std::vector<size_t> at(nseq, 0);
  int32_t next = -1;
  while (true) {
    std::vector<engine::StepInput> in;
    std::vector<uint32_t> who;
    for (uint32_t c = 0; c < nseq; ++c) {
      const auto& ids = feeds[c];
      if (at[c] >= ids.size()) continue;
      const size_t n = std::min<size_t>(a.chunk + c, ids.size() - at[c]);
      engine::StepInput s;
      s.seq = seqs[c];
      s.tokens = std::span<const int32_t>(ids).subspan(at[c], n);
      s.want_logits = true;
      s.all_logits = true;
      in.push_back(s);
      who.push_back(c);
    }
    if (in.empty()) break;
    auto out = e.step(in);
    if (!out.ok()) cli::fail(out.status().message());
    for (size_t i = 0; i < in.size(); ++i) {
      const uint32_t c = who[i];
      const size_t n = in[i].tokens.size();
      const auto& lg = (*out)[i].logits;
      for (size_t j = 0; j < n; ++j) {
        std::vector<float> row(lg.begin() + static_cast<long>(j * e.config().n_vocab),
                               lg.begin() + static_cast<long>((j + 1) * e.config().n_vocab));
        copies[c].push_back({{"position", at[c] + j}, {"top", top_probs(row, a.top)}});
      }
      at[c] += n;
      if (c == 0 && at[c] == feeds[0].size()) next = (*out)[i].token;
    }
  }
  nlohmann::json generated = nlohmann::json::array();
  for (uint32_t g = 0; g < a.generate; ++g) {
    generated.push_back(next);
    engine::StepInput s;
    s.seq = seqs[0];
    s.tokens = std::span<const int32_t>(&next, 1);
    auto out = e.step(std::span<const engine::StepInput>(&s, 1));
    if (!out.ok()) cli::fail(out.status().message());
    next = (*out)[0].token;
  }
  nlohmann::json j;
  j["device"] = e.device_name();
  j["positions"] = copies[0];
  j["sequences"] = copies;  // sequence c: prompt c % number of prompts
  j["generated"] = generated;
  std::printf("%s\n", j.dump().c_str());
}

void add_eval(CLI::App& sub) {
  auto a = std::make_shared<EvalArgs>();
  sub.add_option("-m,--model", a->model, "GGUF model")->required();
  sub.add_option("--tokens", a->tokens, "JSON array of token ids, or @FILE holding one")->required();
  sub.add_option("--chunk", a->chunk, "Tokens per step (1: decode steps; prompt length: one prefill)")->capture_default_str();
  sub.add_option("--copies", a->copies, "Sequences fed in the same steps (copy i in chunks of chunk+i)")->capture_default_str();
  sub.add_option("--top", a->top, "Probabilities printed per position")->capture_default_str();
  sub.add_option("--generate", a->generate, "Greedy tokens to generate after the prompt")->capture_default_str();
  sub.add_option("--batch", a->batch, "Largest number of tokens per step")->capture_default_str();
  sub.callback([a] { eval(*a); });
}

cli::CommandRegistration reg{"eval", "Print the engine's next-token probabilities for token ids (JSON)", add_eval};

}  // namespace
