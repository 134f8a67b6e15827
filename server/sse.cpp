#include "server/sse.h"

namespace trove::server {

std::string sse_event(std::string_view event, std::string_view data) {
  std::string out;
  out.reserve(event.size() + data.size() + 16);
  if (!event.empty()) {
    out += "event: ";
    out += event;
    out += '\n';
  }
  // Why split: a raw newline inside a data line would end the field early on the client; the
  // spec's multi-line form is one `data:` line per line. "\r\n" and "\r" are line ends too.
  size_t start = 0;
  for (size_t i = 0; i <= data.size(); ++i) {
    bool end = i == data.size();
    bool cr = !end && data[i] == '\r';
    if (end || data[i] == '\n' || cr) {
      out += "data: ";
      out += data.substr(start, i - start);
      out += '\n';
      if (cr && i + 1 < data.size() && data[i + 1] == '\n') ++i;
      start = i + 1;
    }
  }
  out += '\n';
  return out;
}

std::string sse_comment(std::string_view text) {
  std::string out = ": ";
  for (char c : text) out += (c == '\n' || c == '\r') ? ' ' : c;
  out += "\n\n";
  return out;
}

std::string sse_done() { return "data: [DONE]\n\n"; }

}  // namespace trove::server
