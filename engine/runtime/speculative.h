// engine/runtime/speculative.h — speculative decoding: cheap drafts of a sequence's next tokens,
// verified by the target model in ONE step (docs/speculative.md).
//
// Contract:
//  - Two ways to draft. Prompt lookup (SpecMethod::kLookup): the continuation of the longest recent
//    n-gram match (2..8 tokens) of the sequence's own tokens (prompt and generated) — free on the host.
//    Draft model (kDraft): a small model with the same tokenizer, in a second Engine with its own small
//    KV pool; its sequence holds the target sequence's tokens (caught up in chunks, rolled back on
//    rejection). kAuto: lookup when it finds a match of 3+ tokens (or there is no draft model), the
//    draft model otherwise.
//  - Verification: the target step gets [next, d1..dk] (StepInput::provisional = k). Greedy requests
//    (temperature <= 0) take StepInput::all_tokens: the target's argmax after every position comes back
//    from the GPU; d_i is accepted while it equals the argmax before it, and the first argmax that
//    differs (or the one after d_k) is the next token — exactly the tokens non-speculative greedy
//    decoding chooses. Sampled requests take the k+1 logits rows to the host and run standard
//    speculative sampling (accept d_i with min(1, p(d_i)/q(d_i)), else draw from norm(max(0, p-q)); a
//    lookup draft's q is a point mass), which leaves every token distributed as the target's own
//    sampler (temperature, top-k <= 64, top-p, min-p; kernels/ref/sample_ref.h) would draw it.
//  - After accept() the target sequence (and the draft's) holds exactly the accepted tokens: rejected
//    drafts are truncated, which also registers the accepted full blocks in the prefix cache (drafts
//    are never registered before that: StepInput::provisional).
//  - The draft length adapts per sequence and method: +2 after a round that accepted every draft, -1
//    after one that did not (1..kMaxDraftTokens), and never beyond the budget the caller gives.
//  - kAuto uses the draft model only where it pays: once its steps, its acceptance and the target's
//    steps are measured (the caller reports each decode-only target step: observe_target_step), a
//    round drafts best_draft_k() tokens by the draft model — 0, none, when no length beats decoding
//    plainly. kDraft always drafts (the request asked for it).
// Thread-safety: a Speculator is driven by the thread that drives both engines.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/runtime/engine.h"

namespace trove::engine {

enum class SpecMethod : uint8_t { kOff, kLookup, kDraft, kAuto };
const char* spec_method_name(SpecMethod m);
// "off" | "lookup" | "draft" | "auto" (also "0"/"false" for off); nullopt otherwise.
std::optional<SpecMethod> parse_spec_method(std::string_view s);

// What `--speculative` means when not given: auto on a GPU, off on a CPU Vulkan device (lavapipe,
// SwiftShader), where a step's time grows with its tokens, so verifying drafts costs more than it saves
// (docs/speculative.md has the measurements).
SpecMethod default_spec_method(const Engine& target);

// At most this many drafts per sequence and step: with the fed token, 8 = ops::Matvec::kMaxBatch, the
// widest step whose weights are read once for all columns (verifying costs close to one decode step).
constexpr uint32_t kMaxDraftTokens = 7;
constexpr uint32_t kCheapStepTokens = 8;
// Drafts per step that trove run and trove serve allow by default: 3 (adaptive k, capped by it,
// drops on a rejection). On the H200 (2026-12-03 07:07, bench_spec --verify-cost --depth 4096, with the
// decode attention kernel up to 8 tokens and the MoE q8 form; docs/performance.md) a step of k = 4
// tokens costs 1.52x one token on the 8B and 1.62x on the 30B-A3B (k = 2: 1.13x / 1.20x), every k's
// argmax equal to one-token decoding: at 60% acceptance per draft k = 4 is worth as much as k = 2
// (1.44x / 1.35x against 1.41x / 1.34x), at 70-80% more (1.6-1.95x against 1.4-1.6x). Larger k pays
// only at higher acceptance (k = 8: 2.2-2.4x a token).
constexpr uint32_t kDefaultMaxDraft = 3;

// Prompt lookup: the tokens that followed the most recent earlier occurrence of the longest suffix of
// `history` (min_ngram..max_ngram tokens), at most k of them. Empty when nothing matches.
struct LookupDraft {
  uint32_t ngram = 0;             // length of the matched suffix
  std::vector<int32_t> tokens;
};
// The shortest suffix the engine's prompt lookup matches.
constexpr uint32_t kLookupMinNgram = 2;
LookupDraft lookup_draft(std::span<const int32_t> history, uint32_t k, uint32_t min_ngram = kLookupMinNgram,
                         uint32_t max_ngram = 8);

// A sampler's distribution over at most 64 tokens (Sampling::top_k <= 64), probabilities summing to 1.
struct SparseDist {
  std::vector<std::pair<int32_t, double>> p;
  double prob(int32_t token) const;
  int32_t draw(double u) const;  // u uniform in [0, 1)
};
// The distribution ops::Sampler draws from for these logits (temperature > 0): top-k (ties: lower id
// first), softmax at the temperature, min-p relative to the best, top-p — kernels/ref sampling_probs.
SparseDist sampling_dist(std::span<const float> logits, const Sampling& s);

// The outcome of verifying k drafts: drafts[0..accepted) are kept and `next` follows them.
struct Verdict {
  uint32_t accepted = 0;
  int32_t next = -1;
};
// argmax[i] = the target's greedy token after the fed token and drafts[0..i) (k + 1 entries).
Verdict verify_greedy(std::span<const int32_t> drafts, std::span<const int32_t> argmax);
// p: the target's distributions after each position (k + 1); q: the draft's for each draft (k), or
// empty for a point mass on each draft (prompt lookup).
Verdict verify_sampled(std::span<const int32_t> drafts, std::span<const SparseDist> p, std::span<const SparseDist> q,
                       std::mt19937_64& rng);

struct AdaptiveK {
  uint32_t k = 4;
  void update(uint32_t drafted, uint32_t accepted);
};

// What the draft model's rounds cost and yield, measured while decoding (kAuto's guard).
struct DraftCosts {
  double draft_step_s = 0;  // one draft-model step, moving average; 0 = not measured yet
  // [n]: a decode-only target step of n tokens, moving average; 0 = not measured yet.
  std::array<double, kCheapStepTokens + 1> target_step_s{};
  uint64_t drafted = 0, accepted = 0;  // the draft model's drafts the target verified (all sequences)
};
// Draft-model drafts verified before kAuto trusts the measured acceptance (until then it drafts as kDraft).
constexpr uint64_t kAutoLearnDrafts = 16;
// The draft length 0..k_max with the most expected tokens per second of a round: a round of k drafts
// yields 1 + a + a^2 + ... + a^k tokens (a: the acceptance of one draft, each draft kept only after
// the one before it) for k draft steps and one target step of 1 + k tokens. target_step_s[n] is that
// step's time (index 0 unused, 0 = not measured); a width not measured takes the nearest measured
// narrower width's time plus, per token, the mean growth between the narrowest and widest measured
// widths (none with one measured: wider steps taken as free, which favours drafting); one narrower than
// every measured width goes back from the narrowest (never below its per-token share) — speculation
// that always drafts never measures a one-token step. 0 when no width is measured.
uint32_t best_draft_k(double acceptance, double draft_step_s, std::span<const double> target_step_s, uint32_t k_max);

struct SpecCounters {
  uint64_t drafted = 0;   // draft tokens the target verified
  uint64_t accepted = 0;  // ... and accepted
  uint64_t steps = 0;     // target steps that verified at least one draft
};
struct SpecStats {
  SpecCounters lookup, draft;
};

// One target sequence's speculation state (the caller owns it beside its sequence).
struct SpecSequence {
  SpecMethod method = SpecMethod::kOff;
  Sampling sampling;
  // Every token of the sequence: what the target holds, then the next token to feed (last).
  std::vector<int32_t> history;
  uint32_t cap = kMaxDraftTokens;  // the caller's bound for this round (tokens left to generate, context)
  AdaptiveK k_lookup, k_draft;
  std::optional<SeqId> draft_seq;
  std::string draft_namespace;  // prefix-cache namespace in the draft engine ("" = no caching)
  std::mt19937_64 rng;
  // This round (propose → accept):
  SpecMethod used = SpecMethod::kOff;
  std::vector<int32_t> fed;         // {next, d1..dk}: what the verifying step appends
  std::vector<SparseDist> q;        // draft distributions (sampled requests drafted by the draft model)
  uint32_t drafts() const { return fed.empty() ? 0 : static_cast<uint32_t>(fed.size() - 1); }
};

class Speculator {
 public:
  // `draft` may be null (no draft model: kDraft drafts nothing, kAuto is lookup). Both engines must
  // share the tokenizer (same vocabulary size; checked by check_draft_model()).
  Speculator(Engine& target, Engine* draft) : target_(target), draft_(draft) {}
  static Status check_draft_model(const Engine& target, const Engine& draft);
  bool has_draft() const { return draft_ != nullptr; }

  // Starts speculation for a sequence whose history (held tokens + next) the caller filled.
  void start(SpecSequence& s, SpecMethod method, const Sampling& sampling, std::string draft_namespace = {});
  // Frees the draft model's sequence.
  void stop(SpecSequence& s);

  // Drafts for each sequence (s.fed = {next, drafts...}; just {next} when nothing is drafted), at most
  // `budget` drafts in total, shared one at a time in order. Runs the draft model (batched over the
  // sequences that use it). A draft model failure drafts nothing for that sequence (logged).
  void propose(std::span<SpecSequence* const> seqs, uint32_t budget);
  // Fills in the target StepInput that verifies s (tokens point into s.fed: keep s alive).
  void fill(const SpecSequence& s, SeqId target_seq, StepInput& in) const;
  // After the target step: the tokens that come out of this round (the accepted drafts, then the next
  // token); truncates the target sequence (and the draft's) to what was accepted, appends them to
  // s.history (the last one as the new next token) and counts them in `stats`.
  Result<std::vector<int32_t>> accept(SpecSequence& s, SeqId target_seq, const StepOutput& out, SpecStats& stats);

  // The caller's report of a target step that only decoded (no prompt tokens): its tokens (drafts
  // included) and wall seconds. kAuto weighs the draft model's rounds against these.
  void observe_target_step(uint32_t tokens, double seconds);
  const DraftCosts& draft_costs() const { return costs_; }
  // The draft-model drafts kAuto makes a round (at most k_max) at the costs measured so far: 0 = it
  // drafts by prompt lookup only; -1 = no draft model, or still measuring (fewer than
  // kAutoLearnDrafts verified, or no step timed): then it drafts as kDraft.
  int32_t auto_draft_length(uint32_t k_max) const;

 private:
  void run_draft(std::span<SpecSequence* const> seqs, std::span<const uint32_t> want);
  // kAuto: how many of up to k drafts the draft model makes this round (k while costs are unknown).
  uint32_t auto_draft_k(uint32_t k);
  Engine& target_;
  Engine* draft_;
  DraftCosts costs_;
  bool told_unprofitable_ = false;  // logged once that auto stopped using the draft model
};

}  // namespace trove::engine
