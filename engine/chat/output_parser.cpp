#include "engine/chat/output_parser.h"
#include "engine/chat/render_pyformat.h"

#include <random>

namespace trove::chat {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";
constexpr std::string_view kFunctionOpen = "<function=";
constexpr std::string_view kFunctionClose = "</function>";
constexpr std::string_view kParamOpen = "<parameter=";
constexpr std::string_view kParamClose = "</parameter>";
constexpr int kMaxJsonDepth = 64;
constexpr size_t kMaxNameLength = 256;

enum class Match { kNo, kPartial, kFull };

// Does buf[pos..] start with `lit`? kPartial: the buffer ends inside a prefix of it.
Match match_at(const std::string& buf, size_t pos, std::string_view lit) {
  size_t avail = buf.size() - pos;
  size_t n = std::min(avail, lit.size());
  if (std::string_view(buf).substr(pos, n) != lit.substr(0, n)) return Match::kNo;
  return n == lit.size() ? Match::kFull : Match::kPartial;
}

OutputEvent make_event(OutputEvent::Kind kind, std::string text) {
  OutputEvent e;
  e.kind = kind;
  e.text = std::move(text);
  return e;
}

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

std::string default_call_id() {
  static constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kAlphabet[rng() % 62];
  return id;
}

// Length of the valid UTF-8 sequence starting at s[0] (1..4), 0 if invalid, -1 if s ends inside a
// sequence that could still become valid.
int utf8_sequence(std::string_view s) {
  auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  unsigned char c = b(0);
  if (c < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c == 0xE0) { len = 3; lo = 0xA0; }
  else if (c >= 0xE1 && c <= 0xEC) len = 3;
  else if (c == 0xED) { len = 3; hi = 0x9F; }
  else if (c >= 0xEE && c <= 0xEF) len = 3;
  else if (c == 0xF0) { len = 4; lo = 0x90; }
  else if (c >= 0xF1 && c <= 0xF3) len = 4;
  else if (c == 0xF4) { len = 4; hi = 0x8F; }
  else return 0;
  for (int i = 1; i < len; ++i) {
    if (static_cast<size_t>(i) >= s.size()) return -1;
    unsigned char lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
    if (b(i) < lo_i || b(i) > hi_i) return 0;
  }
  return len;
}

// Python-literal style fallback for object/array parameters: True/False/None and single-quoted
// strings become JSON. Only outside double-quoted strings.
std::string python_literal_to_json(std::string_view v) {
  std::string out;
  size_t i = 0;
  while (i < v.size()) {
    char c = v[i];
    if (c == '"') {
      size_t j = i + 1;
      while (j < v.size() && v[j] != '"') j += v[j] == '\\' ? 2 : 1;
      j = std::min(j + 1, v.size());
      out.append(v.substr(i, j - i));
      i = j;
    } else if (c == '\'') {
      out += '"';
      size_t j = i + 1;
      while (j < v.size() && v[j] != '\'') {
        if (v[j] == '\\' && j + 1 < v.size()) {
          if (v[j + 1] == '\'') out += '\'';
          else { out += '\\'; out += v[j + 1]; }
          j += 2;
          continue;
        }
        if (v[j] == '"') out += "\\\"";
        else out += v[j];
        ++j;
      }
      out += '"';
      i = j + 1;
    } else if (v.substr(i, 4) == "True") { out += "true"; i += 4; }
    else if (v.substr(i, 5) == "False") { out += "false"; i += 5; }
    else if (v.substr(i, 4) == "None") { out += "null"; i += 4; }
    else { out += c; ++i; }
  }
  return out;
}

bool parse_json(std::string_view text, nlohmann::json& out) {
  out = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  return !out.is_discarded();
}

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && is_ws(s[a])) ++a;
  while (b > a && is_ws(s[b - 1])) --b;
  return std::string(s.substr(a, b - a));
}

// A Qwen3-Coder parameter value that is not a string, typed by its schema type. Falls back to a
// JSON string when the value does not have that type.
nlohmann::json typed_value(const std::string& type, const std::string& raw) {
  std::string v = trim(raw);
  nlohmann::json j;
  if (type == "integer" || type == "number") {
    if (parse_json(v, j) && j.is_number()) return j;
  } else if (type == "boolean") {
    if (v == "true" || v == "True") return true;
    if (v == "false" || v == "False") return false;
  } else if (type == "null") {
    if (v == "null" || v == "None") return nullptr;
  } else if (type == "object" || type == "array") {
    bool want_obj = type == "object";
    if (parse_json(v, j) && (want_obj ? j.is_object() : j.is_array())) return j;
    if (parse_json(python_literal_to_json(v), j) && (want_obj ? j.is_object() : j.is_array())) return j;
  }
  // Invalid UTF-8 would make dump() throw; a string with replacement characters is what we emit.
  return nlohmann::json::parse(nlohmann::json(raw).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

}  // namespace

OutputParser::OutputParser(OutputParserOptions options) : opt_(std::move(options)) {
  if (!opt_.make_call_id) opt_.make_call_id = default_call_id;
  state_ = opt_.starts_in_reasoning ? State::kReasoning : State::kContent;
  if (opt_.starts_in_reasoning) think_allowed_ = false;
  if (opt_.tools.is_array()) {
    for (const auto& tool : opt_.tools) {
      const nlohmann::json& f = tool.contains("function") ? tool["function"] : tool;
      if (!f.is_object() || !f.contains("name") || !f["name"].is_string()) continue;
      auto& types = param_types_[f["name"].get<std::string>()];
      auto params = f.find("parameters");
      if (params == f.end() || !params->is_object()) continue;
      auto props = params->find("properties");
      if (props == params->end() || !props->is_object()) continue;
      for (auto it = props->begin(); it != props->end(); ++it) {
        std::string type = "string";
        if (it->is_object() && it->contains("type")) {
          const auto& t = (*it)["type"];
          if (t.is_string()) {
            type = t.get<std::string>();
          } else if (t.is_array()) {
            // A union that admits a string streams as a string; otherwise the first non-null type.
            std::string first;
            for (const auto& e : t) {
              if (!e.is_string()) continue;
              if (e == "string") { first = "string"; break; }
              if (first.empty() && e != "null") first = e.get<std::string>();
            }
            if (!first.empty()) type = first;
          }
        }
        types[it.key()] = type;
      }
    }
  }
}

std::vector<OutputEvent> OutputParser::feed(std::string_view chunk) {
  if (finished_) return {};
  buf_.append(chunk);
  run(false);
  // Compact: keep the raw text of an open call, drop the rest of what was consumed.
  bool in_call = state_ != State::kContent && state_ != State::kReasoning && state_ != State::kAfterCall &&
                 state_ != State::kSkipToCallEnd;
  if (in_call) {
    call_raw_.append(buf_, call_raw_from_, pos_ - call_raw_from_);
    call_raw_from_ = 0;
  }
  buf_.erase(0, pos_);
  pos_ = 0;
  return std::move(out_);
}

std::vector<OutputEvent> OutputParser::finish() {
  if (finished_) return {};
  run(true);
  finished_ = true;
  return std::move(out_);
}

void OutputParser::run(bool at_end) {
  out_.clear();
  for (;;) {
    bool progressed = false;
    switch (state_) {
      case State::kContent: progressed = step_content(at_end); break;
      case State::kReasoning: progressed = step_reasoning(at_end); break;
      case State::kAfterCall: progressed = step_after_call(at_end); break;
      case State::kSkipToCallEnd: progressed = step_skip(at_end); break;
      case State::kJsonCall: progressed = step_json(at_end); break;
      default: progressed = step_xml(at_end); break;
    }
    if (!progressed) break;
  }
  flush_json_args();
  if (at_end) {
    bool in_call = state_ != State::kContent && state_ != State::kReasoning &&
                   state_ != State::kAfterCall && state_ != State::kSkipToCallEnd;
    if (in_call) fail_call("unterminated tool call at the end of generation", false);
  }
}

void OutputParser::emit_trimmed(TrimmedStream& s, std::string_view text, OutputEvent::Kind kind,
                                std::string& out) {
  std::string delta;
  for (char c : text) {
    if (is_ws(c)) {
      s.pending_ws += c;
      continue;
    }
    if (s.started) delta += s.pending_ws;
    s.pending_ws.clear();
    s.started = true;
    delta += c;
  }
  if (delta.empty()) return;
  out += delta;
  if (!out_.empty() && out_.back().kind == kind) {
    out_.back().text += delta;
  } else {
    out_.push_back(make_event(kind, std::move(delta)));
  }
}

bool OutputParser::step_content(bool at_end) {
  const auto kind = OutputEvent::Kind::kContentDelta;
  size_t lt = buf_.find('<', pos_);
  if (lt == std::string::npos) lt = buf_.size();
  if (lt > pos_) {
    emit_trimmed(content_s_, std::string_view(buf_).substr(pos_, lt - pos_), kind, message_.content);
    pos_ = lt;
  }
  if (pos_ >= buf_.size()) return false;
  // Which tags open something here. `<think>` only before any content or tool call.
  bool partial = false;
  auto try_tag = [&](std::string_view tag) {
    Match m = match_at(buf_, pos_, tag);
    if (m == Match::kPartial) partial = true;
    return m == Match::kFull;
  };
  bool think_ok = think_allowed_ && !content_s_.started && next_index_ == 0;
  if (think_ok && try_tag(kThinkOpen)) {
    content_s_.pending_ws.clear();
    pos_ += kThinkOpen.size();
    think_allowed_ = false;
    state_ = State::kReasoning;
    return true;
  }
  if (try_tag(kCallOpen)) {
    content_s_.pending_ws.clear();
    call_raw_.clear();
    call_raw_from_ = pos_;
    pos_ += kCallOpen.size();
    think_allowed_ = false;
    if (opt_.format == OutputFormat::kQwen3) {
      js_ = JsonScan{};
      state_ = State::kJsonCall;
    } else {
      state_ = State::kXmlExpectFunction;
    }
    return true;
  }
  if (opt_.format == OutputFormat::kQwen3Coder && try_tag(kFunctionOpen)) {
    // Recovery: the model omitted `<tool_call>`.
    content_s_.pending_ws.clear();
    call_raw_.clear();
    call_raw_from_ = pos_;
    think_allowed_ = false;
    state_ = State::kXmlExpectFunction;
    return true;
  }
  if (partial && !at_end) return false;
  emit_trimmed(content_s_, "<", kind, message_.content);
  ++pos_;
  return true;
}

bool OutputParser::step_reasoning(bool at_end) {
  const auto kind = OutputEvent::Kind::kReasoningDelta;
  size_t lt = buf_.find('<', pos_);
  if (lt == std::string::npos) lt = buf_.size();
  if (lt > pos_) {
    emit_trimmed(reasoning_s_, std::string_view(buf_).substr(pos_, lt - pos_), kind, message_.reasoning);
    pos_ = lt;
  }
  if (pos_ >= buf_.size()) return false;
  Match m = match_at(buf_, pos_, kThinkClose);
  if (m == Match::kFull) {
    reasoning_s_.pending_ws.clear();
    pos_ += kThinkClose.size();
    state_ = State::kContent;
    return true;
  }
  if (m == Match::kPartial && !at_end) return false;
  emit_trimmed(reasoning_s_, "<", kind, message_.reasoning);
  ++pos_;
  return true;
}

bool OutputParser::step_after_call(bool at_end) {
  while (pos_ < buf_.size() && is_ws(buf_[pos_])) ++pos_;
  if (pos_ >= buf_.size()) {
    if (at_end) state_ = State::kContent;
    return false;
  }
  Match m = match_at(buf_, pos_, kCallClose);
  if (m == Match::kPartial && !at_end) return false;
  if (m == Match::kFull) pos_ += kCallClose.size();
  state_ = State::kContent;
  return true;
}

bool OutputParser::step_skip(bool at_end) {
  (void)at_end;
  size_t at = buf_.find(kCallClose, pos_);
  if (at == std::string::npos) {
    // Keep only what could still be the start of `</tool_call>`.
    size_t keep = 0;
    for (size_t k = std::min(kCallClose.size() - 1, buf_.size() - pos_); k > 0; --k) {
      if (match_at(buf_, buf_.size() - k, kCallClose) == Match::kPartial) { keep = k; break; }
    }
    pos_ = buf_.size() - keep;
    return false;
  }
  pos_ = at + kCallClose.size();
  state_ = State::kContent;
  return true;
}

void OutputParser::begin_call(std::string name) {
  call_begun_ = true;
  call_index_ = next_index_++;
  call_id_ = opt_.make_call_id();
  call_name_ = std::move(name);
  call_args_.clear();
  OutputEvent e = make_event(OutputEvent::Kind::kToolCallBegin, "");
  e.index = call_index_;
  e.id = call_id_;
  e.name = call_name_;
  out_.push_back(std::move(e));
}

void OutputParser::emit_args(std::string_view text) {
  if (text.empty()) return;
  call_args_.append(text);
  if (!out_.empty() && out_.back().kind == OutputEvent::Kind::kToolCallArgumentsDelta &&
      out_.back().index == call_index_) {
    out_.back().text.append(text);
  } else {
    OutputEvent e = make_event(OutputEvent::Kind::kToolCallArgumentsDelta, std::string(text));
    e.index = call_index_;
    out_.push_back(std::move(e));
  }
}

void OutputParser::end_call() {
  ParsedToolCall call;
  call.index = call_index_;
  call.id = call_id_;
  call.name = call_name_;
  call.arguments = call_args_;
  if (!parse_json(call_args_, call.arguments_json) || !call.arguments_json.is_object()) {
    fail_call("arguments of tool call '" + call_name_ + "' are not a valid JSON object", false);
    state_ = State::kAfterCall;
    return;
  }
  message_.tool_calls.push_back(std::move(call));
  OutputEvent e = make_event(OutputEvent::Kind::kToolCallEnd, "");
  e.index = call_index_;
  out_.push_back(std::move(e));
  call_begun_ = false;
  state_ = State::kAfterCall;
}

void OutputParser::fail_call(std::string message, bool skip_to_end) {
  ToolCallError err;
  err.index = call_begun_ ? call_index_ : -1;
  err.name = call_name_;
  err.message = std::move(message);
  err.raw = call_raw_ + buf_.substr(call_raw_from_, pos_ - call_raw_from_);
  err.arguments = call_args_;
  OutputEvent e = make_event(OutputEvent::Kind::kToolCallError, err.message);
  e.index = err.index;
  e.name = err.name;
  e.raw = err.raw;
  out_.push_back(std::move(e));
  message_.errors.push_back(std::move(err));
  call_begun_ = false;
  call_name_.clear();
  call_args_.clear();
  state_ = skip_to_end ? State::kSkipToCallEnd : State::kContent;
}

// ---- Qwen3: JSON inside <tool_call> ----------------------------------------------------------

void OutputParser::flush_json_args() {
  if (state_ == State::kJsonCall && call_begun_ && !js_.held_args.empty()) {
    emit_args(js_.held_args);
    js_.held_args.clear();
  }
}

// Processes one character at a time. Only the top-level object's structure is tracked: its keys,
// "name" (decoded as a JSON string) and the extent of "arguments" (copied verbatim as deltas).
// Everything else inside values is skipped by depth / string / escape tracking, so braces, quotes
// and `</tool_call>` inside strings are data.
bool OutputParser::step_json(bool at_end) {
  (void)at_end;
  auto& s = js_;
  auto args_char = [&](char c) {
    if (s.args_not_object) return;
    if (call_begun_) {
      if (!s.held_args.empty()) { emit_args(s.held_args); s.held_args.clear(); }
      std::string_view one(&c, 1);
      emit_args(one);
    } else {
      s.held_args += c;
    }
  };
  auto end_value = [&]() {
    if (s.capture == JsonScan::kArgs) s.have_args = true;
    s.capture = JsonScan::kNone;
    s.expect = JsonScan::kAfterValue;
  };
  auto close_object = [&]() {
    ++pos_;
    if (!s.have_name || s.args_not_object) {
      fail_call(!s.have_name ? "tool call has no \"name\""
                             : "\"arguments\" of tool call '" + call_name_ + "' is not a JSON object",
                false);
      state_ = State::kAfterCall;
      return;
    }
    flush_json_args();
    if (!s.have_args) emit_args("{}");  // a call without "arguments" takes no arguments
    end_call();
  };
  while (pos_ < buf_.size()) {
    char c = buf_[pos_];
    if (!s.started) {
      if (is_ws(c)) { ++pos_; continue; }
      if (c != '{') { fail_call("tool call does not start with '{'", true); return true; }
      s.started = true;
      s.depth = 1;
      s.expect = JsonScan::kKey;
      ++pos_;
      continue;
    }
    if (s.in_string) {
      if (s.capture == JsonScan::kArgs) args_char(c);
      bool closes = !s.escape && c == '"';
      if (s.escape) s.escape = false;
      else if (c == '\\') s.escape = true;
      if (!closes && (s.capture == JsonScan::kKeyStr || s.capture == JsonScan::kNameStr)) s.raw_str += c;
      ++pos_;
      if (closes) {
        s.in_string = false;
        if (s.depth == 1) {
          nlohmann::json decoded;
          bool ok = parse_json("\"" + s.raw_str + "\"", decoded) && decoded.is_string();
          if (s.capture == JsonScan::kKeyStr) {
            if (!ok) { fail_call("tool call has an invalid key", true); return true; }
            s.key = decoded.get<std::string>();
            s.capture = JsonScan::kNone;
            s.expect = JsonScan::kColon;
          } else {
            if (s.capture == JsonScan::kNameStr) {
              if (!ok || decoded.get<std::string>().empty()) { fail_call("tool call has an invalid \"name\"", true); return true; }
              if (!s.have_name) {
                s.have_name = true;
                call_name_ = decoded.get<std::string>();
                if (!call_begun_) begin_call(call_name_);
              }
            }
            end_value();
          }
        }
      }
      continue;
    }
    if (s.depth == 1 && s.expect != JsonScan::kValue) {
      ++pos_;
      if (is_ws(c)) continue;
      if (s.expect == JsonScan::kKey) {
        if (c == '"') { s.in_string = true; s.capture = JsonScan::kKeyStr; s.raw_str.clear(); continue; }
        if (c == '}') { --pos_; close_object(); return true; }  // close_object() consumes the '}'
      } else if (s.expect == JsonScan::kColon) {
        if (c == ':') { s.expect = JsonScan::kValue; s.value_is_primitive = false; continue; }
      } else if (s.expect == JsonScan::kAfterValue) {
        if (c == ',') { s.expect = JsonScan::kKey; continue; }
        if (c == '}') { --pos_; close_object(); return true; }
      }
      --pos_;
      fail_call(std::string("tool call JSON is malformed at '") + c + "'", true);
      return true;
    }
    if (s.depth == 1 && s.capture == JsonScan::kNone && !s.value_is_primitive) {
      // First character of a top-level value.
      if (is_ws(c)) { ++pos_; continue; }
      bool is_args = s.key == "arguments" && !s.have_args;
      if (s.key == "name" && !s.have_name) {
        if (c != '"') { fail_call("\"name\" of tool call is not a string", true); return true; }
        s.capture = JsonScan::kNameStr;
        s.raw_str.clear();
        s.in_string = true;
        ++pos_;
        continue;
      }
      s.capture = is_args ? JsonScan::kArgs : JsonScan::kOther;
      if (is_args && c != '{') s.args_not_object = true;
      if (c == '"') { s.in_string = true; }
      else if (c == '{' || c == '[') { s.depth = 2; }
      else { s.value_is_primitive = true; }
      if (s.capture == JsonScan::kArgs) args_char(c);
      ++pos_;
      continue;
    }
    if (s.value_is_primitive) {  // depth 1, inside a number / literal
      if (c == ',' || c == '}' || is_ws(c)) {
        s.value_is_primitive = false;
        end_value();
        continue;  // re-read c as structure
      }
      if (s.capture == JsonScan::kArgs) args_char(c);
      ++pos_;
      continue;
    }
    // Inside a composite value (depth >= 2).
    if (s.capture == JsonScan::kArgs) args_char(c);
    ++pos_;
    if (c == '"') s.in_string = true;
    else if (c == '{' || c == '[') {
      if (++s.depth > kMaxJsonDepth) { fail_call("tool call JSON is nested too deeply", true); return true; }
    } else if (c == '}' || c == ']') {
      if (--s.depth == 1) end_value();
    }
  }
  return false;
}

// ---- Qwen3-Coder: XML-ish function / parameter tags ------------------------------------------

std::string OutputParser::param_type(const std::string& param) const {
  auto t = param_types_.find(call_name_);
  if (t == param_types_.end()) return "string";
  auto p = t->second.find(param);
  return p == t->second.end() ? "string" : p->second;
}

void OutputParser::emit_string_bytes(std::string_view bytes, bool final) {
  utf8_pending_.append(bytes);
  std::string out;
  size_t i = 0;
  std::string_view s(utf8_pending_);
  while (i < s.size()) {
    int n = utf8_sequence(s.substr(i));
    if (n == -1 && !final) break;
    if (n <= 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for bytes that are not UTF-8
      ++i;
      continue;
    }
    if (n == 1) append_json_escaped_byte(static_cast<unsigned char>(s[i]), out);
    else out.append(s.substr(i, n));
    i += n;
  }
  utf8_pending_.erase(0, i);
  emit_args(out);
}

bool OutputParser::step_xml(bool at_end) {
  switch (state_) {
    case State::kXmlExpectFunction: {
      while (pos_ < buf_.size() && is_ws(buf_[pos_])) ++pos_;
      if (pos_ >= buf_.size()) return false;
      Match m = match_at(buf_, pos_, kFunctionOpen);
      if (m == Match::kPartial && !at_end) return false;
      if (m != Match::kFull) { fail_call("tool call does not start with <function=NAME>", true); return true; }
      pos_ += kFunctionOpen.size();
      param_name_.clear();
      state_ = State::kXmlFunctionName;
      return true;
    }
    case State::kXmlFunctionName:
    case State::kXmlParamName: {
      bool fn = state_ == State::kXmlFunctionName;
      while (pos_ < buf_.size()) {
        char c = buf_[pos_];
        if (c == '>') break;
        if (c == '\n' || c == '<' || param_name_.size() >= kMaxNameLength) {
          fail_call(fn ? "tool call has a malformed <function=NAME> tag" : "tool call has a malformed <parameter=NAME> tag", true);
          return true;
        }
        param_name_ += c;
        ++pos_;
      }
      if (pos_ >= buf_.size()) return false;
      ++pos_;  // '>'
      std::string name = trim(param_name_);
      if (name.empty()) { fail_call(fn ? "tool call has an empty function name" : "tool call has an empty parameter name", true); return true; }
      if (fn) {
        call_name_ = name;
        begin_call(name);
        emit_args("{");
        params_emitted_ = 0;
        state_ = State::kXmlBetween;
      } else {
        param_name_ = name;
        param_kind_ = param_type(name);
        param_raw_.clear();
        utf8_pending_.clear();
        std::string head = params_emitted_++ ? "," : "";
        head += nlohmann::json(name).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + ":";
        if (param_kind_ == "string") head += "\"";
        emit_args(head);
        state_ = State::kXmlValueStart;
      }
      return true;
    }
    case State::kXmlBetween: {
      while (pos_ < buf_.size() && is_ws(buf_[pos_])) ++pos_;
      if (pos_ >= buf_.size()) return false;
      Match p = match_at(buf_, pos_, kParamOpen);
      Match f = match_at(buf_, pos_, kFunctionClose);
      if (p == Match::kFull) {
        pos_ += kParamOpen.size();
        param_name_.clear();
        state_ = State::kXmlParamName;
        return true;
      }
      if (f == Match::kFull) {
        pos_ += kFunctionClose.size();
        emit_args("}");
        end_call();
        return true;
      }
      if ((p == Match::kPartial || f == Match::kPartial) && !at_end) return false;
      fail_call("tool call has text outside <parameter=…> tags", true);
      return true;
    }
    case State::kXmlValueStart:
      if (pos_ >= buf_.size()) return false;
      if (buf_[pos_] == '\n') ++pos_;
      state_ = State::kXmlValue;
      return true;
    case State::kXmlValue:
      return xml_value(at_end);
    default:
      return false;
  }
}

// A value ends at `</parameter>` only when it is followed by optional whitespace and then
// `<parameter=` or `</function>` (or the end of generation). Any other `<` is value text. One
// newline just before the closing `</parameter>` is stripped, so a trailing '\n' is held back until
// we know what follows it.
bool OutputParser::xml_value(bool at_end) {
  auto commit = [&](size_t to) {
    if (to <= pos_) return;
    std::string_view text = std::string_view(buf_).substr(pos_, to - pos_);
    if (param_kind_ == "string") emit_string_bytes(text, false);
    else param_raw_.append(text);
    pos_ = to;
  };
  for (;;) {
    size_t lt = buf_.find('<', pos_);
    if (lt == std::string::npos) {
      size_t to = buf_.size();
      if (to > pos_ && buf_[to - 1] == '\n') --to;
      commit(to);
      return false;
    }
    size_t text_end = (lt > pos_ && buf_[lt - 1] == '\n') ? lt - 1 : lt;
    commit(text_end);
    // Decide whether the `<` at lt closes the value.
    Match m = match_at(buf_, lt, kParamClose);
    enum { kNo, kWait, kClose } verdict = kNo;
    if (m == Match::kPartial) verdict = at_end ? kNo : kWait;
    if (m == Match::kFull) {
      size_t q = lt + kParamClose.size();
      while (q < buf_.size() && is_ws(buf_[q])) ++q;
      if (q >= buf_.size()) {
        verdict = at_end ? kClose : kWait;
      } else {
        Match p = match_at(buf_, q, kParamOpen), f = match_at(buf_, q, kFunctionClose);
        if (p == Match::kFull || f == Match::kFull) verdict = kClose;
        else if ((p == Match::kPartial || f == Match::kPartial) && !at_end) verdict = kWait;
      }
    }
    if (verdict == kWait) return false;
    if (verdict == kNo) {
      commit(lt + 1);  // the held '\n' (if any) and the '<' are value text
      continue;
    }
    pos_ = lt + kParamClose.size();  // drops the held '\n'
    if (param_kind_ == "string") {
      emit_string_bytes("", true);
      emit_args("\"");
    } else {
      emit_args(typed_value(param_kind_, param_raw_).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    state_ = State::kXmlBetween;
    return true;
  }
}

}  // namespace trove::chat
