// server/stop_strings.h — streaming detection of a request's `stop` strings.
//
// Contract: text arrives in pieces (as the detokenizer releases it). feed() returns the text that
// is safe to send to the client now and whether a stop string was completed; text that could
// still become the start of a stop string is held back until the next piece decides it. When a
// stop string completes, everything before it is released, the stop string itself and anything
// after it are dropped, and the matcher is finished (later feeds return nothing). finish() releases
// whatever is held back when generation ends for another reason (EOS, max tokens).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace trove::server {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);

  struct Piece {
    std::string text;     // release this to the client
    bool stopped = false; // a stop string was completed: end the sequence
  };
  Piece feed(std::string_view text);
  std::string finish();  // the held-back tail; empty after a stop
  bool stopped() const { return stopped_; }
  // The stop string that ended generation (empty until one did).
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;  // empty strings removed (they would match everywhere)
  std::string held_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace trove::server
