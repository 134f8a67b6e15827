// server/sse.h — Server-Sent Events framing for the streaming endpoints.
//
// Contract: pure functions that turn one event into the exact bytes written to the chunked HTTP
// body. An event is an optional `event:` name plus a data payload; a payload containing newlines
// is split into one `data:` line per line (the SSE spec joins them back with "\n" on the client).
// Every event ends with a blank line. A comment (`: text`) is what the server sends as keepalive
// while a long prompt is prefilling: clients ignore it, but it proves the connection is alive and
// lets the server notice a departed client (the write fails).
#pragma once

#include <string>
#include <string_view>

namespace trove::server {

// One event. `event` empty → no `event:` line (OpenAI dialects); Anthropic names every event.
std::string sse_event(std::string_view event, std::string_view data);

// A comment line; newlines in `text` are replaced by spaces so it stays one comment.
std::string sse_comment(std::string_view text);

// The OpenAI end-of-stream marker: "data: [DONE]\n\n".
std::string sse_done();

}  // namespace trove::server
