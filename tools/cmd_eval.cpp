// `trove eval`: next-token probabilities of the engine for given token ids, as JSON — what the
// oracle tests compare with llama.cpp's.
//   trove eval -m MODEL --tokens '[151644, 872, ...]' [--chunk N] [--copies C] [--top K] [--generate G]
// The prompt is fed in chunks of N tokens (1: one decode step per token; the prompt length: one
// prefill), and the distribution after every token is printed (rows per step are bounded by the
// engine's logit rows, 64; a step longer than that prints the one after its last token). --tokens
// may hold several prompts ([[...], [...]]): each gets its own sequence and all go through the same
// steps (sequence i in chunks of N+i) — batched steps. --copies C
// repeats the prompt list C times. --generate G appends G greedy tokens after the first prompt.
//
//   trove eval -m MODEL --perplexity FILE [--ctx N] [--offset O] [--count C] [--per-token]
// Perplexity over a token sequence: FILE holds token ids as little-endian uint32 (the corpus' .u32
// files; '-' reads stdin) or, when its name ends in .json, a JSON array. Tokens [O, O+C) are cut into
// windows of N (the last may be shorter); each window is a fresh sequence, fed in steps of at most
// max_logit_rows() tokens, and every token of the slice after the first is scored by the log-probability
// the model gave it after the tokens before it in its window, plus the token that starts the next
// window (so every token after O is predicted exactly once, with 1..N tokens of context — the held-out
// loss of tools/train/train.py with N = 4096). Prints {scored, nll, mean_nll, perplexity, ...};
// --per-token adds the log-probabilities in order (natural log).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
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
  std::string perplexity;  // token file: perplexity mode
  uint32_t ctx = 512;
  uint64_t offset = 0;
  uint64_t count = 0;      // 0: to the end of the file
  bool per_token = false;
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

// log p(target) under softmax(logits), in double precision.
double log_prob(std::span<const float> logits, int32_t target) {
  double mx = -INFINITY;
  for (float l : logits) mx = std::max<double>(mx, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  return static_cast<double>(logits[static_cast<size_t>(target)]) - mx - std::log(sum);
}

std::vector<int32_t> read_token_file(const std::string& path) {
  std::string bytes;
  if (path == "-") {
    bytes.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream f(path, std::ios::binary);
    if (!f) cli::fail("--perplexity: cannot read " + path + " (a file of little-endian uint32 token ids, or .json)");
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  std::vector<int32_t> ids;
  if (path.size() > 5 && path.ends_with(".json")) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(bytes);
    } catch (const std::exception& e) {
      cli::fail("--perplexity: " + path + " is not JSON: " + e.what());
    }
    if (!j.is_array()) cli::fail("--perplexity: " + path + " must hold a JSON array of token ids");
    for (const auto& v : j) {
      if (!v.is_number_integer()) cli::fail("--perplexity: " + path + ": every element must be an integer token id");
      ids.push_back(v.get<int32_t>());
    }
    return ids;
  }
  if (bytes.size() % 4 != 0)
    cli::fail("--perplexity: " + path + " has " + std::to_string(bytes.size()) +
              " bytes, not a whole number of uint32 token ids (decompress .xz files first: xz -dc FILE | trove eval ... --perplexity -)");
  ids.resize(bytes.size() / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data() + 4 * i);
    ids[i] = static_cast<int32_t>(b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24));
  }
  return ids;
}

void perplexity(const EvalArgs& a) {
  const std::vector<int32_t> all = read_token_file(a.perplexity);
  if (a.offset >= all.size())
    cli::fail("--offset " + std::to_string(a.offset) + " is past the end of " + a.perplexity + " (" + std::to_string(all.size()) + " tokens)");
  const uint64_t end = a.count ? std::min<uint64_t>(all.size(), a.offset + a.count) : all.size();
  if (end - a.offset < 2) cli::fail("--perplexity needs at least 2 tokens in the slice (--offset/--count)");
  if (a.ctx == 0) cli::fail("--ctx must be at least 1");
  const std::span<const int32_t> ids(all.data() + a.offset, end - a.offset);
  engine::EngineOptions eo;
  eo.model_path = a.model;
  eo.max_sequences = 1;
  eo.max_batch_tokens = a.batch;
  eo.n_ctx = a.ctx;
  auto loaded = engine::Engine::load(eo);
  if (!loaded.ok()) cli::fail(loaded.status().message());
  engine::Engine& e = **loaded;
  const uint32_t n_vocab = e.config().n_vocab;
  for (int32_t id : ids)
    if (id < 0 || static_cast<uint32_t>(id) >= n_vocab)
      cli::fail("--perplexity: token id " + std::to_string(id) + " is outside the model's vocabulary of " + std::to_string(n_vocab));
  const uint32_t rows = std::max<uint32_t>(1, std::min(e.max_logit_rows(), e.max_batch_tokens()));
  double nll = 0;
  uint64_t scored = 0, windows = 0;
  nlohmann::json per_token = nlohmann::json::array();
  for (size_t w = 0; w + 1 < ids.size(); w += a.ctx) {
    // The window feeds ids[w, w+n) and scores ids[w+1, w+n] (the last target may start the next window).
    const size_t n = std::min<size_t>(a.ctx, ids.size() - 1 - w);
    auto seq = e.open_sequence();
    if (!seq.ok()) cli::fail(seq.status().message());
    for (size_t at = 0; at < n; at += rows) {
      engine::StepInput s;
      s.seq = *seq;
      s.tokens = ids.subspan(w + at, std::min<size_t>(rows, n - at));
      s.sample = false;
      s.want_logits = true;
      s.all_logits = true;
      auto out = e.step(std::span<const engine::StepInput>(&s, 1));
      if (!out.ok()) cli::fail(out.status().message());
      const auto& lg = (*out)[0].logits;
      for (size_t j = 0; j < s.tokens.size(); ++j) {
        const double lp = log_prob(std::span<const float>(lg).subspan(j * n_vocab, n_vocab), ids[w + at + j + 1]);
        nll -= lp;
        ++scored;
        if (a.per_token) per_token.push_back(lp);
      }
    }
    e.close_sequence(*seq);
    ++windows;
  }
  nlohmann::json j;
  j["device"] = e.device_name();
  j["ctx"] = a.ctx;
  j["offset"] = a.offset;
  j["tokens"] = ids.size();
  j["windows"] = windows;
  j["scored"] = scored;
  j["nll"] = nll;
  j["mean_nll"] = nll / static_cast<double>(scored);
  j["perplexity"] = std::exp(nll / static_cast<double>(scored));
  if (a.per_token) j["logprobs"] = per_token;
  std::printf("%s\n", j.dump().c_str());
}

void eval(const EvalArgs& a) {
  if (!a.perplexity.empty()) {
    perplexity(a);
    return;
  }
  if (a.tokens.empty()) cli::fail("trove eval needs --tokens (next-token probabilities) or --perplexity FILE");
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
      // A step longer than the engine's logit rows (a long prefill, --chunk 2048) prints the
      // distribution after its last token only.
      s.all_logits = n <= e.max_logit_rows();
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
      const size_t rows = in[i].all_logits ? n : 1;
      for (size_t r = 0; r < rows; ++r) {
        std::vector<float> row(lg.begin() + static_cast<long>(r * e.config().n_vocab),
                               lg.begin() + static_cast<long>((r + 1) * e.config().n_vocab));
        copies[c].push_back({{"position", at[c] + n - rows + r}, {"top", top_probs(row, a.top)}});
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
  sub.add_option("--tokens", a->tokens, "JSON array of token ids, or @FILE holding one");
  sub.add_option("--chunk", a->chunk, "Tokens per step (1: decode steps; prompt length: one prefill)")->capture_default_str();
  sub.add_option("--copies", a->copies, "Sequences fed in the same steps (copy i in chunks of chunk+i)")->capture_default_str();
  sub.add_option("--top", a->top, "Probabilities printed per position")->capture_default_str();
  sub.add_option("--generate", a->generate, "Greedy tokens to generate after the prompt")->capture_default_str();
  sub.add_option("--batch", a->batch, "Largest number of tokens per step")->capture_default_str();
  sub.add_option("--perplexity", a->perplexity,
                 "Perplexity over the token ids in FILE (little-endian uint32, '-' = stdin, or .json) instead of --tokens");
  sub.add_option("--ctx", a->ctx, "--perplexity: tokens per window (each window starts a fresh sequence)")->capture_default_str();
  sub.add_option("--offset", a->offset, "--perplexity: first token of the slice")->capture_default_str();
  sub.add_option("--count", a->count, "--perplexity: tokens in the slice (0: to the end)")->capture_default_str();
  sub.add_flag("--per-token", a->per_token, "--perplexity: also print every scored token's log-probability");
  sub.callback([a] { eval(*a); });
}

cli::CommandRegistration reg{"eval", "Print the engine's next-token probabilities for token ids, or the perplexity of a token file (JSON)", add_eval};

}  // namespace
