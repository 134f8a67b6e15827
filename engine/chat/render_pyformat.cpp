#include "engine/chat/render_pyformat.h"

#include <cstdint>

#include <fmt/format.h>

namespace trove::chat {

namespace {

// Decodes one UTF-8 code point at s[i]; invalid bytes decode as themselves (one byte) so nothing is lost.
uint32_t decode(std::string_view s, size_t& i) {
  auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) n = 1;
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1f) : n == 3 ? (b & 0x0f) : (b & 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  i += n;
  return cp;
}

bool py_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

// str.isprintable() is false for Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs except ' '.
bool py_printable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) return false;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f)) return false;
  if ((cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff) return false;
  if ((cp >= 0xfff9 && cp <= 0xfffb) || (cp >= 0xd800 && cp <= 0xf8ff)) return false;
  if (cp == 0x061c || cp == 0x180e || (cp >= 0x0600 && cp <= 0x0605) || cp == 0x06dd) return false;
  return true;
}

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) append_json_escaped_byte(c, out);
  out += '"';
}

// Python's float repr and nlohmann's shortest round-trip agree on digits; both print "1.0" for whole
// floats. Python switches to exponent form at 1e16 and below 1e-4, written "1e+16" / "1e-05".
std::string py_float(double d) {
  std::string s = fmt::format("{}", d);  // shortest round-trip
  if (s == "inf") return "Infinity";
  if (s == "-inf") return "-Infinity";
  if (s == "nan") return "NaN";
  auto e = s.find('e');
  if (e == std::string::npos) {
    if (s.find('.') == std::string::npos) s += ".0";
    return s;
  }
  // fmt writes "1e+16"/"1e-05" exactly like Python.
  return s;
}

// json.dumps (kJson) and Python's repr()/str() of a dict or list (kPython) walk containers the same
// way and differ only in how strings, booleans and null are written.
enum class PyStyle { kJson, kPython };

void write_value(std::string& out, const Json& v, PyStyle style) {
  const bool py = style == PyStyle::kPython;
  auto write_string = [&](const std::string& str) {
    if (py) out += py_repr_string(str);
    else json_string(out, str);
  };
  switch (v.type()) {
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        write_string(it.key());
        out += ": ";
        write_value(out, it.value(), style);
      }
      out += '}';
      break;
    }
    case Json::value_t::array: {
      out += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        write_value(out, v[i], style);
      }
      out += ']';
      break;
    }
    case Json::value_t::string: write_string(v.get_ref<const std::string&>()); break;
    case Json::value_t::boolean: out += v.get<bool>() ? (py ? "True" : "true") : (py ? "False" : "false"); break;
    case Json::value_t::null: out += py ? "None" : "null"; break;
    case Json::value_t::number_float: out += py_float(v.get<double>()); break;
    default: out += v.dump(); break;  // integers
  }
}

void json_value(std::string& out, const Json& v) { write_value(out, v, PyStyle::kJson); }
void repr_value(std::string& out, const Json& v) { write_value(out, v, PyStyle::kPython); }

}  // namespace

void append_json_escaped_byte(unsigned char c, std::string& out) {
  switch (c) {
    case '"': out += "\\\""; break;
    case '\\': out += "\\\\"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    case '\t': out += "\\t"; break;
    case '\b': out += "\\b"; break;
    case '\f': out += "\\f"; break;
    default:
      if (c < 0x20) {
        static constexpr char kHex[] = "0123456789abcdef";
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
      } else {
        out += static_cast<char>(c);
      }
  }
}

std::string py_json(const Json& value) {
  std::string out;
  json_value(out, value);
  return out;
}

std::string py_str(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  std::string out;
  repr_value(out, value);
  return out;
}

std::string py_repr_string(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    uint32_t cp = decode(s, i);
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (!py_printable(cp)) {
      if (cp < 0x100) {
        out += fmt::format("\\x{:02x}", cp);
      } else if (cp < 0x10000) {
        out += fmt::format("\\u{:04x}", cp);
      } else {
        out += fmt::format("\\U{:08x}", cp);
      }
    } else {
      out.append(s.substr(start, i - start));
    }
  }
  out += quote;
  return out;
}

std::string py_strip(std::string_view s) {
  // Find the first and last non-whitespace code points.
  size_t begin = 0;
  while (begin < s.size()) {
    size_t j = begin;
    if (!py_whitespace(decode(s, j))) break;
    begin = j;
  }
  size_t end = begin;
  size_t i = begin;
  while (i < s.size()) {
    uint32_t cp = decode(s, i);
    if (!py_whitespace(cp)) end = i;
  }
  return std::string(s.substr(begin, end - begin));
}

std::string py_strip_chars(std::string_view s, char c, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left) while (b < e && s[b] == c) ++b;
  if (right) while (e > b && s[e - 1] == c) --e;
  return std::string(s.substr(b, e - b));
}

}  // namespace trove::chat
