#include "server/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>

#include <fmt/format.h>

#include "common/log.h"
#include "server/stop_strings.h"

namespace trove::server {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason f) {
  switch (f) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "?";
}

const char* sequence_state_name(SequenceInfo::State s) {
  switch (s) {
    case SequenceInfo::State::kQueued: return "queued";
    case SequenceInfo::State::kRestoring: return "restoring";
    case SequenceInfo::State::kPrefilling: return "prefilling";
    case SequenceInfo::State::kDecoding: return "decoding";
    case SequenceInfo::State::kFinished: return "finished";
  }
  return "?";
}

bool GenerationStream::wait(std::vector<GenerationEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
  while (!events_.empty()) {
    out.push_back(std::move(events_.front()));
    events_.pop_front();
  }
  return true;
}

void GenerationStream::cancel() {
  cancelled_.store(true);
  if (wake_scheduler_) wake_scheduler_();
}

void GenerationStream::push(GenerationEvent ev) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(ev));
  }
  cv_.notify_all();
}

struct Scheduler::Active {
  GenerationRequest request;
  std::shared_ptr<GenerationStream> stream;
  Clock::time_point submitted, admitted, first_token, last_token;
  engine::SeqId seq = 0;
  uint32_t gpu_cached = 0;    // prompt tokens attached from GPU-resident blocks (the rest of cached_tokens came from the store)
  size_t prefilled = 0;       // prompt tokens already in the sequence
  bool decoding = false;      // prompt fully prefilled; `next` is the token to feed
  bool restoring = false;     // the engine is still reading its cached prefix from the KV store
  bool cached_reported = false;  // the kCached event went out
  int32_t next = -1;
  bool done = false;
  std::optional<tokenizer::Detokenizer> detok;
  std::optional<StopStringMatcher> stops;
  GenerationResult result;
  bool speculating = false;   // decodes through the Speculator (spec.history is the sequence + next)
  engine::SpecSequence spec;

  SequenceInfo info() const {
    SequenceInfo i;
    i.label = request.label;
    i.cache_namespace = request.cache_namespace;
    i.state = done ? SequenceInfo::State::kFinished
              : restoring ? SequenceInfo::State::kRestoring
              : decoding ? SequenceInfo::State::kDecoding
                         : SequenceInfo::State::kPrefilling;
    i.finish = result.finish;
    i.prompt_tokens = result.prompt_tokens;
    i.gpu_cached_tokens = gpu_cached;
    i.store_cached_tokens = result.cached_tokens > gpu_cached ? result.cached_tokens - gpu_cached : 0;
    i.prefilled_tokens = static_cast<uint32_t>(prefilled);
    i.generated_tokens = result.generated_tokens;
    i.submitted = submitted;
    i.admitted = admitted;
    i.first_token = first_token;
    return i;
  }
};

Scheduler::Scheduler(engine::Engine& engine, SchedulerObserver observer, SchedulerOptions options)
    : engine_(engine), observer_(std::move(observer)), options_(options), speculator_(engine, options.draft) {
  stats_.pool = engine_.pool_stats();
  stats_.cache = engine_.cache_stats();  // before the thread starts: safe on this thread
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<GenerationStream> Scheduler::submit(GenerationRequest request) {
  return try_submit(std::move(request), SIZE_MAX);
}

std::shared_ptr<GenerationStream> Scheduler::try_submit(GenerationRequest request, size_t max_queued) {
  auto stream = std::make_shared<GenerationStream>();
  stream->wake_scheduler_ = [this] { cv_.notify_all(); };
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= max_queued) return nullptr;
    queue_.push_back({std::move(request), stream, Clock::now()});
    stats_.queued = static_cast<uint32_t>(queue_.size());
  }
  cv_.notify_all();
  return stream;
}

void Scheduler::cancel_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& q : queue_) q.stream->cancelled_.store(true);
    cancel_all_.store(true);
  }
  cv_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::vector<SequenceInfo> Scheduler::sequences() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SequenceInfo> out;
  out.reserve(queue_.size() + running_.size() + recent_.size());
  for (const auto& q : queue_) {
    SequenceInfo i;
    i.label = q.request.label;
    i.cache_namespace = q.request.cache_namespace;
    i.prompt_tokens = static_cast<uint32_t>(q.request.prompt.size());
    i.submitted = q.submitted;
    out.push_back(std::move(i));
  }
  out.insert(out.end(), running_.begin(), running_.end());
  out.insert(out.end(), recent_.begin(), recent_.end());
  return out;
}

void Scheduler::publish_locked(const std::vector<std::unique_ptr<Active>>& active) {
  stats_.active = static_cast<uint32_t>(active.size());
  stats_.pool = engine_.pool_stats();
  stats_.cache = engine_.cache_stats();
  stats_.draft_model = speculator_.has_draft();
  stats_.draft_costs = speculator_.draft_costs();
  stats_.auto_draft_tokens = speculator_.auto_draft_length(options_.max_draft);
  running_.clear();
  for (const auto& a : active) {
    if (!a->done) running_.push_back(a->info());
  }
  for (auto& f : just_finished_) recent_.push_front(std::move(f));
  just_finished_.clear();
  while (recent_.size() > kRecentFinished) recent_.pop_back();
}

// Called with mu_ held (open_sequence is the engine's; only this thread calls it).
void Scheduler::admit(std::vector<std::unique_ptr<Active>>& active) {
  // Drop cancelled requests wherever they are in the queue (they may wait behind full slots).
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (it->stream->cancelled()) {
      GenerationEvent ev;
      ev.kind = GenerationEvent::Kind::kDone;
      ev.result.prompt_tokens = static_cast<uint32_t>(it->request.prompt.size());
      ev.result.finish = FinishReason::kCancelled;
      it->stream->push(std::move(ev));
      ++stats_.cancelled;
      SequenceInfo gone;
      gone.label = it->request.label;
      gone.cache_namespace = it->request.cache_namespace;
      gone.state = SequenceInfo::State::kFinished;
      gone.finish = FinishReason::kCancelled;
      gone.prompt_tokens = static_cast<uint32_t>(it->request.prompt.size());
      gone.submitted = it->submitted;
      gone.ended = Clock::now();
      just_finished_.push_back(std::move(gone));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  // KV blocks the admitted prompts will still claim while they prefill: a new prompt is admitted only
  // when the pool can hold it on top of those, so concurrent long prompts queue instead of failing a
  // step with "pool full" halfway through their prefill.
  const engine::PoolStats pool = engine_.pool_stats();
  const uint32_t bt = pool.block_tokens;
  auto blocks_for = [bt](size_t tokens) -> uint64_t { return bt ? (tokens + bt - 1) / bt : 0; };
  uint64_t outstanding = 0;
  for (const auto& a : active) {
    if (!a->decoding) outstanding += blocks_for(a->request.prompt.size() + 1) - blocks_for(a->prefilled);
  }
  auto take_front = [&] {
    auto a = std::make_unique<Active>();
    Queued& q = queue_.front();
    a->request = std::move(q.request);
    a->stream = std::move(q.stream);
    a->submitted = q.submitted;
    a->admitted = Clock::now();
    a->result.prompt_tokens = static_cast<uint32_t>(a->request.prompt.size());
    a->result.queue_seconds = std::chrono::duration<double>(Clock::now() - q.submitted).count();
    queue_.pop_front();
    return a;
  };
  auto reject_front = [&](const std::string& why) {
    auto a = take_front();
    finish(*a, FinishReason::kError, why);
    ++stats_.completed;
  };
  // True when an admitted request is still prefilling a whole block or more that `r`'s prompt shares
  // with it (same namespace, both caching): `r` then waits, and attaches those blocks once they are
  // registered instead of computing them a second time (agents start sub-sessions with the same
  // system prompt at once).
  auto shares_prefix_in_flight = [&](const GenerationRequest& r) {
    if (!r.use_cache || bt == 0) return false;
    for (const auto& a : active) {
      if (a->decoding || !a->request.use_cache || a->request.cache_namespace != r.cache_namespace) continue;
      const auto& p = a->request.prompt;
      const size_t n = std::min(p.size(), r.prompt.size() - 1);
      const size_t common = static_cast<size_t>(std::mismatch(p.begin(), p.begin() + static_cast<ptrdiff_t>(n),
                                                              r.prompt.begin()).first - p.begin());
      const size_t shared = common / bt * bt;
      if (shared > 0 && a->prefilled < shared) return true;
    }
    return false;
  };
  while (!queue_.empty() && active.size() < engine_.max_sequences()) {
    const GenerationRequest& r = queue_.front().request;
    if (r.prompt.empty()) {
      reject_front("the prompt is empty");
      continue;
    }
    if (r.prompt.size() >= engine_.n_ctx()) {
      reject_front(fmt::format("the prompt has {} tokens but the context holds {} tokens", r.prompt.size(),
                               engine_.n_ctx()));
      continue;
    }
    if (shares_prefix_in_flight(r)) break;  // FIFO: the requests behind it wait too (briefly)
    if (bt) {
      const uint64_t need = blocks_for(r.prompt.size() + 1);
      const uint64_t free_blocks = pool.total_blocks - std::min(pool.used_blocks, pool.total_blocks);
      if (need > pool.total_blocks) {
        reject_front(fmt::format("the prompt has {} tokens but the KV pool holds {} tokens", r.prompt.size(),
                                 uint64_t{pool.total_blocks} * bt));
        continue;
      }
      if (need + outstanding > free_blocks) break;  // wait for running sequences to free blocks
      outstanding += need;
    }
    auto seq = engine_.open_sequence();
    if (!seq.ok()) break;  // every slot busy after all: keep it queued
    auto a = take_front();
    a->seq = *seq;
    if (a->request.use_cache) {
      const std::span<const int32_t> p(a->request.prompt);
      // The GPU-resident part now; a part in the KV store is read while other sequences step.
      auto got = engine_.begin_attach(a->seq, p.first(p.size() - 1), a->request.cache_namespace);
      if (got.ok()) {
        a->prefilled = *got;
        a->result.cached_tokens = *got;
        a->gpu_cached = *got;
        a->restoring = engine_.restoring(a->seq);
      } else {
        log::warn("scheduler", "prefix cache not used for this request: {}", got.status().ToString());
      }
    }
    // render_special: <think>, <tool_call> and friends are added tokens, and the output parser needs
    // them as text (EOS ids never reach the detokenizer).
    a->detok.emplace(engine_.tokenizer(), /*render_special=*/true);
    a->stops.emplace(a->request.stop);
    if (!a->restoring) report_cached(*a);
    active.push_back(std::move(a));
  }
}

void Scheduler::report_cached(Active& a) {
  if (a.cached_reported) return;
  a.cached_reported = true;
  GenerationEvent ev;
  ev.kind = GenerationEvent::Kind::kCached;
  ev.result = a.result;
  a.stream->push(std::move(ev));
}

void Scheduler::finish(Active& a, FinishReason reason, std::string error) {
  if (a.done) return;
  a.done = true;
  if (reason != FinishReason::kCancelled && reason != FinishReason::kError && a.detok && a.stops &&
      !a.stops->stopped()) {
    auto tail = a.stops->feed(a.detok->flush());
    std::string text = std::move(tail.text);
    if (tail.stopped) a.result.stop_sequence = a.stops->matched();
    else text += a.stops->finish();
    if (!text.empty()) a.stream->push({GenerationEvent::Kind::kText, std::move(text), {}});
  }
  a.result.finish = reason;
  a.result.error = std::move(error);
  a.result.total_seconds = std::chrono::duration<double>(Clock::now() - a.submitted).count();
  GenerationEvent ev;
  ev.kind = GenerationEvent::Kind::kDone;
  ev.result = a.result;
  // The blocks this request completed are in the store's write queue before its end is sent
  // (docs/reliability.md, "acknowledged durable"): the write-behind worker queues them after the
  // steps, so the end waits for the worker to reach today's hand-over count (send_ready_ends).
  const engine::Engine::StoreWriteProgress p = engine_.store_write_progress();
  if (p.done >= p.handed) {
    a.stream->push(std::move(ev));
  } else {
    pending_ends_.push_back({a.stream, std::move(ev), p.handed});
  }
  SequenceInfo info = a.info();
  info.ended = Clock::now();
  just_finished_.push_back(std::move(info));
}

bool Scheduler::ends_ready() const {
  if (pending_ends_.empty()) return false;
  return engine_.store_write_progress().done >= pending_ends_.front().ticket;  // tickets never decrease
}

void Scheduler::send_ready_ends(bool wait) {
  if (pending_ends_.empty()) return;
  if (wait) engine_.wait_for_store_writes();
  const uint64_t done = engine_.store_write_progress().done;
  size_t n = 0;
  while (n < pending_ends_.size() && pending_ends_[n].ticket <= done) {
    pending_ends_[n].stream->push(std::move(pending_ends_[n].done));
    ++n;
  }
  pending_ends_.erase(pending_ends_.begin(), pending_ends_.begin() + static_cast<std::ptrdiff_t>(n));
}

void Scheduler::on_token(Active& a, int32_t token) {
  const auto now = Clock::now();
  if (a.request.force_output) {
    if (a.result.generated_tokens >= a.request.forced_tokens.size()) return finish(a, FinishReason::kStop);
    token = a.request.forced_tokens[a.result.generated_tokens];
  } else if (engine::is_eos(engine_.config(), token)) {
    return finish(a, FinishReason::kStop);
  }
  if (a.result.generated_tokens == 0) {
    a.first_token = now;
    a.result.ttft_seconds = std::chrono::duration<double>(now - a.submitted).count();
    if (observer_.time_to_first_token) observer_.time_to_first_token(a.result.ttft_seconds);
    a.stream->decoding_.store(true);
  } else if (observer_.inter_token) {
    observer_.inter_token(std::chrono::duration<double>(now - a.last_token).count());
  }
  a.last_token = now;
  ++a.result.generated_tokens;
  auto piece = a.detok->push(token);
  if (!piece.ok()) return finish(a, FinishReason::kError, piece.status().message());
  auto released = a.stops->feed(*piece);
  if (!released.text.empty()) a.stream->push({GenerationEvent::Kind::kText, std::move(released.text), {}});
  if (released.stopped) {
    a.result.stop_sequence = a.stops->matched();
    return finish(a, FinishReason::kStop);
  }
  if (a.result.generated_tokens >= a.request.max_tokens) return finish(a, FinishReason::kLength);
  // The token just chosen still has to be fed; it needs one more position in the context.
  if (engine_.length(a.seq) + 1 >= engine_.n_ctx()) {
    a.result.context_end = true;
    return finish(a, FinishReason::kLength);
  }
  a.decoding = true;
  a.next = token;
}

void Scheduler::loop() {
  std::vector<std::unique_ptr<Active>> active;
  while (true) {
    send_ready_ends(/*wait=*/false);
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Idle: the store counters go on moving while the write-behind worker queues the last steps'
      // blocks, and ends held for it are sent once it has (polled every 2 ms while there are any).
      while (!cv_.wait_for(lock, std::chrono::milliseconds(pending_ends_.empty() ? 250 : 2),
                           [&] { return stopping_ || !active.empty() || !queue_.empty() || ends_ready(); })) {
        stats_.cache = engine_.cache_stats();
      }
      if (stopping_) break;
      admit(active);
      stats_.queued = static_cast<uint32_t>(queue_.size());
    }
    // Cancelled requests leave before the next step: their KV blocks go back to the pool now.
    if (cancel_all_.exchange(false)) {
      for (auto& a : active) a->stream->cancelled_.store(true);
    }
    for (auto& a : active) {
      if (!a->done && a->stream->cancelled()) {
        finish(*a, FinishReason::kCancelled);
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.cancelled;
      }
    }
    auto retire = [&] {
      for (auto& a : active) {
        if (!a->done) continue;
        engine_.close_sequence(a->seq);
        speculator_.stop(a->spec);
      }
      active.erase(std::remove_if(active.begin(), active.end(), [](const auto& a) { return a->done; }),
                   active.end());
    };
    retire();
    {
      std::lock_guard<std::mutex> lock(mu_);
      publish_locked(active);
    }

    // Restores from the KV store that finished since the last step: those prompts go on from there.
    engine_.pump_restores(/*wait=*/false);
    bool any_restoring = false;
    for (auto& a : active) {
      if (a->restoring && !engine_.restoring(a->seq)) {
        a->restoring = false;
        a->prefilled = engine_.length(a->seq);
        a->result.cached_tokens = static_cast<uint32_t>(a->prefilled);
        report_cached(*a);
      }
      any_restoring |= a->restoring;
    }

    // One batch: every decoding sequence's next token, then prefill chunks in admission order.
    std::vector<engine::StepInput> inputs;
    std::vector<Active*> owners;
    std::vector<size_t> chunk_sizes;
    uint32_t budget = engine_.max_batch_tokens();
    // Speculation first: which decoding sequences draft, and how many drafts the step can take.
    std::vector<engine::SpecSequence*> speculating;
    uint32_t n_decoding = 0, n_prefilling = 0;
    for (auto& a : active) {
      if (a->done || a->restoring) continue;
      if (!a->decoding) {
        ++n_prefilling;
        continue;
      }
      ++n_decoding;
      const engine::SpecMethod m = a->request.speculative.value_or(options_.speculative);
      if (m == engine::SpecMethod::kOff || a->request.force_output) continue;
      if (!a->speculating) {
        a->speculating = true;
        a->spec.history = a->request.prompt;
        a->spec.history.push_back(a->next);
        speculator_.start(a->spec, m, a->request.sampling, a->request.use_cache ? a->request.cache_namespace : "");
      }
      // Drafts that could still be emitted: within max_tokens and the context (the step feeds 1 + k).
      const uint32_t len = engine_.length(a->seq);
      a->spec.cap = std::min<uint32_t>({options_.max_draft,
                                        a->request.max_tokens - std::min(a->request.max_tokens, a->result.generated_tokens + 1),
                                        engine_.n_ctx() - std::min(engine_.n_ctx(), len + 2)});
      speculating.push_back(&a->spec);
    }
    if (n_decoding > 0) {
      // Decoding streams wait for the whole step: prefill beside them in smaller steps.
      budget = std::min(budget, std::max(options_.step_tokens_while_decoding, n_decoding));
    }
    if (!speculating.empty()) {
      // Decode-only steps stay within kCheapStepTokens; a step that prefills anyway takes up to 16 drafts.
      // Either way the head rows (1 + drafts per decoding sequence, 1 per prompt ending) must fit.
      uint32_t spec_budget = n_prefilling > 0 ? 16u
                             : n_decoding < engine::kCheapStepTokens ? engine::kCheapStepTokens - n_decoding
                                                                      : 0u;
      const uint32_t rows_used = n_decoding + n_prefilling;
      spec_budget = std::min(spec_budget, engine_.max_logit_rows() > rows_used ? engine_.max_logit_rows() - rows_used : 0u);
      spec_budget = std::min(spec_budget, budget > n_decoding ? budget - n_decoding : 0u);
      if (spec_pool_full_) spec_budget = 0;  // the last step ran out of KV blocks: decode plainly once
      spec_pool_full_ = false;
      speculator_.propose(speculating, spec_budget);
    }
    for (auto& a : active) {
      if (!a->decoding || a->done || budget == 0) continue;
      engine::StepInput in;
      if (a->speculating) {
        speculator_.fill(a->spec, a->seq, in);
        if (in.tokens.size() > budget) continue;  // cannot happen: the budget above keeps room
      } else {
        in.seq = a->seq;
        in.tokens = std::span<const int32_t>(&a->next, 1);
        // A forced reply (test hook) ignores the sampled token: no head, no sampling for it.
        in.sample = !a->request.force_output;
        in.sampling = a->request.sampling;
      }
      inputs.push_back(in);
      owners.push_back(a.get());
      chunk_sizes.push_back(in.tokens.size());
      budget -= static_cast<uint32_t>(in.tokens.size());
    }
    // Prefill: the budget left is shared fairly among the prompts still prefilling (water-filling:
    // the smallest needs are met first, each at most an equal share of what is left; what integer
    // division leaves over goes to the oldest). A short prompt is not starved behind a long one.
    std::vector<Active*> prefilling;
    for (auto& a : active) {
      if (!a->decoding && !a->restoring && !a->done) prefilling.push_back(a.get());
    }
    std::vector<size_t> share(prefilling.size(), 0);
    {
      std::vector<size_t> order(prefilling.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      auto need = [&](size_t i) { return prefilling[i]->request.prompt.size() - prefilling[i]->prefilled; };
      std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return need(x) < need(y); });
      size_t left = budget;
      for (size_t k = 0; k < order.size(); ++k) {
        const size_t fair = left / (order.size() - k);
        share[order[k]] = std::min(need(order[k]), fair);
        left -= share[order[k]];
      }
      for (size_t i = 0; i < prefilling.size() && left > 0; ++i) {  // admission order = oldest first
        const size_t more = std::min(left, need(i) - share[i]);
        share[i] += more;
        left -= more;
      }
    }
    for (size_t i = 0; i < prefilling.size(); ++i) {
      Active* a = prefilling[i];
      const size_t n = share[i];
      if (n == 0) continue;
      engine::StepInput in;
      in.seq = a->seq;
      in.tokens = std::span<const int32_t>(a->request.prompt).subspan(a->prefilled, n);
      in.sample = a->prefilled + n == a->request.prompt.size() && !a->request.force_output;
      in.sampling = a->request.sampling;
      inputs.push_back(in);
      owners.push_back(a);
      chunk_sizes.push_back(n);
      budget -= static_cast<uint32_t>(n);
    }
    if (inputs.empty()) {
      if (any_restoring) engine_.pump_restores(/*wait=*/true);  // nothing else to run: wait for the reads
      continue;
    }
    const auto step_t0 = std::chrono::steady_clock::now();
    auto out = engine_.step(inputs);
    if (out.ok() && std::all_of(owners.begin(), owners.end(), [](const Active* a) { return a->decoding; })) {
      // A decode-only step: its time by its tokens is what auto speculation weighs draft-model rounds against.
      uint32_t tokens = 0;
      for (const auto& in : inputs) tokens += static_cast<uint32_t>(in.tokens.size());
      speculator_.observe_target_step(tokens, std::chrono::duration<double>(std::chrono::steady_clock::now() - step_t0).count());
    }
    uint64_t prefill_tokens = 0, decode_tokens = 0, generated_tokens = 0;
    engine::SpecStats spec_round;
    uint32_t drafts_in_step = 0;
    for (Active* a : owners) drafts_in_step += a->decoding && a->speculating ? a->spec.drafts() : 0;
    if (!out.ok() && out.status().code() == StatusCode::kResourceExhausted && drafts_in_step > 0) {
      // The drafts' KV did not fit: the engine left every sequence as it was; the next step runs
      // without drafts before anyone is ended for it.
      spec_pool_full_ = true;
    } else if (!out.ok() && out.status().code() == StatusCode::kResourceExhausted) {
      // The pool filled up while sequences grew. The engine left every sequence as it was: end the
      // youngest one (freeing its blocks) and let the others retry in the next step.
      Active* youngest = owners.back();
      for (Active* a : owners) {
        if (a->submitted > youngest->submitted) youngest = a;
      }
      log::warn("scheduler", "KV pool full: ending the most recent request to let the others go on");
      finish(*youngest, FinishReason::kError,
             "the GPU KV pool is full (too many long sequences at once); retry the request, or run fewer at once");
    } else if (!out.ok()) {
      // The engine left every sequence as it was; the requests in this batch cannot go on.
      log::error("scheduler", "step failed: {}", out.status().message());
      for (Active* a : owners) finish(*a, FinishReason::kError, "the engine failed: " + out.status().message());
    } else {
      for (size_t i = 0; i < owners.size(); ++i) {
        Active& a = *owners[i];
        const uint32_t generated_before = a.result.generated_tokens;
        if (a.decoding && a.speculating) {
          engine::SpecStats round;
          auto emitted = speculator_.accept(a.spec, a.seq, (*out)[i], round);
          decode_tokens += 1 + round.lookup.accepted + round.draft.accepted;  // fed and kept
          spec_round.lookup.drafted += round.lookup.drafted;
          spec_round.lookup.accepted += round.lookup.accepted;
          spec_round.lookup.steps += round.lookup.steps;
          spec_round.draft.drafted += round.draft.drafted;
          spec_round.draft.accepted += round.draft.accepted;
          spec_round.draft.steps += round.draft.steps;
          if (!emitted.ok()) {
            finish(a, FinishReason::kError, "speculative decoding failed: " + emitted.status().message());
          } else {
            for (int32_t t : *emitted) {
              if (a.done) break;
              on_token(a, t);
            }
          }
        } else if (a.decoding) {
          ++decode_tokens;
          on_token(a, (*out)[i].token);
        } else {
          prefill_tokens += chunk_sizes[i];
          a.prefilled += chunk_sizes[i];
          if (a.prefilled == a.request.prompt.size()) on_token(a, (*out)[i].token);
        }
        generated_tokens += a.result.generated_tokens - generated_before;
      }
    }
    uint64_t newly_done = 0;
    for (auto& a : active) newly_done += a->done ? 1 : 0;
    retire();
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.steps;
      stats_.completed += newly_done;
      stats_.prefill_tokens += prefill_tokens;
      stats_.decode_tokens += decode_tokens;
      stats_.generated_tokens += generated_tokens;
      for (auto [to, from] : {std::pair{&stats_.spec.lookup, &spec_round.lookup}, std::pair{&stats_.spec.draft, &spec_round.draft}}) {
        to->drafted += from->drafted;
        to->accepted += from->accepted;
        to->steps += from->steps;
      }
      publish_locked(active);
    }
  }
  for (auto& a : active) {
    finish(*a, FinishReason::kCancelled);
    engine_.close_sequence(a->seq);
    speculator_.stop(a->spec);
  }
  send_ready_ends(/*wait=*/true);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& q : queue_) {
    GenerationEvent ev;
    ev.kind = GenerationEvent::Kind::kDone;
    ev.result.finish = FinishReason::kCancelled;
    q.stream->push(std::move(ev));
  }
  queue_.clear();
}

}  // namespace trove::server
