// Python value formatting, as Jinja2 templates print values: the pieces the native renderers need.
//
// Contract:
// - py_json(v): Python json.dumps(v, ensure_ascii=False) — separators ", " and ": ", key order kept,
//   non-ASCII written raw, control characters as \u00XX. This is Hugging Face's `tojson`.
// - py_str(v): Python str(v) for a JSON-decoded value — strings as themselves, True/False/None, and
//   containers with repr() of their items ({'k': 1}, ['a', "it's"]).
// - py_repr_string(s): repr() of a str: quote choice and escapes as CPython does for printable text;
//   non-printable code points are escaped for the common categories (controls, separators, format
//   characters, private use); unassigned code points are written raw (CPython would escape them).
// - py_strip(s): str.strip() with no argument (Unicode whitespace), as Jinja's `trim` filter does.
#pragma once

#include <string>
#include <string_view>

#include "engine/chat/conversation.h"

namespace trove::chat {

std::string py_json(const Json& value);
std::string py_str(const Json& value);
std::string py_repr_string(std::string_view s);
std::string py_strip(std::string_view s);
std::string py_strip_chars(std::string_view s, char c, bool left, bool right);
// Appends one byte of a JSON string body, escaped as json.dumps(ensure_ascii=False) does (bytes ≥ 0x80
// pass through, so UTF-8 stays UTF-8). Shared with the streaming output parser.
void append_json_escaped_byte(unsigned char c, std::string& out);

}  // namespace trove::chat
