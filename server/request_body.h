// server/request_body.h — a request body's bytes turned into JSON the way clients expect servers to.
//
// Contract:
//  - parse_request_body() never throws and never returns text that is not valid UTF-8: it returns the
//    parsed JSON value, or an ApiError (HTTP 400, type invalid_request_error) that says what is wrong
//    with the body, at which byte, and what to send instead.
//  - Lenient where real clients are sloppy, as Python-based servers (vLLM, SGLang, the OpenAI and
//    Anthropic reference servers) are:
//      * bytes that are not valid UTF-8 inside a JSON string become U+FFFD, one per maximal ill-formed
//        subsequence (Unicode §3.9, what Python's errors="replace" does);
//      * a `\uXXXX` escape of a lone surrogate (a high one not followed by a low one, or a low one
//        alone) becomes U+FFFD. JavaScript clients emit these when they cut a string mid-emoji (a
//        truncated tool result); rejecting them would break the agent's session for good.
//  - Strict where leniency would hide a broken client or cost the server: a body that is not JSON, a
//    control character inside a string, a number too large for a double (1e400), and nesting deeper
//    than kMaxJsonDepth levels of arrays/objects are rejected with 400. The depth bound is why: the
//    JSON library copies, compares and prints values recursively, so a body of a million `[` would
//    overflow an HTTP thread's stack.
//  - repair_utf8() is the same byte repair for any text (header values, error messages).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "engine/chat/conversation.h"
#include "server/request.h"

namespace trove::server {

// Real requests nest a handful of levels (a tool's JSON Schema a dozen at most).
inline constexpr size_t kMaxJsonDepth = 128;

// What the repair changed; the server logs the counts (never the text itself).
struct BodyRepairs {
  size_t invalid_utf8 = 0;      // ill-formed byte sequences replaced by U+FFFD
  size_t lone_surrogates = 0;   // \uXXXX escapes of lone surrogates replaced by \ufffd
};

struct ParsedBody {
  std::optional<chat::Json> json;
  ApiError error;               // when !json
  BodyRepairs repairs;
  bool ok() const { return json.has_value(); }
};

ParsedBody parse_request_body(std::string_view body);

// `text` with every ill-formed UTF-8 subsequence replaced by U+FFFD; counts them into *replaced.
std::string repair_utf8(std::string_view text, size_t* replaced = nullptr);

// The JSON text with the string repairs above applied (not parsed). Returns the byte offset of the
// first array/object nested deeper than kMaxJsonDepth instead, when there is one.
struct RepairedJsonText {
  std::string text;
  BodyRepairs repairs;
  std::optional<size_t> too_deep_at;
};
RepairedJsonText repair_json_text(std::string_view body);

}  // namespace trove::server
