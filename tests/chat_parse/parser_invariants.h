// Feeds text to an OutputParser in a given chunking and checks the event-stream invariants:
// concatenated deltas equal the final fields, begin before deltas before end/error, one end or
// error per begun call. Shared by the unit tests and the fuzz target; returns "" or a description.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/chat/output_parser.h"

namespace trove::chat::testing {

struct RunResult {
  ParsedMessage message;
  std::vector<OutputEvent> events;
  std::vector<size_t> feed_of_event;  // which feed call (0-based; finish = chunks.size()) made it
  std::string violation;
};

inline RunResult run_chunks(const OutputParserOptions& base, const std::vector<std::string>& chunks) {
  OutputParserOptions opt = base;
  int counter = 0;
  opt.make_call_id = [&counter] { return "call_" + std::to_string(counter++); };
  OutputParser parser(opt);
  RunResult r;
  for (size_t i = 0; i <= chunks.size(); ++i) {
    auto ev = i < chunks.size() ? parser.feed(chunks[i]) : parser.finish();
    for (auto& e : ev) {
      r.events.push_back(e);
      r.feed_of_event.push_back(i);
    }
  }
  r.message = parser.message();
  std::string content, reasoning;
  std::map<int, std::string> args;
  std::map<int, int> phase;  // 1 begun, 2 ended
  for (const auto& e : r.events) {
    using K = OutputEvent::Kind;
    switch (e.kind) {
      case K::kContentDelta: content += e.text; break;
      case K::kReasoningDelta: reasoning += e.text; break;
      case K::kToolCallBegin:
        if (phase.count(e.index)) r.violation = "begin twice for index " + std::to_string(e.index);
        phase[e.index] = 1;
        break;
      case K::kToolCallArgumentsDelta:
        if (phase[e.index] != 1) r.violation = "argument delta outside begin..end for " + std::to_string(e.index);
        args[e.index] += e.text;
        break;
      case K::kToolCallEnd:
        if (phase[e.index] != 1) r.violation = "end without begin for " + std::to_string(e.index);
        phase[e.index] = 2;
        break;
      case K::kToolCallError:
        if (e.index >= 0) {
          if (phase[e.index] != 1) r.violation = "error for a call not open: " + std::to_string(e.index);
          phase[e.index] = 2;
        }
        break;
    }
  }
  for (auto& [i, p] : phase)
    if (p != 2) r.violation = "call " + std::to_string(i) + " never ended";
  if (content != r.message.content) r.violation = "content deltas != content";
  if (reasoning != r.message.reasoning) r.violation = "reasoning deltas != reasoning";
  for (const auto& c : r.message.tool_calls) {
    if (args[c.index] != c.arguments) r.violation = "argument deltas != arguments for " + std::to_string(c.index);
    if (!c.arguments_json.is_object()) r.violation = "arguments not an object";
  }
  if (r.message.tool_calls.size() + r.message.errors.size() < phase.size())
    r.violation = "a begun call is neither in tool_calls nor in errors";
  return r;
}

inline std::string describe(const ParsedMessage& m) {
  std::string s = "content=[" + m.content + "] reasoning=[" + m.reasoning + "]";
  for (const auto& c : m.tool_calls) s += " call(" + c.id + "," + c.name + "," + c.arguments + ")";
  for (const auto& e : m.errors) s += " error(" + std::to_string(e.index) + "," + e.name + "," + e.message + "," + e.arguments + ")";
  return s;
}

}  // namespace trove::chat::testing
