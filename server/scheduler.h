// server/scheduler.h — continuous batching over one Engine: the only thread that drives the engine.
//
// Contract:
//  - Scheduler owns a thread that owns the Engine's mutable side (open/close sequences, step()). Other
//    threads only call submit(), stats(), sequences() and GenerationStream methods; the engine's const accessors
//    (tokenizer, renderer, config) stay usable from any thread.
//  - submit() queues a request and returns its GenerationStream at once (try_submit() refuses it when
//    the queue is at a bound: the server answers 503). Requests are admitted in
//    arrival order while a sequence slot is free (engine.max_sequences()) and the KV pool has room for
//    the prompt beside what admitted prompts still have to prefill; the rest wait in the queue. A
//    prompt larger than the whole pool ends with kError naming both sizes.
//  - If a step fails because the pool filled up while sequences decoded, the most recently admitted
//    sequence of the batch ends with kError (its KV freed) and the others retry in the next step; any
//    other step failure ends every request of that batch with kError.
//  - Each loop iteration builds ONE Engine::step() batch: one decode token for every decoding sequence,
//    then prefill chunks of the admitted prompts with whatever is left of engine.max_batch_tokens().
//    That prefill budget is shared fairly: every prompt still prefilling gets an equal share, a prompt
//    that needs less than its share takes only what it needs and the rest goes to the others (oldest
//    first). A short request that arrives during another's long prefill (opencode's title request
//    beside its main one) therefore starts generating after a few steps instead of waiting for the
//    whole long prefill; long prompts are prefilled in chunks between other sequences' decode steps.
//  - Stop conditions, checked on every generated token: an EOS id of the model (not emitted), a stop
//    string (not emitted; text that could start one is held back), max_tokens (finish kLength), the
//    context end (kLength with result.context_end). Text reaches the stream UTF-8 complete (Detokenizer).
//  - Once a request's prefix-cache result is settled (after admission, and after its store restore if
//    it has one) its stream gets one kCached event with result.cached_tokens, before any text: the
//    dialects that report cached tokens at the start of a reply (Anthropic's message_start) wait for it.
//  - GenerationStream::cancel() (the HTTP layer calls it when the client has gone) makes the next loop
//    iteration close the sequence and free its KV blocks: a cancelled request never takes part in a
//    step after the one running when cancel() was called. A queued request that is cancelled is dropped.
//  - Prefix cache: on admission a request with use_cache attaches the longest cached prefix of its
//    prompt (whole KV blocks, never the prompt's last token, whose logits choose the first output
//    token); only the rest is prefilled and result.cached_tokens says how many were attached. A request
//    whose prompt shares whole blocks with one still being prefilled (same namespace) waits in the
//    queue until those blocks are done and then attaches them: a prefix is computed once even when
//    several requests bring it at the same moment. A prefix found in the KV store (not on the GPU) is
//    read in the background (Engine::begin_attach / pump_restores): the other sequences keep stepping
//    and the request's prefill starts when its blocks are in the pool.
//  - Every stream ends with exactly one kDone event carrying a GenerationResult (token counts,
//    finish reason, an error message for kError).
//  - Speculative decoding (engine/runtime/speculative.h, docs/speculative.md): a decoding request whose
//    method (GenerationRequest::speculative, else SchedulerOptions::speculative) is not off feeds, in its
//    decode input, the next token and up to kMaxDraftTokens drafts (prompt lookup or the draft model),
//    verified in the same step; every accepted token then goes through the stop conditions one by one,
//    exactly as if decoded alone. Drafts share a budget per step: while only decode inputs run, the step
//    stays within kCheapStepTokens (8: the fused matvec path, whose cost hardly grows with the columns),
//    so drafts stop once 8 sequences decode; a step that also prefills takes up to 16 more tokens.
//    Force-output requests never speculate.
//  - Test hook: a request with `forced_tokens` has each sampled token replaced by the next forced one
//    (the forced token is what the sequence holds); after the last forced token generation stops as if
//    EOS had been sampled. The HTTP layer only fills it when the server runs with --test-force-output.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/runtime/speculative.h"

namespace trove::server {

// Who sent a request, for the dashboard's sequence table (GET /v1/trove/status); nothing else reads it.
struct RequestLabel {
  std::string id;          // the response id the client sees (chatcmpl-…, msg_…, resp_…)
  std::string dialect;     // "chat.completions", "messages" or "responses"
  std::string user_agent;  // the client's User-Agent header
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  uint32_t max_tokens = 256;
  engine::Sampling sampling;
  std::vector<std::string> stop;
  bool force_output = false;           // test hook enabled for this request
  std::vector<int32_t> forced_tokens;  // with force_output: the tokens generated, then stop
  // Prefix cache: when use_cache, the prompt's longest cached prefix under cache_namespace is attached
  // before prefill (Engine::attach_prefix) and the blocks this request completes are cached for later
  // requests. use_cache = false (the opt-out) neither reads nor adds cached blocks.
  bool use_cache = true;
  std::string cache_namespace;
  RequestLabel label;
  // Speculative decoding for this request (the x-trove-speculative header); nullopt: the scheduler's.
  std::optional<engine::SpecMethod> speculative;
};

enum class FinishReason { kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason f);

struct GenerationResult {
  uint32_t prompt_tokens = 0;
  // Prompt tokens taken from the prefix cache (GPU-resident blocks) instead of prefilled: exactly the
  // tokens Engine::attach_prefix() attached (from GPU-resident blocks or restored from the KV store).
  uint32_t cached_tokens = 0;
  uint32_t generated_tokens = 0;
  FinishReason finish = FinishReason::kStop;
  bool context_end = false;    // kLength because the context window is full, not max_tokens
  std::string stop_sequence;   // the request's stop string that ended generation (empty otherwise)
  std::string error;           // for kError
  double queue_seconds = 0;    // submit → admitted
  double ttft_seconds = 0;     // submit → first generated token
  double total_seconds = 0;    // submit → done
};

struct GenerationEvent {
  enum class Kind { kText, kCached, kDone };
  Kind kind = Kind::kText;
  std::string text;
  GenerationResult result;  // kDone; kCached: prompt_tokens and cached_tokens
};

// The per-request channel between the scheduler thread (producer) and one HTTP handler (consumer).
class GenerationStream {
 public:
  // Waits until at least one event is queued or `timeout` passes; moves the queued events into `out`
  // (appending). Returns false on timeout with nothing new.
  bool wait(std::vector<GenerationEvent>& out, std::chrono::milliseconds timeout);
  // Asks the scheduler to stop this request and free its sequence.
  void cancel();
  bool cancelled() const { return cancelled_.load(); }
  // True once the first generated token was delivered (prefill is over).
  bool decoding() const { return decoding_.load(); }

 private:
  friend class Scheduler;
  void push(GenerationEvent ev);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> events_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> decoding_{false};
  std::function<void()> wake_scheduler_;
};

// One request as the dashboard shows it (Scheduler::sequences()): queued, running, or finished lately.
struct SequenceInfo {
  enum class State { kQueued, kRestoring, kPrefilling, kDecoding, kFinished };
  using TimePoint = std::chrono::steady_clock::time_point;
  RequestLabel label;
  std::string cache_namespace;
  State state = State::kQueued;
  FinishReason finish = FinishReason::kStop;  // kFinished only
  uint32_t prompt_tokens = 0;
  uint32_t gpu_cached_tokens = 0;    // attached from GPU-resident blocks
  uint32_t store_cached_tokens = 0;  // restored from the KV store
  uint32_t prefilled_tokens = 0;     // prompt tokens the sequence holds so far (cached + computed)
  uint32_t generated_tokens = 0;
  TimePoint submitted, admitted, first_token, ended;  // a default TimePoint: not yet
};
const char* sequence_state_name(SequenceInfo::State s);

struct SchedulerStats {
  uint32_t queued = 0;
  uint32_t active = 0;
  uint64_t steps = 0;
  uint64_t prefill_tokens = 0;  // prompt tokens computed by steps (not taken from the prefix cache)
  uint64_t decode_tokens = 0;   // generated tokens fed back by decode steps
  uint64_t generated_tokens = 0;  // tokens generated (the first of each request comes from its last prefill step)
  uint64_t cancelled = 0;     // requests ended by cancel()
  uint64_t completed = 0;     // requests ended any other way
  engine::PoolStats pool;     // snapshot after the last step
  engine::CacheStats cache;   // prefix cache counters (GPU and store tiers), same moment
  engine::SpecStats spec;     // speculative decoding: drafted / accepted tokens by method
  bool draft_model = false;        // the scheduler has a draft model (SchedulerOptions::draft)
  engine::DraftCosts draft_costs;  // what auto weighs draft-model rounds by (Speculator::draft_costs)
  int32_t auto_draft_tokens = -1;  // Speculator::auto_draft_length(max_draft): -1 measuring / no draft model
};

// Latency observations, called on the scheduler thread (the server feeds its metrics with them).
struct SchedulerObserver {
  std::function<void(double seconds)> time_to_first_token;
  std::function<void(double seconds)> inter_token;
};

struct SchedulerOptions {
  engine::SpecMethod speculative = engine::SpecMethod::kOff;  // for requests that do not say
  engine::Engine* draft = nullptr;  // the draft model (same tokenizer), driven by the scheduler's thread
  // Drafts per sequence and step at most (1..engine::kMaxDraftTokens); engine::kDefaultMaxDraft (3)
  // by default — why: engine/runtime/speculative.h.
  uint32_t max_draft = engine::kDefaultMaxDraft;
  // Tokens a step takes at most while some sequence decodes (its tokens included, never fewer than
  // they need): a prompt alone prefills in the engine's largest steps (max_batch_tokens, 2048 by
  // default: the fastest prefill), one that arrives beside decoding streams in steps of this many, so
  // their tokens keep coming (a 2048-token step of the 8B takes ~0.25 s on the H200, 512 ~0.07 s).
  uint32_t step_tokens_while_decoding = 512;
};

class Scheduler {
 public:
  explicit Scheduler(engine::Engine& engine, SchedulerObserver observer = {}, SchedulerOptions options = {});
  ~Scheduler();  // stops the thread; unfinished requests end with kCancelled
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  std::shared_ptr<GenerationStream> submit(GenerationRequest request);
  // Like submit(), but refuses the request (returns nullptr; it never runs) when `max_queued` requests
  // already wait for admission: the bound on the queue behind the running sequences, checked and
  // taken under the scheduler's lock (concurrent callers cannot overshoot it).
  std::shared_ptr<GenerationStream> try_submit(GenerationRequest request, size_t max_queued);
  // Cancels every queued and running request (server shutdown); they end with kCancelled.
  void cancel_all();
  SchedulerStats stats() const;
  // Queued requests (oldest first), then running sequences (admission order, as of the end of the
  // last loop iteration), then the last kRecentFinished finished requests (newest first).
  std::vector<SequenceInfo> sequences() const;
  static constexpr size_t kRecentFinished = 32;
  const engine::Engine& engine() const { return engine_; }

 private:
  struct Active;
  struct Queued {
    GenerationRequest request;
    std::shared_ptr<GenerationStream> stream;
    std::chrono::steady_clock::time_point submitted;
  };
  void loop();
  void admit(std::vector<std::unique_ptr<Active>>& active);
  void on_token(Active& a, int32_t token);
  void report_cached(Active& a);
  void finish(Active& a, FinishReason reason, std::string error = {});
  // Request ends held until the write-behind has queued the blocks of the steps before them
  // (Engine::store_write_progress): the kDone event and the hand-over count it waits for. Scheduler
  // thread only, in finishing order.
  struct PendingEnd {
    std::shared_ptr<GenerationStream> stream;
    GenerationEvent done;
    uint64_t ticket = 0;
  };
  std::vector<PendingEnd> pending_ends_;
  bool ends_ready() const;
  void send_ready_ends(bool wait);
  // With mu_ held: stats_ and the sequence snapshot from the scheduler thread's view.
  void publish_locked(const std::vector<std::unique_ptr<Active>>& active);

  engine::Engine& engine_;
  SchedulerObserver observer_;
  SchedulerOptions options_;
  engine::Speculator speculator_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool stopping_ = false;
  std::atomic<bool> cancel_all_{false};
  SchedulerStats stats_;
  std::vector<SequenceInfo> running_;        // guarded by mu_
  std::deque<SequenceInfo> recent_;          // guarded by mu_, newest first
  std::vector<SequenceInfo> just_finished_;  // scheduler thread only; moved to recent_ when published
  bool spec_pool_full_ = false;              // scheduler thread only: the last step's drafts did not fit
  std::thread thread_;
};

}  // namespace trove::server
