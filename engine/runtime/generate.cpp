#include "engine/runtime/generate.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

namespace trove::engine {

size_t stop_holdback(std::string_view s, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const std::string& stop : stops) {
    for (size_t n = std::min(stop.size() - (stop.empty() ? 0 : 1), s.size()); n > best; --n) {
      if (s.substr(s.size() - n) == std::string_view(stop).substr(0, n)) {
        best = n;
        break;
      }
    }
  }
  return best;
}

Result<GenerateResult> generate(Engine& engine, SeqId seq, std::span<const int32_t> prompt,
                                const GenerateOptions& opts,
                                const std::function<bool(std::string_view text)>& on_text) {
  using Clock = std::chrono::steady_clock;
  if (prompt.empty()) return Status::InvalidArgument("generate: the prompt is empty");
  if (prompt.size() >= engine.n_ctx()) {
    return Status::InvalidArgument(fmt::format("the prompt has {} tokens but the context holds {}", prompt.size(),
                                               engine.n_ctx()));
  }
  GenerateResult r;
  r.prompt_tokens = static_cast<uint32_t>(prompt.size());
  // Keep the common prefix already in the sequence, but always re-feed at least the last prompt token
  // (its logits choose the first generated token).
  const auto t0 = Clock::now();
  {
    const auto held = engine.tokens(seq);
    size_t common = 0;
    while (common < held.size() && common + 1 < prompt.size() && held[common] == prompt[common]) ++common;
    TROVE_RETURN_IF_ERROR(engine.truncate(seq, static_cast<uint32_t>(common)));
    r.reused_tokens = static_cast<uint32_t>(common);
  }
  int32_t next = -1;
  const uint32_t chunk = engine.max_batch_tokens();
  for (size_t at = r.reused_tokens; at < prompt.size(); at += chunk) {
    const size_t n = std::min<size_t>(chunk, prompt.size() - at);
    StepInput in;
    in.seq = seq;
    in.tokens = prompt.subspan(at, n);
    in.sample = at + n == prompt.size();
    in.sampling = opts.sampling;
    auto out = engine.step(std::span<const StepInput>(&in, 1));
    if (!out.ok()) return out.status();
    next = (*out)[0].token;
  }
  const auto t1 = Clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  // Special tokens are text here: the chat output parser needs <think>, <tool_call> and the like.
  tokenizer::Detokenizer detok(engine.tokenizer(), /*render_special=*/true);
  std::string pending;  // text not yet emitted (could be the start of a stop string)
  auto emit = [&](std::string_view text) -> bool {
    if (text.empty()) return true;
    r.text.append(text);
    return on_text ? on_text(text) : true;
  };
  r.finish = FinishReason::kLength;
  bool stopped = false;
  Speculator lookup_only(engine, nullptr);
  Speculator& sp = opts.speculator ? *opts.speculator : lookup_only;
  SpecSequence ss;
  std::vector<int32_t> queued;  // accepted drafts and the token after them, not handled yet
  size_t queued_at = 0;
  const bool spec = opts.speculative != SpecMethod::kOff;
  if (spec) {
    ss.history = engine.tokens(seq);
    ss.history.push_back(next);
    sp.start(ss, opts.speculative, opts.sampling);
  }
  struct StopSpec {
    Speculator& sp;
    SpecSequence& ss;
    ~StopSpec() { sp.stop(ss); }
  } stop_spec{sp, ss};
  while (!stopped) {
    if (is_eos(engine.config(), next)) {
      r.finish = FinishReason::kStop;
      break;
    }
    r.tokens.push_back(next);
    ++r.generated_tokens;
    auto piece = detok.push(next);
    if (!piece.ok()) return piece.status();
    pending += *piece;
    for (const std::string& stop : opts.stop) {
      const size_t p = stop.empty() ? std::string::npos : pending.find(stop);
      if (p != std::string::npos) {
        pending.resize(p);
        stopped = true;
      }
    }
    if (stopped) {
      r.finish = FinishReason::kStop;
      break;
    }
    const size_t hold = stop_holdback(pending, opts.stop);
    if (!emit(std::string_view(pending).substr(0, pending.size() - hold))) {
      pending.erase(0, pending.size() - hold);
      r.finish = FinishReason::kCancelled;
      pending.clear();
      break;
    }
    pending.erase(0, pending.size() - hold);
    if (r.generated_tokens >= opts.max_tokens) break;
    if (queued_at < queued.size()) {  // already in the sequence (an accepted draft) or chosen after them
      next = queued[queued_at++];
      continue;
    }
    if (engine.length(seq) + 1 >= engine.n_ctx()) break;
    ++r.decode_steps;
    if (spec) {
      // Drafts that could still be emitted: within max_tokens and the context (the step feeds 1 + k).
      // Also within one step's tokens and head rows (1 + k each).
      ss.cap = std::min<uint32_t>({opts.max_draft, opts.max_tokens - r.generated_tokens - 1,
                                   engine.n_ctx() - engine.length(seq) - 2, engine.max_batch_tokens() - 1,
                                   engine.max_logit_rows() - 1});
      SpecSequence* one = &ss;
      sp.propose(std::span<SpecSequence* const>(&one, 1), kMaxDraftTokens);
      StepInput in;
      sp.fill(ss, seq, in);
      const auto step_t0 = std::chrono::steady_clock::now();
      auto out = engine.step(std::span<const StepInput>(&in, 1));
      if (!out.ok()) return out.status();
      sp.observe_target_step(static_cast<uint32_t>(in.tokens.size()),
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - step_t0).count());
      auto got = sp.accept(ss, seq, (*out)[0], r.spec);
      if (!got.ok()) return got.status();
      queued = std::move(*got);
      next = queued[0];
      queued_at = 1;
      continue;
    }
    StepInput in;
    in.seq = seq;
    in.tokens = std::span<const int32_t>(&r.tokens.back(), 1);
    in.sampling = opts.sampling;
    auto out = engine.step(std::span<const StepInput>(&in, 1));
    if (!out.ok()) return out.status();
    next = (*out)[0].token;
  }
  if (r.finish != FinishReason::kCancelled) {
    pending += detok.flush();
    emit(pending);
  }
  r.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return r;
}

}  // namespace trove::engine
