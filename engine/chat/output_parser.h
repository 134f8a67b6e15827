// OutputParser: turns the text a Qwen3 / Qwen3-Coder model generates, fed in arbitrary chunks, into
// the events a client streams (reasoning delta, content delta, tool-call begin / arguments delta /
// end / error) and into the final parsed message.
//
// Contract:
//   - feed(chunk) may be called with any split of the text (inside UTF-8 sequences, inside tags);
//     finish() is called once at the end of generation. The final message() and the concatenation of
//     each kind of delta do not depend on how the text was split.
//   - No partial tag reaches content or reasoning: a trailing `<tool_`, `</thi`, `<function` is held
//     until the next chunk decides it (only the shortest suffix that could still be a tag is held).
//   - For every tool call: begin (index, id, name) comes before its argument deltas, which come before
//     its end (or its error). The concatenated argument deltas of a successful call equal
//     ParsedToolCall::arguments, which is a JSON object text.
//   - Tool schemas are nlohmann::json (an OpenAI `tools` array: [{"type":"function","function":{name,
//     parameters}}] or bare {name, parameters}); only Qwen3-Coder uses them, to type parameters.
// The precise rules (whitespace, when a closing tag counts, malformed input) are in
// docs/chat-formats.md, section "Streaming output parser".
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace trove::chat {

enum class OutputFormat { kQwen3, kQwen3Coder };

struct OutputEvent {
  enum class Kind {
    kReasoningDelta,
    kContentDelta,
    kToolCallBegin,           // index, id, name
    kToolCallArgumentsDelta,  // index, text
    kToolCallEnd,             // index
    kToolCallError,           // index (-1 if the call never began), name, text = message, raw = text parsed
  };
  Kind kind = Kind::kContentDelta;
  std::string text;
  int index = -1;
  std::string id;
  std::string name;
  std::string raw;
};

struct ParsedToolCall {
  int index = 0;
  std::string id;
  std::string name;
  std::string arguments;           // JSON object text; equals the concatenated argument deltas
  nlohmann::json arguments_json;   // the same, parsed
};

struct ToolCallError {
  int index = -1;
  std::string name;
  std::string message;
  std::string raw;  // the text of the call that was consumed (from its opening tag)
  std::string arguments;  // argument text emitted before the error
};

struct ParsedMessage {
  std::string content;
  std::string reasoning;
  std::vector<ParsedToolCall> tool_calls;
  std::vector<ToolCallError> errors;
};

struct OutputParserOptions {
  OutputFormat format = OutputFormat::kQwen3;
  // True when the generation prompt already opened `<think>` (the output starts inside reasoning).
  bool starts_in_reasoning = false;
  nlohmann::json tools = nlohmann::json::array();
  // Makes tool-call ids; default: "call_" + 24 random base62 characters. Tests inject a counter.
  std::function<std::string()> make_call_id;
};

class OutputParser {
 public:
  explicit OutputParser(OutputParserOptions options);

  // Appends `chunk` and returns the events it made decidable.
  std::vector<OutputEvent> feed(std::string_view chunk);
  // Ends generation: flushes held text and reports an unterminated call as kToolCallError.
  std::vector<OutputEvent> finish();
  // The parsed message (complete after finish()).
  const ParsedMessage& message() const { return message_; }

 private:
  enum class State {
    kContent,
    kReasoning,
    kAfterCall,          // skips whitespace and an optional `</tool_call>`
    kSkipToCallEnd,      // after a malformed call: drop text up to `</tool_call>`
    kJsonCall,           // Qwen3: inside <tool_call> JSON
    kXmlExpectFunction,  // Qwen3-Coder: after <tool_call>, expecting <function=
    kXmlFunctionName,
    kXmlBetween,         // between parameters: <parameter= or </function>
    kXmlParamName,
    kXmlValueStart,      // drops one leading newline
    kXmlValue,
  };
  struct TrimmedStream {  // drops leading whitespace and whitespace before a tag / the end
    bool started = false;
    std::string pending_ws;
  };

  void run(bool at_end);
  bool step_content(bool at_end);
  bool step_reasoning(bool at_end);
  bool step_after_call(bool at_end);
  bool step_skip(bool at_end);
  bool step_json(bool at_end);
  bool step_xml(bool at_end);
  bool xml_value(bool at_end);

  void emit_trimmed(TrimmedStream& s, std::string_view text, OutputEvent::Kind kind, std::string& out);
  void begin_call(std::string name);
  void emit_args(std::string_view text);
  void end_call();
  void fail_call(std::string message, bool skip_to_end);
  void flush_json_args();
  std::string param_type(const std::string& param) const;
  void emit_string_bytes(std::string_view bytes, bool final);

  OutputParserOptions opt_;
  std::map<std::string, std::map<std::string, std::string>> param_types_;  // tool -> param -> type
  std::string buf_;
  size_t pos_ = 0;
  State state_;
  bool think_allowed_ = true;
  TrimmedStream content_s_, reasoning_s_;
  std::vector<OutputEvent> out_;
  ParsedMessage message_;
  bool finished_ = false;

  // Current call.
  int next_index_ = 0;
  bool call_begun_ = false;
  int call_index_ = -1;
  std::string call_id_, call_name_, call_args_, call_raw_;
  size_t call_raw_from_ = 0;  // position in buf_ of the call's opening tag (raw is copied lazily)
  // Qwen3 JSON scanner.
  struct JsonScan {
    bool started = false;
    int depth = 0;
    bool in_string = false, escape = false;
    enum { kKey, kColon, kValue, kAfterValue } expect = kKey;
    enum { kNone, kKeyStr, kNameStr, kArgs, kOther } capture = kNone;
    bool value_is_primitive = false;
    std::string raw_str;  // raw JSON string being captured (key or name), without quotes
    std::string key;
    bool have_name = false, have_args = false, args_not_object = false;
    std::string held_args;  // argument text that arrived before the name
  } js_;
  // Qwen3-Coder XML.
  std::string param_name_, param_kind_, param_raw_, utf8_pending_;
  int params_emitted_ = 0;
};

}  // namespace trove::chat
