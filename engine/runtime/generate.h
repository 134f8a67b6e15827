// engine/runtime/generate.h — one sequence from prompt to stop: what `trove run` and the tests use
// (the server's scheduler interleaves many sequences itself, with the same stop rules).
//
// Contract: generate() makes the sequence hold `prompt` — keeping the longest common prefix of what
// it already holds (so a chat's next turn only prefills what is new) — prefilling in chunks of at most
// engine.max_batch_tokens(), then decodes until an EOS token of the model (not emitted), a stop string
// (not emitted; text is held back while it could still be the start of one), max_tokens, the context
// end, or on_text returning false. on_text receives UTF-8-complete text pieces in order.
// With GenerateOptions::speculative (and a Speculator, for a draft model) each decode step verifies the
// drafted tokens (engine/runtime/speculative.h): greedy output is the same token for token.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/runtime/speculative.h"

namespace trove::engine {

struct GenerateOptions {
  uint32_t max_tokens = 256;
  Sampling sampling;
  std::vector<std::string> stop;
  SpecMethod speculative = SpecMethod::kOff;
  Speculator* speculator = nullptr;  // null: prompt lookup only (kDraft drafts nothing)
  uint32_t max_draft = kDefaultMaxDraft;  // drafts per step at most (1..kMaxDraftTokens)
};

enum class FinishReason { kStop, kLength, kCancelled };

struct GenerateResult {
  uint32_t prompt_tokens = 0;
  uint32_t reused_tokens = 0;   // prompt tokens already in the sequence (not prefilled)
  uint32_t generated_tokens = 0;
  std::vector<int32_t> tokens;  // generated ids (EOS excluded)
  std::string text;             // emitted text (stop string excluded)
  FinishReason finish = FinishReason::kStop;
  double prefill_seconds = 0, decode_seconds = 0;
  uint32_t decode_steps = 0;    // target steps after the prefill (fewer than tokens with speculation)
  SpecStats spec;
};

// Longest n such that s's last n bytes are a proper prefix of one of `stops` (text to hold back).
size_t stop_holdback(std::string_view s, const std::vector<std::string>& stops);

Result<GenerateResult> generate(Engine& engine, SeqId seq, std::span<const int32_t> prompt,
                                const GenerateOptions& opts,
                                const std::function<bool(std::string_view text)>& on_text);

}  // namespace trove::engine
