#include "server/auth.h"

namespace trove::server {
namespace {

// True when `given` equals `expected`. The time depends only on given.size(), which the client chose:
// neither the position of the first differing byte nor the key's length shows in it (an early return
// on a length mismatch would let a client find the length by timing). REQUIRES: !expected.empty().
bool equal_constant_time(std::string_view expected, std::string_view given) {
  size_t diff = expected.size() ^ given.size();
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i % expected.size()] ^ given[i]);
  }
  return diff == 0;
}

}  // namespace

bool api_key_matches(std::string_view expected, std::string_view authorization_header,
                     std::string_view x_api_key_header) {
  if (expected.empty()) return true;
  constexpr std::string_view kBearer = "Bearer ";
  // The scheme name is case-insensitive per RFC 7235; clients send "Bearer" but accept "bearer".
  if (authorization_header.size() > kBearer.size()) {
    bool scheme_ok = true;
    for (size_t i = 0; i < kBearer.size(); ++i) {
      char c = authorization_header[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      char k = kBearer[i];
      if (k >= 'A' && k <= 'Z') k = static_cast<char>(k - 'A' + 'a');
      if (c != k) scheme_ok = false;
    }
    if (scheme_ok && equal_constant_time(expected, authorization_header.substr(kBearer.size())))
      return true;
  }
  return !x_api_key_header.empty() && equal_constant_time(expected, x_api_key_header);
}

}  // namespace trove::server
