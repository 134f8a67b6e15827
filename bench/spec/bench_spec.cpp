// Speculative decoding benchmark (issue 20, docs/speculative.md). Two modes:
//
//   bench_spec --model T.gguf [--draft D.gguf] [--heldout tools/train/data/heldout.u32.xz | --docs F.json]
//              [--conversations 6] [--turns 2] [--max-tokens 96] [--methods off,lookup,draft,auto]
//     Agent transcripts: every conversation is cut at its first --turns assistant turns; each cut (the
//     conversation up to "<|im_start|>assistant\n") is a prompt that the target continues greedily with
//     each method. Per method: draft tokens verified and accepted (acceptance rate), generated tokens per
//     target decode step, decode tok/s on this machine, and whether the output equals --methods' first
//     (greedy speculation must not change a token). --docs reads {"docs": [[ids...], ...]} (what
//     bench/spec/agent_loop.mjs writes for the agent-loop conversation of tests/server).
//     Also, teacher-forced over EVERY document given: prompt lookup's acceptance when the model writes
//     exactly the transcript's assistant turns (the draft against the reference tokens; no model runs)
//     — how much of an agent transcript is copied from its own context — with the engine's policy and
//     as a grid of draft caps × shortest n-grams, each with the decode speed-up that --step-ms (ms a
//     target step of 1..8 tokens; default the H200's 8B) gives; then the turns split by their own
//     acceptance (issue 20's goal is for turns where lookup accepts >= 60%), each class's speed-up and
//     the cap that would suit it best. --conversations 0 runs only this (~3 s).
//     Prompts longer than the model's context keep their last tokens.
//
//   bench_spec --verify-cost --model M.gguf [--depth 1024] [--reps 5] [--k 1,4]
//     Target step time for 1..8 tokens of one sequence with per-position argmax (a verification step
//     of k - 1 drafts) at --depth tokens of context, whether its per-position argmax equals greedy
//     decoding one token per step (it must), and the decode speed-up that acceptance rates would give (expected tokens per step of i.i.d. acceptance a with k - 1 drafts, over the step time
//     ratio). A k whose argmax differs names the positions, with the one-token step's top-2 logit
//     margin there (a near tie that a different rounding flips, or a real difference). For the H200: `trove mkmodel --preset qwen3-8b|qwen3-30b-a3b --type Q4_K_M` files.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/runtime/engine.h"
#include "engine/runtime/generate.h"
#include "engine/runtime/speculative.h"

using namespace trove;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "bench_spec: %s\n", msg.c_str());
  std::exit(1);
}

// heldout.u32.xz (tools/train/make_corpus.py pack()): uint32 document lengths, then every token. The
// number of documents is the n with lengths[0..n) summing to (values - n).
std::vector<std::vector<int32_t>> read_u32_docs(const std::string& path) {
  const bool xz = path.size() > 3 && path.substr(path.size() - 3) == ".xz";
  std::string raw;
  if (xz) {
    FILE* p = ::popen(fmt::format("xz -dc '{}'", path).c_str(), "r");
    if (!p) die("cannot run xz -dc " + path);
    char buf[1 << 16];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) raw.append(buf, n);
    if (::pclose(p) != 0) die("xz -dc " + path + " failed (is xz installed and the file there?)");
  } else {
    std::ifstream f(path, std::ios::binary);
    if (!f) die("cannot open " + path);
    raw.assign(std::istreambuf_iterator<char>(f), {});
  }
  const size_t total = raw.size() / 4;
  std::vector<uint32_t> v(total);
  std::memcpy(v.data(), raw.data(), total * 4);
  uint64_t sum = 0;
  size_t n = 0;
  for (; n < total; ++n) {
    if (sum == total - n) break;
    sum += v[n];
  }
  if (n == 0 || sum != total - n) die(path + ": not a token file (document lengths then tokens)");
  std::vector<std::vector<int32_t>> docs;
  size_t at = n;
  for (size_t i = 0; i < n; ++i) {
    docs.emplace_back(v.begin() + static_cast<ptrdiff_t>(at), v.begin() + static_cast<ptrdiff_t>(at + v[i]));
    at += v[i];
  }
  return docs;
}

// {"docs": [[ids...], ...], "last_turn_only": bool}: with last_turn_only each document is one request
// of an agent loop and its reply, so only its last assistant turn is new.
std::vector<std::vector<int32_t>> read_json_docs(const std::string& path, bool& last_turn_only) {
  std::ifstream f(path);
  if (!f) die("cannot open " + path);
  const auto j = nlohmann::json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.contains("docs")) die(path + ": expected {\"docs\": [[token ids], ...]}");
  last_turn_only = j.value("last_turn_only", false);
  return j["docs"].get<std::vector<std::vector<int32_t>>>();
}

std::unique_ptr<engine::Engine> load(const std::string& path, uint32_t n_ctx) {
  engine::EngineOptions o;
  o.model_path = path;
  o.n_ctx = n_ctx;
  o.max_sequences = 1;
  o.max_batch_tokens = 512;
  auto e = engine::Engine::load(o);
  if (!e.ok()) die(path + ": " + e.status().message());
  return std::move(*e);
}

// Positions just after "<|im_start|>assistant\n" and the matching "<|im_end|>" (exclusive).
struct Turn {
  size_t start, end;
};
std::vector<Turn> assistant_turns(const std::vector<int32_t>& d, const engine::Engine& e) {
  const auto& tk = e.tokenizer();
  const int32_t im_start = tk.find("<|im_start|>"), im_end = tk.find("<|im_end|>");
  const auto assistant = tk.encode("assistant\n", false);
  std::vector<Turn> turns;
  for (size_t i = 0; i + 1 + assistant.size() < d.size(); ++i) {
    if (d[i] != im_start || !std::equal(assistant.begin(), assistant.end(), d.begin() + static_cast<ptrdiff_t>(i + 1))) continue;
    const size_t s = i + 1 + assistant.size();
    size_t t = s;
    while (t < d.size() && d[t] != im_end) ++t;
    turns.push_back({s, t});
  }
  return turns;
}

// Teacher-forced prompt lookup over assistant turns (the reference tokens are what the model writes):
// each step drafts lookup_draft(history, min(adaptive k, cap), min_ngram), accepts the matching
// prefix, advances by accepted + 1. speedup: tokens over Σ step_ms[drafted] against one token per
// step_ms[0] — the decode speed-up if verification costs what step_ms says and acceptance is this.
struct TeacherForced {
  uint64_t tokens = 0, steps = 0, drafted = 0, accepted = 0;
  double speedup = 0;
};
TeacherForced teacher_forced(const std::vector<std::pair<const std::vector<int32_t>*, Turn>>& turns, uint32_t cap,
                             uint32_t min_ngram, const std::vector<double>& step_ms) {
  TeacherForced r;
  double ms = 0;
  for (const auto& [doc, t] : turns) {
    const std::vector<int32_t>& d = *doc;
    engine::AdaptiveK k;
    for (size_t p = t.start; p < t.end;) {
      const auto h = std::span<const int32_t>(d).first(p);
      const auto l = engine::lookup_draft(h, std::min(k.k, cap), min_ngram);
      uint32_t acc = 0;
      while (acc < l.tokens.size() && p + acc < t.end && l.tokens[acc] == d[p + acc]) ++acc;
      k.update(static_cast<uint32_t>(l.tokens.size()), acc);
      r.drafted += l.tokens.size();
      r.accepted += acc;
      const size_t adv = std::min<size_t>(acc + 1, t.end - p);
      r.tokens += adv;
      ++r.steps;
      ms += step_ms[std::min(l.tokens.size(), step_ms.size() - 1)];
      p += adv;
    }
  }
  r.speedup = ms > 0 ? double(r.tokens) * step_ms[0] / ms : 0;
  return r;
}

// The teacher-forced turns split by their own acceptance under the engine's policy (at most max_draft
// drafts, n-grams of kLookupMinNgram+): issue 20's goal is stated for "edit-heavy agent turns where
// prompt lookup accepts >= 60%". Per class: turns, their share of the tokens, tokens a step, acceptance
// and the modelled speed-up with the engine's policy, then the cap (1..kMaxDraftTokens) that would
// model best on those turns alone. Turns that drafted nothing are a class of their own. The classes
// are chosen after the fact (a turn's acceptance is known once it is written), so a cap that wins in a
// class says what a policy could gain if it recognised such turns early, not what it gains.
void by_turn_acceptance(const std::vector<std::pair<const std::vector<int32_t>*, Turn>>& turns, uint32_t max_draft,
                        const std::vector<double>& step_ms) {
  struct Class {
    const char* name;
    double lo, hi;
    std::vector<std::pair<const std::vector<int32_t>*, Turn>> turns;
  };
  std::vector<Class> classes = {{"no drafts", -1, 0, {}},       {"0-20%", 0, 0.2, {}},  {"20-40%", 0.2, 0.4, {}},
                                {"40-60%", 0.4, 0.6, {}},       {"60-80%", 0.6, 0.8, {}}, {"80-100%", 0.8, 1.01, {}},
                                {">= 60% (the goal's turns)", 0.6, 1.01, {}}};
  uint64_t all_tokens = 0;
  for (const auto& t : turns) {
    const TeacherForced r = teacher_forced({t}, max_draft, engine::kLookupMinNgram, step_ms);
    all_tokens += r.tokens;
    const double a = r.drafted ? double(r.accepted) / r.drafted : -1;
    for (Class& c : classes) {
      if (r.drafted == 0 ? c.lo < 0 : (c.lo >= 0 && a >= c.lo && a < c.hi)) c.turns.push_back(t);
    }
  }
  std::printf("\nthe same turns by their own acceptance (engine policy: <= %u drafts, n-grams of %u+); best cap = the cap "
              "that models best on that class alone\n| turns accepting | turns | share of tokens | tokens / step | "
              "acceptance | modelled speed-up | best cap | its speed-up |\n|---|---|---|---|---|---|---|---|\n",
              max_draft, engine::kLookupMinNgram);
  for (const Class& c : classes) {
    const TeacherForced r = teacher_forced(c.turns, max_draft, engine::kLookupMinNgram, step_ms);
    uint32_t best_cap = max_draft;
    double best = r.speedup;
    for (uint32_t cap = 1; cap <= engine::kMaxDraftTokens; ++cap) {
      const double v = teacher_forced(c.turns, cap, engine::kLookupMinNgram, step_ms).speedup;
      if (v > best) best = v, best_cap = cap;
    }
    std::printf("| %s | %zu | %.1f%% | %.3f | %s | %.3fx | %u | %.3fx |\n", c.name, c.turns.size(),
                all_tokens ? 100.0 * r.tokens / all_tokens : 0.0, r.steps ? double(r.tokens) / r.steps : 0.0,
                r.drafted ? fmt::format("{:.1f}%", 100.0 * r.accepted / r.drafted).c_str() : "-", r.speedup, best_cap, best);
  }
}

// Teacher-forced draft model: pred[i] = the draft's greedy token for position i of a document given
// the reference tokens before it (one pass per document; only the assistant turns' positions are
// asked for, in steps of at most 64 rows). When the model writes the transcript, the draft model's k
// drafts at position p are pred[p], pred[p + 1], ... as long as each equals the reference, so a
// round's accepted drafts are the run of correct predictions from p.
using Preds = std::map<const std::vector<int32_t>*, std::vector<int32_t>>;
Preds draft_predictions(const std::string& draft_path, const std::vector<std::pair<const std::vector<int32_t>*, Turn>>& turns) {
  uint32_t longest = 0;
  for (const auto& [d, t] : turns) longest = std::max<uint32_t>(longest, static_cast<uint32_t>(d->size()));
  auto draft = load(draft_path, (longest + 63) / 64 * 64);
  std::map<const std::vector<int32_t>*, std::vector<Turn>> by_doc;
  for (const auto& [d, t] : turns) by_doc[d].push_back(t);
  Preds out;
  for (const auto& [doc, ts] : by_doc) {
    const std::vector<int32_t>& d = *doc;
    if (d.size() > draft->n_ctx()) continue;  // past the draft's context: left out (counted below)
    auto seq = draft->open_sequence();
    if (!seq.ok()) die(seq.status().message());
    std::vector<int32_t>& pred = out[doc];
    pred.assign(d.size(), -1);
    size_t fed = 0;
    auto feed = [&](size_t upto, bool want) {  // tokens fed .. upto; want: the argmax after each
      while (fed < upto) {
        const size_t n = std::min<size_t>(upto - fed, want ? 64 : 512);
        engine::StepInput in;
        in.seq = *seq;
        in.tokens = std::span<const int32_t>(d).subspan(fed, n);
        in.all_tokens = want;
        auto r = draft->step(std::span<const engine::StepInput>(&in, 1));
        if (!r.ok()) die("draft model pass: " + r.status().message());
        if (want) {
          for (size_t j = 0; j < n && fed + j + 1 < d.size(); ++j) pred[fed + j + 1] = (*r)[0].tokens[j];
        }
        fed += n;
      }
    };
    for (const Turn& t : ts) {
      if (t.start == 0 || t.end <= t.start) continue;
      feed(t.start - 1, false);
      feed(t.end - 1, true);  // predictions for t.start .. t.end - 1
    }
    draft->close_sequence(*seq);
  }
  return out;
}

// The draft model teacher-forced (pred from draft_predictions) with at most `cap` drafts a round and
// the engine's adaptive k: a round costs k draft decode steps of draft_ms and one target step of k + 1
// tokens (step_ms[k]); the speed-up is against one token per step_ms[0]. With `with_lookup` (the
// engine's auto, SpeculativeDecoder): a round whose prompt lookup finds a match of 3+ tokens drafts
// by lookup (no draft steps, its own adaptive k), the others by the draft model.
TeacherForced teacher_forced_draft(const std::vector<std::pair<const std::vector<int32_t>*, Turn>>& turns,
                                   const Preds& preds, uint32_t cap, const std::vector<double>& step_ms, double draft_ms,
                                   bool with_lookup = false) {
  TeacherForced r;
  double ms = 0;
  for (const auto& [doc, t] : turns) {
    auto it = preds.find(doc);
    if (it == preds.end()) continue;
    const std::vector<int32_t>& d = *doc;
    const std::vector<int32_t>& pred = it->second;
    engine::AdaptiveK k, k_lookup;
    for (size_t p = t.start; p < t.end;) {
      engine::LookupDraft l;
      if (with_lookup) l = engine::lookup_draft(std::span<const int32_t>(d).first(p), std::min(k_lookup.k, cap));
      const bool lookup = !l.tokens.empty() && l.ngram >= 3;
      const uint32_t n = lookup ? static_cast<uint32_t>(l.tokens.size()) : std::min(k.k, cap);
      uint32_t acc = 0;
      while (acc < n && p + acc < t.end && (lookup ? l.tokens[acc] : pred[p + acc]) == d[p + acc]) ++acc;
      (lookup ? k_lookup : k).update(n, acc);
      r.drafted += n;
      r.accepted += acc;
      const size_t adv = std::min<size_t>(acc + 1, t.end - p);
      r.tokens += adv;
      ++r.steps;
      ms += (lookup ? 0 : n * draft_ms) + step_ms[std::min<size_t>(n, step_ms.size() - 1)];
      p += adv;
    }
  }
  r.speedup = ms > 0 ? double(r.tokens) * step_ms[0] / ms : 0;
  return r;
}

// The draft model's table: all turns and the goal's turns (lookup accepting >= 60% under the engine's
// policy), tokens a step and acceptance, and the modelled speed-up for draft steps costing a fraction
// of the target's one-token step (a Qwen3-0.6B Q8_0 drafting for the 8B: 0.40x, measured on the H100
// on 2026-12-05 at depth 1024 — its ~185 dependent dispatches a step, not its 13x fewer weights, set it).
void draft_model_table(const std::string& draft_path, const std::vector<std::pair<const std::vector<int32_t>*, Turn>>& turns,
                       uint32_t max_draft, const std::vector<double>& step_ms) {
  const auto t0 = Clock::now();
  const Preds preds = draft_predictions(draft_path, turns);
  std::vector<std::pair<const std::vector<int32_t>*, Turn>> goal, covered;
  for (const auto& t : turns) {
    if (!preds.count(t.first)) continue;
    covered.push_back(t);
    const TeacherForced r = teacher_forced({t}, max_draft, engine::kLookupMinNgram, step_ms);
    if (r.drafted && double(r.accepted) / r.drafted >= 0.6) goal.push_back(t);
  }
  const double fractions[] = {0.05, 0.1, 0.2, 0.3, 0.4};  // 0.4: the measured Qwen3-0.6B step (above)
  std::printf("\nteacher-forced draft model (%s; its predictions for %zu of %zu turns in %.0f s), at most %u drafts, "
              "adaptive k; a round costs k draft steps + one target step of k + 1 tokens (--step-ms); speed-up for "
              "draft steps costing a fraction of the target's one-token step (in brackets: the best cap 1..7 where it "
              "beats the policy's); auto: the engine's auto method, lookup for rounds whose match is 3+ tokens\n"
              "| method | turns | turns | tokens / step | acceptance |",
              draft_path.c_str(), covered.size(), turns.size(), secs(t0), max_draft);
  for (double f : fractions) std::printf(" draft step %.2fx |", f);
  std::printf(" lookup (same turns) |\n|---|---|---|---|---|");
  for (size_t i = 0; i <= std::size(fractions); ++i) std::printf("---|");
  std::printf("\n");
  for (int row = 0; row < 4; ++row) {
    const bool goal_turns = row % 2 == 1, with_lookup = row >= 2;
    const auto& ts = goal_turns ? goal : covered;
    const TeacherForced base = teacher_forced_draft(ts, preds, max_draft, step_ms, 0, with_lookup);
    std::printf("| %s | %s | %zu | %.3f | %s |", with_lookup ? "auto (lookup at 3+ tokens, else draft)" : "draft model",
                goal_turns ? "lookup accepts >= 60%" : "all", ts.size(), base.steps ? double(base.tokens) / base.steps : 0.0,
                base.drafted ? fmt::format("{:.1f}%", 100.0 * base.accepted / base.drafted).c_str() : "-");
    for (double f : fractions) {
      const double at = teacher_forced_draft(ts, preds, max_draft, step_ms, f * step_ms[0], with_lookup).speedup;
      double best = at;
      uint32_t best_cap = max_draft;
      for (uint32_t cap = 1; cap <= engine::kMaxDraftTokens; ++cap) {
        const double v = teacher_forced_draft(ts, preds, cap, step_ms, f * step_ms[0], with_lookup).speedup;
        if (v > best) best = v, best_cap = cap;
      }
      std::printf(" %.3fx%s |", at, best_cap == max_draft ? "" : fmt::format(" ({:.3f}x, cap {})", best, best_cap).c_str());
    }
    std::printf(" %.3fx |\n", teacher_forced(ts, max_draft, engine::kLookupMinNgram, step_ms).speedup);
  }
}

struct MethodRow {
  uint64_t generated = 0, steps = 0, drafted = 0, accepted = 0, same = 0, cuts = 0;
  double decode_s = 0;
};

void acceptance(const std::string& model, const std::string& draft_path, const std::vector<std::vector<int32_t>>& all,
                bool last_turn_only, const std::string& what, uint32_t conversations, uint32_t turns,
                uint32_t max_tokens, uint32_t max_draft, const std::vector<std::string>& methods,
                const std::vector<double>& step_ms, uint32_t tf_draft) {
  uint32_t longest = 0;
  for (size_t i = 0; i < all.size() && i < conversations; ++i) {
    longest = std::max<uint32_t>(longest, static_cast<uint32_t>(all[i].size()));
  }
  // The model's training context bounds the engine's; longer prompts keep their last tokens.
  uint32_t n_ctx = (longest + max_tokens + 64 + 63) / 64 * 64;
  {
    auto probe = load(model, 0);
    n_ctx = std::min(n_ctx, probe->n_ctx());
  }
  auto target = load(model, n_ctx);
  std::unique_ptr<engine::Engine> draft;
  if (!draft_path.empty()) {
    draft = load(draft_path, n_ctx);
    if (Status st = engine::Speculator::check_draft_model(*target, *draft); !st.ok()) die(st.message());
  }
  engine::Speculator sp(*target, draft.get());
  auto seq = target->open_sequence();
  if (!seq.ok()) die(seq.status().message());
  std::map<std::string, MethodRow> rows;
  // Teacher-forced prompt lookup over the assistant turns' reference tokens, every document: the
  // engine's policy (at most max_draft drafts, adaptive k, n-grams of kLookupMinNgram+), and the
  // sweep of caps and shortest n-grams with the decode speed-up the step costs (step_ms) give.
  std::vector<std::pair<const std::vector<int32_t>*, Turn>> tf_all;
  for (const auto& d : all) {
    auto ts = assistant_turns(d, *target);
    if (last_turn_only && ts.size() > 1) ts.erase(ts.begin(), ts.end() - 1);
    for (const Turn& t : ts) tf_all.emplace_back(&d, t);
  }
  const TeacherForced tf = teacher_forced(tf_all, max_draft, engine::kLookupMinNgram, step_ms);
  const uint64_t tf_tokens = tf.tokens, tf_steps = tf.steps, tf_drafted = tf.drafted, tf_accepted = tf.accepted,
                 tf_turns = tf_all.size();
  const size_t n_docs = std::min<size_t>(all.size(), conversations);
  for (size_t di = 0; di < n_docs; ++di) {
    const auto& d = all[di];
    auto ts = assistant_turns(d, *target);
    if (last_turn_only && ts.size() > 1) ts.erase(ts.begin(), ts.end() - 1);
    if (ts.size() > turns) ts.resize(turns);
    for (const Turn& t : ts) {
      std::span<const int32_t> prompt = std::span<const int32_t>(d).first(t.start);
      const size_t room = n_ctx - max_tokens - 1;
      if (prompt.size() > room) prompt = prompt.last(room);  // the context's tail (a note is printed below)
      std::vector<int32_t> first_tokens;
      for (size_t mi = 0; mi < methods.size(); ++mi) {
        const auto m = engine::parse_spec_method(methods[mi]);
        if (!m) die("--methods: " + methods[mi] + " is not off, lookup, draft or auto");
        engine::GenerateOptions go;
        go.max_tokens = max_tokens;
        go.speculative = *m;
        go.speculator = &sp;
        go.max_draft = max_draft;
        auto r = engine::generate(*target, *seq, prompt, go, nullptr);
        if (!r.ok()) die(r.status().message());
        MethodRow& row = rows[methods[mi]];
        ++row.cuts;
        row.generated += r->generated_tokens;
        row.steps += r->decode_steps;
        row.drafted += r->spec.lookup.drafted + r->spec.draft.drafted;
        row.accepted += r->spec.lookup.accepted + r->spec.draft.accepted;
        row.decode_s += r->decode_seconds;
        if (mi == 0) first_tokens = r->tokens;
        row.same += r->tokens == first_tokens ? 1 : 0;
        if (r->tokens != first_tokens) {
          size_t at = 0;
          while (at < r->tokens.size() && at < first_tokens.size() && r->tokens[at] == first_tokens[at]) ++at;
          std::fprintf(stderr, "  output differs from %s's at generated token %zu: %d vs %d\n", methods[0].c_str(), at,
                       at < r->tokens.size() ? r->tokens[at] : -1, at < first_tokens.size() ? first_tokens[at] : -1);
        }
        std::fprintf(stderr, "  %s doc %zu turn at %zu: %-6s %u tokens in %u steps, %llu/%llu drafts accepted\n",
                     what.c_str(), di, t.start, methods[mi].c_str(), r->generated_tokens, r->decode_steps,
                     static_cast<unsigned long long>(r->spec.lookup.accepted + r->spec.draft.accepted),
                     static_cast<unsigned long long>(r->spec.lookup.drafted + r->spec.draft.drafted));
      }
    }
  }
  std::printf("\n%s: %zu conversations, first %u assistant turns each%s, greedy, <= %u tokens per turn, <= %u drafts "
              "per step, context %u (longer prompts keep their last tokens)\n",
              what.c_str(), n_docs, turns, last_turn_only ? " (last turn of each request)" : "", max_tokens, max_draft,
              n_ctx);
  std::printf("| method | turns | generated | target decode steps | tokens / step | drafted | accepted | acceptance | "
              "decode tok/s here | output = %s |\n|---|---|---|---|---|---|---|---|---|---|\n",
              methods.front().c_str());
  for (const auto& name : methods) {
    const MethodRow& r = rows[name];
    // Generated tokens per decode step (the first token of a turn comes from the prefill step, and
    // the last step may yield only the stop token: without speculation this is ~1).
    const double per_step = r.steps ? double(r.generated) / r.steps : 0;
    std::printf("| %s | %llu | %llu | %llu | %.2f | %llu | %llu | %s | %.1f | %llu/%llu |\n", name.c_str(),
                static_cast<unsigned long long>(r.cuts), static_cast<unsigned long long>(r.generated),
                static_cast<unsigned long long>(r.steps), per_step, static_cast<unsigned long long>(r.drafted),
                static_cast<unsigned long long>(r.accepted),
                r.drafted ? fmt::format("{:.1f}%", 100.0 * r.accepted / r.drafted).c_str() : "-",
                r.decode_s > 0 ? r.generated / r.decode_s : 0.0, static_cast<unsigned long long>(r.same),
                static_cast<unsigned long long>(r.cuts));
  }
  std::printf("\nteacher-forced prompt lookup over %llu assistant turns of %zu conversations (a model that writes the "
              "transcript), <= %u drafts a step, n-grams of %u+ tokens: %llu tokens in %llu steps = %.2f tokens/step, "
              "%llu/%llu drafts accepted (%.1f%%), modelled decode speed-up %.2fx\n",
              static_cast<unsigned long long>(tf_turns), all.size(), max_draft, engine::kLookupMinNgram,
              static_cast<unsigned long long>(tf_tokens), static_cast<unsigned long long>(tf_steps),
              tf_steps ? double(tf_tokens) / tf_steps : 0.0, static_cast<unsigned long long>(tf_accepted),
              static_cast<unsigned long long>(tf_drafted), tf_drafted ? 100.0 * tf_accepted / tf_drafted : 0.0, tf.speedup);
  std::printf("\nthe same, by cap and shortest n-gram; speed-up = tokens / Σ step_ms(drafts + 1) against 1 / step_ms(1), "
              "step_ms = --step-ms (ms a target step of 1..8 tokens: %s)\n| drafts <= | n-gram >= | tokens / step | "
              "acceptance | modelled speed-up |\n|---|---|---|---|---|\n", fmt::format("{}", fmt::join(step_ms, ", ")).c_str());
  for (uint32_t ng = 2; ng <= 4; ++ng) {
    for (uint32_t cap = 1; cap <= engine::kMaxDraftTokens; ++cap) {
      const TeacherForced r = teacher_forced(tf_all, cap, ng, step_ms);
      std::printf("| %u | %u | %.3f | %.1f%% | %.3fx |\n", cap, ng, r.steps ? double(r.tokens) / r.steps : 0.0,
                  r.drafted ? 100.0 * r.accepted / r.drafted : 0.0, r.speedup);
    }
  }
  by_turn_acceptance(tf_all, max_draft, step_ms);
  if (!draft_path.empty() && tf_draft > 0) {
    std::vector<std::pair<const std::vector<int32_t>*, Turn>> first;
    for (const auto& t : tf_all) {
      if (t.first < all.data() + std::min<size_t>(tf_draft, all.size())) first.push_back(t);
    }
    draft_model_table(draft_path, first, max_draft, step_ms);
  }
}

void verify_cost(const std::string& model, uint32_t depth, int reps, const std::vector<uint32_t>& only_k) {
  auto e = load(model, std::max<uint32_t>(4096, depth + 64));
  auto seq = e->open_sequence();
  if (!seq.ok()) die(seq.status().message());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(std::min<uint32_t>(e->config().n_vocab, 150000)) - 1);
  depth = std::max<uint32_t>(depth, 1);
  std::vector<int32_t> ctx(depth);
  for (auto& t : ctx) t = tok(rng);
  // g: greedy decoding one token per step after the context (g[0] from the last prefill step). A
  // verification step of k tokens g[0..k) must give g[1..k] back: checked for every k (a kernel that
  // is wrong at some batch width shows here).
  std::vector<int32_t> g;
  for (uint32_t at = 0; at < depth; at += 512) {
    engine::StepInput in;
    in.seq = *seq;
    in.tokens = std::span<const int32_t>(ctx).subspan(at, std::min<uint32_t>(512, depth - at));
    in.sample = at + 512 >= depth;
    auto out = e->step(std::span<const engine::StepInput>(&in, 1));
    if (!out.ok()) die(out.status().message());
    if (in.sample) g.push_back((*out)[0].token);
  }
  // margin[j]: the one-token step's top-1 minus top-2 logit at position j (how close a tie a batched
  // step's rounding could flip), and the logits' standard deviation for scale.
  std::vector<double> margin(engine::kCheapStepTokens + 1, 0), spread(engine::kCheapStepTokens + 1, 0);
  while (g.size() <= engine::kCheapStepTokens) {
    engine::StepInput in;
    in.seq = *seq;
    in.tokens = std::span<const int32_t>(&g.back(), 1);
    in.want_logits = true;
    auto out = e->step(std::span<const engine::StepInput>(&in, 1));
    if (!out.ok()) die(out.status().message());
    const std::vector<float>& lg = (*out)[0].logits;
    double top[2] = {-1e30, -1e30}, sum = 0, sum2 = 0;
    for (float v : lg) {
      if (v > top[0]) top[1] = top[0], top[0] = v;
      else if (v > top[1]) top[1] = v;
      sum += v;
      sum2 += double(v) * v;
    }
    const double n = std::max<double>(1, lg.size());
    margin[g.size()] = top[0] - top[1];
    spread[g.size()] = std::sqrt(std::max(0.0, sum2 / n - (sum / n) * (sum / n)));
    g.push_back((*out)[0].token);
  }
  if (Status st = e->truncate(*seq, depth); !st.ok()) die(st.message());
  std::vector<double> ms(9, 0);
  std::vector<bool> exact(9, true);
  std::vector<std::string> differ(9);  // the positions whose argmax differed, per k
  auto wanted = [&](uint32_t k) { return only_k.empty() || std::find(only_k.begin(), only_k.end(), k) != only_k.end(); };
  // One step of k tokens g[0..k) after the context, checked against g[1..k], then rolled back; seconds.
  auto verify = [&](uint32_t k) -> double {
    const std::vector<int32_t> fed(g.begin(), g.begin() + k);
    engine::StepInput in;
    in.seq = *seq;
    in.tokens = fed;
    in.all_tokens = k > 1;
    in.provisional = k - 1;
    const auto t0 = Clock::now();
    auto out = e->step(std::span<const engine::StepInput>(&in, 1));
    const double t = secs(t0);
    if (!out.ok()) die(out.status().message());
    const auto& got = k > 1 ? (*out)[0].tokens : std::vector<int32_t>{(*out)[0].token};
    if (got != std::vector<int32_t>(g.begin() + 1, g.begin() + 1 + k) && exact[k]) {
      exact[k] = false;
      for (uint32_t j = 1; j <= k; ++j) {
        if (j - 1 < got.size() && got[j - 1] == g[j]) continue;
        differ[k] += fmt::format(" {} (one-token top-2 margin {:.4g}, logits sd {:.3g})", j, margin[j], spread[j]);
      }
    }
    if (Status st = e->truncate(*seq, depth); !st.ok()) die(st.message());
    return t;
  };
  std::vector<uint32_t> ks;
  for (uint32_t k = 1; k <= engine::kCheapStepTokens; ++k) {
    if (wanted(k)) ks.push_back(k);
  }
  // A first round compiles every k's pipelines; then ~1 s of steps brings the GPU to its working
  // clocks, and the measured rounds take the k in turn, so a change of clocks or of anything else
  // on the machine during the run falls on every k alike (one k after the other, the H200's medians
  // swung 2-5x between runs).
  for (uint32_t k : ks) verify(k);
  for (const auto warm = Clock::now(); secs(warm) < 1.0;) verify(1);
  std::vector<std::vector<double>> times(engine::kCheapStepTokens + 1);
  for (int r = 0; r < reps; ++r) {
    for (uint32_t k : ks) times[k].push_back(verify(k));
  }
  for (uint32_t k : ks) {
    std::sort(times[k].begin(), times[k].end());
    ms[k] = times[k][times[k].size() / 2] * 1e3;
  }
  std::printf("\n%s on %s, %u tokens of context: target step time for k tokens (k - 1 drafts verified), median of %d\n",
              e->config().name.c_str(), e->device_name().c_str(), depth, reps);
  const double alphas[] = {0.5, 0.6, 0.7, 0.8, 0.9};
  std::printf("| k | step ms | vs k=1 | argmax = one at a time |");
  for (double a : alphas) std::printf(" speed-up at %.0f%% |", a * 100);
  std::printf("\n|---|---|---|---|---|---|---|---|---|\n");
  for (uint32_t k = 1; k <= engine::kCheapStepTokens; ++k) {
    if (!wanted(k)) continue;
    const double t1 = ms[1] > 0 ? ms[1] : NAN;  // nan without k = 1 (--k)
    std::printf("| %u | %.2f | %.2f | %s |", k, ms[k], ms[k] / t1, exact[k] ? "yes" : "NO");
    for (double a : alphas) {
      // Expected tokens per step with k - 1 drafts, each accepted with probability a independently.
      const double tokens = (1 - std::pow(a, k)) / (1 - a);
      std::printf(" %.2f |", tokens * t1 / ms[k]);
    }
    std::printf("\n");
  }
  for (uint32_t k = 1; k <= engine::kCheapStepTokens; ++k) {
    if (!differ[k].empty()) std::printf("k = %u: argmax differs at position(s)%s\n", k, differ[k].c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Speculative decoding: acceptance on agent transcripts, and the cost of verifying k tokens"};
  std::string model, draft, heldout, docs_json;
  uint32_t conversations = 6, turns = 2, max_tokens = 96, depth = 1024, max_draft = engine::kDefaultMaxDraft;
  int reps = 5;
  bool cost = false;
  uint32_t tf_draft = 0;
  std::string methods = "off,lookup,draft,auto";
  app.add_option("--model", model, "Target model (GGUF)")->required();
  app.add_option("--draft", draft, "Draft model (GGUF, same tokenizer)");
  app.add_option("--heldout", heldout, "Token file (tools/train/data/heldout.u32.xz)");
  app.add_option("--docs", docs_json, "JSON {\"docs\": [[ids...]]} (bench/spec/agent_loop.mjs)");
  app.add_option("--conversations", conversations, "Conversations to use")->capture_default_str();
  app.add_option("--turns", turns, "Assistant turns per conversation to generate")->capture_default_str();
  app.add_option("--max-tokens", max_tokens, "Tokens per generated turn")->capture_default_str();
  app.add_option("--methods", methods, "Methods, the first is the reference output")->capture_default_str();
  app.add_option("--max-draft", max_draft, "Drafts per step at most (1..7; default: the engine's)")->capture_default_str();
  app.add_flag("--verify-cost", cost, "Measure the target step time for 1..8 tokens instead");
  app.add_option("--tf-draft", tf_draft, "With --draft: also the draft model teacher-forced over the turns of the first N "
                                         "documents (one pass of the draft over each; ~3 s a document on the dev machine)")
      ->capture_default_str();
  // H200, 8B Q4_K_M at depth 1024 (docs/performance.md, 2026-12-04 17:04): 1, 2, 3, 4 and 8 tokens
  // measured, 5..7 interpolated.
  std::vector<double> step_ms = {3.74, 4.78, 5.45, 6.23, 7.04, 7.85, 8.67, 9.48};
  app.add_option("--step-ms", step_ms, "Teacher-forced speed-up: ms a target step of 1..8 tokens takes (8 values)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--depth", depth, "--verify-cost: context tokens before the measured steps")->capture_default_str();
  app.add_option("--reps", reps, "--verify-cost: repetitions per k (median)")->capture_default_str();
  std::vector<uint32_t> only_k;
  app.add_option("--k", only_k, "--verify-cost: only these k (e.g. --k 4 with TROVE_PROFILE=ops: the op times of "
                                "k-token steps, beside the 8 one-token steps every run makes first)")
      ->delimiter(',')
      ->check(CLI::Range(1u, engine::kCheapStepTokens));
  CLI11_PARSE(app, argc, argv);
  if (cost) {
    verify_cost(model, depth, std::max(1, reps), only_k);
    return 0;
  }
  std::vector<std::string> ms;
  std::stringstream ss(methods);
  for (std::string m; std::getline(ss, m, ',');) {
    if ((m == "draft") && draft.empty()) continue;  // nothing to draft with
    ms.push_back(m);
  }
  if (ms.empty()) die("--methods: nothing to run");
  if (heldout.empty() == docs_json.empty()) die("give one of --heldout FILE or --docs FILE");
  bool last_turn_only = false;
  auto docs = heldout.empty() ? read_json_docs(docs_json, last_turn_only) : read_u32_docs(heldout);
  if (step_ms.size() != engine::kMaxDraftTokens + 1 || !std::all_of(step_ms.begin(), step_ms.end(), [](double v) { return v > 0; })) {
    die(fmt::format("--step-ms: give {} positive values (ms a step of 1..{} tokens)", engine::kMaxDraftTokens + 1,
                    engine::kMaxDraftTokens + 1));
  }
  acceptance(model, draft, docs, last_turn_only, heldout.empty() ? docs_json : heldout, conversations, turns, max_tokens,
             std::clamp<uint32_t>(max_draft, 1, engine::kMaxDraftTokens), ms, step_ms, tf_draft);
  return 0;
}
