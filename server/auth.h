// server/auth.h — the API-key check shared by every endpoint.
//
// Contract: with no key configured (empty `expected`) every request is allowed. Otherwise a
// request is allowed when either `Authorization: Bearer <key>` (OpenAI clients) or
// `x-api-key: <key>` (Anthropic clients) carries exactly the configured key. Header values are
// passed in as found (empty when absent). The comparison's time depends only on the length of what
// the client sent — not on the first differing byte nor on the key's length — so neither the key nor
// its length can be learned from response timing.
#pragma once

#include <string_view>

namespace trove::server {

bool api_key_matches(std::string_view expected, std::string_view authorization_header,
                     std::string_view x_api_key_header);

}  // namespace trove::server
