#include "server/request_body.h"

#include <fmt/format.h>

namespace trove::server {

using chat::Json;

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// Length of the well-formed UTF-8 sequence starting at s[i] (Unicode Table 3-7), or 0 when it is
// ill-formed; then *skip is the length of its maximal subpart (what one U+FFFD replaces).
size_t utf8_sequence(std::string_view s, size_t i, size_t* skip) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the first continuation byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c == 0xE0) {
    need = 2, lo = 0xA0;  // no overlong forms
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 2;
  } else if (c == 0xED) {
    need = 2, hi = 0x9F;  // no encoded surrogates
  } else if (c == 0xF0) {
    need = 3, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 3;
  } else if (c == 0xF4) {
    need = 3, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *skip = 1;  // 80..C1, F5..FF never start a sequence
    return 0;
  }
  size_t k = 0;
  for (; k < need && i + 1 + k < s.size(); ++k) {
    const auto b = static_cast<unsigned char>(s[i + 1 + k]);
    if (b < (k == 0 ? lo : 0x80) || b > (k == 0 ? hi : 0xBF)) break;
  }
  if (k == need) return need + 1;
  *skip = k + 1;  // the lead byte and the continuation bytes that were still valid
  return 0;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The code unit of a `\uXXXX` escape at s[i] (s[i] == '\\'), or -1 when there is none.
int escaped_unit(std::string_view s, size_t i) {
  if (i + 6 > s.size() || s[i] != '\\' || s[i + 1] != 'u') return -1;
  int v = 0;
  for (size_t k = 2; k < 6; ++k) {
    const int h = hex_value(s[i + k]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

}  // namespace

std::string repair_utf8(std::string_view text, size_t* replaced) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t skip = 0;
    const size_t n = utf8_sequence(text, i, &skip);
    if (n) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      out += kReplacement;
      if (replaced) ++*replaced;
      i += skip;
    }
  }
  return out;
}

RepairedJsonText repair_json_text(std::string_view s) {
  RepairedJsonText r;
  r.text.reserve(s.size() + 16);
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (!in_string) {
      // Outside strings only JSON's ASCII syntax is valid; anything else is left for the parser to
      // reject (its message is repaired before it is sent).
      if (c == '"') {
        in_string = true;
      } else if (c == '[' || c == '{') {
        if (++depth > kMaxJsonDepth) {
          r.too_deep_at = i;
          return r;
        }
      } else if ((c == ']' || c == '}') && depth > 0) {
        --depth;
      }
      r.text += c;
      ++i;
      continue;
    }
    if (c == '"') {
      in_string = false;
      r.text += c;
      ++i;
    } else if (c == '\\') {
      const int unit = escaped_unit(s, i);
      if (unit >= 0xD800 && unit <= 0xDBFF) {
        const int low = escaped_unit(s, i + 6);
        if (low >= 0xDC00 && low <= 0xDFFF) {
          r.text.append(s.substr(i, 12));  // a proper pair
          i += 12;
        } else {
          r.text += "\\ufffd";
          ++r.repairs.lone_surrogates;
          i += 6;
        }
      } else if (unit >= 0xDC00 && unit <= 0xDFFF) {
        r.text += "\\ufffd";
        ++r.repairs.lone_surrogates;
        i += 6;
      } else {
        // Any other escape: its first two bytes as they are (the parser checks the rest). A
        // non-ASCII byte after the backslash is an invalid escape either way.
        r.text += c;
        ++i;
        if (i < s.size() && static_cast<unsigned char>(s[i]) < 0x80) r.text += s[i++];
      }
    } else if (static_cast<unsigned char>(c) < 0x80) {
      r.text += c;
      ++i;
    } else {
      size_t skip = 0;
      const size_t n = utf8_sequence(s, i, &skip);
      if (n) {
        r.text.append(s.substr(i, n));
        i += n;
      } else {
        r.text += kReplacement;
        ++r.repairs.invalid_utf8;
        i += skip;
      }
    }
  }
  return r;
}

ParsedBody parse_request_body(std::string_view body) {
  ParsedBody out;
  auto fail = [&](std::string message) {
    out.error = ApiError{};
    out.error.message = repair_utf8(message);
    return out;
  };
  RepairedJsonText repaired = repair_json_text(body);
  out.repairs = repaired.repairs;
  if (repaired.too_deep_at) {
    return fail(fmt::format("the request body nests arrays/objects more than {} levels deep (at byte {}); "
                            "send a flatter JSON object",
                            kMaxJsonDepth, *repaired.too_deep_at));
  }
  try {
    out.json = Json::parse(repaired.text);
  } catch (const Json::parse_error& e) {
    // e.byte counts in the repaired text; the two differ only where a repair changed a length.
    return fail(fmt::format("the request body is not valid JSON (byte {}): {}; send a JSON object", e.byte,
                            e.what()));
  } catch (const Json::exception& e) {
    // out_of_range.406: a number too large for a double (1e400).
    return fail(fmt::format("the request body has a value the server cannot represent: {}; send numbers within "
                            "the range of a double",
                            e.what()));
  }
  return out;
}

}  // namespace trove::server
