#include "server/scheduler.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/server/fake_engine.h"

namespace {

using namespace std::chrono_literals;
using trove::server::FinishReason;
using trove::server::GenerationEvent;
using trove::server::GenerationRequest;
using trove::server::GenerationResult;
using trove::server::GenerationStream;
using trove::server::SchedulerOptions;
using trove::server::Scheduler;
using trove::server::testing::FakeEngine;

std::vector<int32_t> encode(const FakeEngine& e, const std::string& text) {
  return e.tokenizer().encode(text, /*parse_special=*/true);
}

struct Collected {
  std::string text;
  GenerationResult result;
  int text_events = 0;
  int cached_events = 0;
  bool cached_before_text = true;  // no text event came before the kCached one
};

Collected collect(GenerationStream& s) {
  Collected c;
  for (int waited = 0; waited < 200; ++waited) {
    std::vector<GenerationEvent> evs;
    s.wait(evs, 50ms);
    for (auto& ev : evs) {
      if (ev.kind == GenerationEvent::Kind::kText) {
        c.text += ev.text;
        ++c.text_events;
        if (c.cached_events == 0) c.cached_before_text = false;
      } else if (ev.kind == GenerationEvent::Kind::kCached) {
        ++c.cached_events;
      } else {
        c.result = ev.result;
        return c;
      }
    }
  }
  ADD_FAILURE() << "the stream never finished";
  return c;
}

GenerationRequest request(const FakeEngine& e, const std::string& prompt, uint32_t max_tokens = 64) {
  GenerationRequest r;
  r.prompt = encode(e, prompt);
  r.max_tokens = max_tokens;
  return r;
}

TEST(Scheduler, GeneratesTheScriptUntilEos) {
  FakeEngine e(2, 64);
  e.script = encode(e, "Hello, world! ünïcode");
  Scheduler s(e);
  auto req = request(e, "Say hello");
  const auto prompt_size = req.prompt.size();
  auto c = collect(*s.submit(std::move(req)));
  EXPECT_EQ(c.text, "Hello, world! ünïcode");
  EXPECT_EQ(c.result.finish, FinishReason::kStop);
  EXPECT_EQ(c.result.prompt_tokens, prompt_size);
  EXPECT_EQ(c.result.cached_tokens, 0u);
  EXPECT_EQ(c.result.generated_tokens, e.script.size());
  EXPECT_GT(c.text_events, 1);  // streamed, not delivered at the end
  for (int i = 0; i < 100 && e.open_count() != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(e.open_count(), 0u);
}

TEST(Scheduler, MaxTokensEndsWithLength) {
  FakeEngine e(2, 64);
  e.script = encode(e, "one two three four five six seven eight");
  Scheduler s(e);
  auto c = collect(*s.submit(request(e, "count", 3)));
  EXPECT_EQ(c.result.finish, FinishReason::kLength);
  EXPECT_EQ(c.result.generated_tokens, 3u);
  EXPECT_EQ(c.text, "one two three");
}

TEST(Scheduler, StopStringIsNotEmittedAndEndsGeneration) {
  FakeEngine e(2, 64);
  e.script = encode(e, "alpha beta STOP gamma delta");
  Scheduler s(e);
  auto r = request(e, "go");
  r.stop = {"STOP"};
  auto c = collect(*s.submit(std::move(r)));
  EXPECT_EQ(c.text, "alpha beta ");
  EXPECT_EQ(c.result.finish, FinishReason::kStop);
  EXPECT_EQ(c.result.stop_sequence, "STOP");
  EXPECT_LT(c.result.generated_tokens, e.script.size());
}

TEST(Scheduler, DecodesSeveralSequencesInOneStepAndChunksLongPrompts) {
  FakeEngine e(4, 16);
  e.script = encode(e, "a b c d e f g h i j");
  e.step_delay = 2ms;
  Scheduler s(e);
  auto s1 = s.submit(request(e, "short one"));
  auto s2 = s.submit(request(e, "short two"));
  std::string long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt += " word" + std::to_string(i);
  auto long_req = request(e, long_prompt);
  ASSERT_GT(long_req.prompt.size(), 40u);
  auto s3 = s.submit(std::move(long_req));
  auto c1 = collect(*s1), c2 = collect(*s2), c3 = collect(*s3);
  EXPECT_EQ(c1.text, "a b c d e f g h i j");
  EXPECT_EQ(c2.text, c1.text);
  EXPECT_EQ(c3.text, c1.text);
  bool multi_decode = false, prefill_with_decode = false;
  for (const auto& st : e.steps()) {
    size_t total = 0, ones = 0;
    bool chunk = false;
    for (auto [seq, n] : st.inputs) {
      total += n;
      ones += n == 1;
      chunk |= n > 1;
    }
    EXPECT_LE(total, 16u);
    multi_decode |= ones >= 2;
    prefill_with_decode |= chunk && ones >= 1;
  }
  EXPECT_TRUE(multi_decode) << "no step decoded two sequences together";
  EXPECT_TRUE(prefill_with_decode) << "the long prompt was never prefilled alongside a decode step";
}

TEST(Scheduler, QueuesWhenEverySlotIsBusy) {
  FakeEngine e(1, 64);
  e.script = encode(e, "x y z");
  e.step_delay = 1ms;
  Scheduler s(e);
  std::vector<std::shared_ptr<GenerationStream>> streams;
  for (int i = 0; i < 3; ++i) streams.push_back(s.submit(request(e, "p" + std::to_string(i))));
  EXPECT_GE(s.stats().queued + s.stats().active, 1u);
  for (auto& st : streams) {
    auto c = collect(*st);
    EXPECT_EQ(c.text, "x y z");
    EXPECT_EQ(c.result.finish, FinishReason::kStop);
    EXPECT_GE(c.result.queue_seconds, 0.0);
  }
  for (const auto& st : e.steps()) EXPECT_EQ(st.inputs.size(), 1u);  // never two sequences at once
}

TEST(Scheduler, CancelFreesTheSlotWithinOneStep) {
  FakeEngine e(1, 64);
  std::vector<int32_t> forever;
  for (int i = 0; i < 2000; ++i) forever.push_back(e.tokenizer().encode(" tick", false)[0]);
  e.script = forever;
  e.step_delay = 5ms;
  Scheduler s(e);
  auto st = s.submit(request(e, "go", 2000));
  auto waiting = s.submit(request(e, "next", 2));  // queued behind the only slot
  // Wait until text flows, then leave.
  std::vector<GenerationEvent> evs;
  while (evs.empty()) st->wait(evs, 50ms);
  const uint64_t at_cancel = e.step_count();
  st->cancel();
  auto c = collect(*st);
  EXPECT_EQ(c.result.finish, FinishReason::kCancelled);
  // The queued request got the freed slot and finished.
  auto c2 = collect(*waiting);
  EXPECT_EQ(c2.result.finish, FinishReason::kLength);
  EXPECT_EQ(c2.result.generated_tokens, 2u);
  // Steps after the cancel: at most one more with the long request (the one in flight), then the
  // second request's prefill and decode only (2 tokens → 2 steps).
  EXPECT_LE(e.step_count() - at_cancel, 1u + 2u);
  EXPECT_EQ(s.stats().cancelled, 1u);
}

TEST(Scheduler, CancelledWhileQueuedIsDropped) {
  FakeEngine e(1, 64);
  e.script = encode(e, "a b c d e f g h");
  e.step_delay = 3ms;
  Scheduler s(e);
  auto first = s.submit(request(e, "one"));
  auto second = s.submit(request(e, "two"));
  second->cancel();
  EXPECT_EQ(collect(*second).result.finish, FinishReason::kCancelled);
  EXPECT_EQ(collect(*first).result.finish, FinishReason::kStop);
}

TEST(Scheduler, ForcedOutputReplacesSampledTokens) {
  FakeEngine e(2, 64);
  e.script = encode(e, "random noise that is not wanted");
  Scheduler s(e);
  auto r = request(e, "call a tool");
  r.force_output = true;
  r.forced_tokens = encode(e, "<tool_call>\n{\"name\": \"f\"}\n</tool_call>");
  auto c = collect(*s.submit(std::move(r)));
  EXPECT_EQ(c.text, "<tool_call>\n{\"name\": \"f\"}\n</tool_call>");
  EXPECT_EQ(c.result.finish, FinishReason::kStop);
}

TEST(Scheduler, PromptLongerThanTheContextIsAnErrorNamingBothNumbers) {
  FakeEngine e(1, 64, /*n_ctx=*/8);
  Scheduler s(e);
  auto c = collect(*s.submit(request(e, "this prompt is certainly longer than eight tokens of context")));
  EXPECT_EQ(c.result.finish, FinishReason::kError);
  EXPECT_NE(c.result.error.find("context holds 8 tokens"), std::string::npos) << c.result.error;
}

TEST(Scheduler, GenerationStopsAtTheContextEnd) {
  FakeEngine e(1, 64, /*n_ctx=*/12);
  e.script = encode(e, "a a a a a a a a a a a a a a a a a a a a");
  Scheduler s(e);
  auto r = request(e, "hi");
  const size_t p = r.prompt.size();
  auto c = collect(*s.submit(std::move(r)));
  EXPECT_EQ(c.result.finish, FinishReason::kLength);
  EXPECT_TRUE(c.result.context_end);
  EXPECT_LE(p + c.result.generated_tokens, 12u);
}

TEST(Scheduler, EachStreamGetsOneCachedEventBeforeItsText) {
  FakeEngine e(2, 64);
  e.script = encode(e, "one two three");
  Scheduler s(e);
  auto c = collect(*s.submit(request(e, "hi")));
  EXPECT_EQ(c.text, "one two three");
  EXPECT_EQ(c.cached_events, 1);
  EXPECT_TRUE(c.cached_before_text);
  EXPECT_FALSE(c.result.context_end);
}

// opencode sends a short title request beside its main one: the short prompt must not wait for the
// whole prefill of the long one. The prefill budget is shared, so its first token comes while the long
// prompt is still being prefilled.
TEST(Scheduler, AShortRequestIsNotStarvedBehindALongPrefill) {
  FakeEngine e(2, 16);
  e.script = encode(e, "ok");
  e.step_delay = 1ms;
  Scheduler s(e);
  std::string long_prompt;
  for (int i = 0; i < 150; ++i) long_prompt += " word" + std::to_string(i);
  auto long_req = request(e, long_prompt, 1);
  const size_t long_tokens = long_req.prompt.size();
  ASSERT_GT(long_tokens, 16u * 20);  // 20+ steps of prefill alone
  auto s_long = s.submit(std::move(long_req));
  while (e.step_count() < 2) std::this_thread::sleep_for(1ms);  // the long prefill is under way
  auto s_short = s.submit(request(e, "title?", 1));
  auto c_short = collect(*s_short);
  auto c_long = collect(*s_long);
  EXPECT_EQ(c_short.result.finish, FinishReason::kLength);
  EXPECT_EQ(c_long.result.finish, FinishReason::kLength);
  // Steps until the short request was done vs the long prompt's last prefill chunk.
  const auto steps = e.steps();
  size_t short_last = 0, long_prefill_last = 0, long_prefilled = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    for (auto [seq, n] : steps[i].inputs) {
      if (seq == 1) short_last = i;
      if (seq == 0 && long_prefilled < long_tokens) {
        long_prefilled += n;
        long_prefill_last = i;
      }
    }
  }
  EXPECT_LT(short_last, long_prefill_last) << "the short request waited for the whole long prefill";
  EXPECT_LE(short_last, 6u);
  for (const auto& st : steps) {
    size_t total = 0;
    for (auto [seq, n] : st.inputs) total += n;
    EXPECT_LE(total, 16u);
  }
}

TEST(Scheduler, PromptsWaitForKvPoolRoomInsteadOfFailingTheStep) {
  FakeEngine e(4, 16);
  e.total_blocks = 5;  // 80 tokens: one ~40-token prompt fits with room to decode, two do not
  e.script = encode(e, "ok then");
  e.step_delay = 1ms;
  Scheduler s(e);
  std::string text;
  for (int i = 0; i < 17; ++i) text += " word" + std::to_string(i);  // 33..46 tokens: 3 blocks
  auto r1 = request(e, text), r2 = request(e, text + " again");
  ASSERT_GE(r1.prompt.size(), 33u);
  ASSERT_LE(r2.prompt.size(), 46u);
  auto s1 = s.submit(std::move(r1));
  auto s2 = s.submit(std::move(r2));
  auto c1 = collect(*s1), c2 = collect(*s2);
  EXPECT_EQ(c1.result.finish, FinishReason::kStop) << c1.result.error;
  EXPECT_EQ(c2.result.finish, FinishReason::kStop) << c2.result.error;
  EXPECT_EQ(c2.text, "ok then");
  for (const auto& st : e.steps()) EXPECT_EQ(st.inputs.size(), 1u);  // the second waited for the first
  // A prompt bigger than the whole pool is refused with both sizes.
  std::string huge;
  for (int i = 0; i < 60; ++i) huge += " word" + std::to_string(i);
  auto c3 = collect(*s.submit(request(e, huge)));
  EXPECT_EQ(c3.result.finish, FinishReason::kError);
  EXPECT_NE(c3.result.error.find("KV pool holds 80 tokens"), std::string::npos) << c3.result.error;
}

TEST(Scheduler, PoolFullWhileDecodingEndsTheYoungestAndTheOthersGoOn) {
  FakeEngine e(2, 64);
  e.total_blocks = 4;  // 64 tokens for two sequences that both want to grow past 32
  std::vector<int32_t> long_script;
  for (int i = 0; i < 60; ++i) long_script.push_back(e.tokenizer().encode(" a", false)[0]);
  e.script = long_script;
  e.step_delay = 1ms;
  Scheduler s(e);
  auto s1 = s.submit(request(e, "first", 50));
  std::this_thread::sleep_for(20ms);
  auto s2 = s.submit(request(e, "second", 50));
  auto c1 = collect(*s1), c2 = collect(*s2);
  EXPECT_EQ(c1.result.finish, FinishReason::kLength) << c1.result.error;
  EXPECT_EQ(c1.result.generated_tokens, 50u);
  EXPECT_EQ(c2.result.finish, FinishReason::kError);
  EXPECT_NE(c2.result.error.find("KV pool is full"), std::string::npos) << c2.result.error;
}

}  // namespace

// A prompt alone prefills in the engine's largest steps; beside a decoding stream the steps stay
// within step_tokens_while_decoding (decode tokens included), so that stream is not stalled.
TEST(Scheduler, PrefillStepsShrinkWhileAnotherSequenceDecodes) {
  FakeEngine e(2, 64);
  e.script = encode(e, "a b c d e f g h i j k l m n o p q r s t u v w x y z");
  e.step_delay = 1ms;
  SchedulerOptions o;
  o.step_tokens_while_decoding = 16;
  Scheduler s(e, {}, o);
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += " word" + std::to_string(i);
  auto first = request(e, long_prompt, 1);
  const size_t first_tokens = first.prompt.size();
  ASSERT_GT(first_tokens, 128u);
  auto s_first = s.submit(std::move(first));
  auto c_first = collect(*s_first);  // alone: 64-token steps
  auto s_dec = s.submit(request(e, "go"));
  // Wait until the short request decodes, then submit another (different) long prompt beside it.
  for (int i = 0; i < 2000; ++i) {
    const auto st = e.steps();
    bool decoding = false;
    for (auto [seq, n] : st.back().inputs) decoding |= n == 1;
    if (decoding) break;
    std::this_thread::sleep_for(1ms);
  }
  std::string other_prompt;
  for (int i = 0; i < 100; ++i) other_prompt += " other" + std::to_string(i);
  auto s_second = s.submit(request(e, other_prompt, 1));
  auto c_dec = collect(*s_dec);
  auto c_second = collect(*s_second);
  EXPECT_EQ(c_dec.text, "a b c d e f g h i j k l m n o p q r s t u v w x y z");
  const auto steps = e.steps();
  size_t alone_max = 0, beside_max = 0, beside_steps = 0;
  for (const auto& st : steps) {
    size_t total = 0;
    bool decode = false, prefill = false;
    for (auto [seq, n] : st.inputs) {
      total += n;
      decode |= n == 1;
      prefill |= n > 1;
    }
    if (prefill && !decode) alone_max = std::max(alone_max, total);
    if (prefill && decode) {
      beside_max = std::max(beside_max, total);
      ++beside_steps;
    }
  }
  EXPECT_EQ(alone_max, 64u) << "a prompt alone did not take the engine's largest step";
  EXPECT_GT(beside_steps, 2u) << "the second prompt was never prefilled beside the decoding stream";
  EXPECT_LE(beside_max, 16u);
}
