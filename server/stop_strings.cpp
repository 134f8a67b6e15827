#include "server/stop_strings.h"

#include <algorithm>

namespace trove::server {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

StopStringMatcher::Piece StopStringMatcher::feed(std::string_view text) {
  Piece out;
  if (stopped_) return out;
  held_ += text;
  // The earliest complete match wins, whichever stop string it is.
  size_t first = std::string::npos;
  for (const auto& s : stops_) {
    const size_t at = held_.find(s);
    if (at < first) {
      first = at;
      matched_ = s;
    }
  }
  if (first != std::string::npos) {
    out.text = held_.substr(0, first);
    out.stopped = stopped_ = true;
    held_.clear();
    return out;
  }
  // Why hold back: a stop string can straddle two pieces ("</" then "end>"). Keep the longest
  // suffix of held_ that is a proper prefix of some stop string; release the rest.
  size_t keep = 0;
  for (const auto& s : stops_) {
    size_t max_len = std::min(s.size() - 1, held_.size());
    for (size_t len = max_len; len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  out.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStringMatcher::finish() {
  std::string rest;
  rest.swap(held_);
  return rest;
}

}  // namespace trove::server
