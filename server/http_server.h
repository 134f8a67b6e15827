// server/http_server.h — trove's HTTP front: routes, auth, limits, streaming, metrics.
//
// Contract:
//  - HttpServer serves one loaded Engine through one Scheduler. Routes: POST /v1/chat/completions,
//    POST /v1/messages, POST /v1/messages/count_tokens, POST /v1/responses, GET /v1/models,
//    GET /health, GET /metrics (docs/api.md lists every field), and the dashboard: GET /ui and
//    GET /v1/trove/{status,tree,events} (server/ui.h).
//  - bind() listens on options.host:options.port (port 0 = a free port) and returns the port; run()
//    serves until stop() (from any thread).
//  - With an API key set, every route but /health needs `Authorization: Bearer KEY` or `x-api-key: KEY`
//    (401 in the dialect's error shape otherwise). Bodies over max_body_bytes get 413. Malformed JSON,
//    wrong field types (message names the JSON path) and prompts that do not fit the context get 400
//    in each client's own words (Anthropic `prompt is too long: N tokens > M maximum`, OpenAI
//    `code: "context_length_exceeded"`). Every rejected request is logged (status and message).
//    Invalid UTF-8 and lone surrogate escapes inside JSON strings become U+FFFD
//    (server/request_body.h). Nothing a client sends gets a 500: a handler that throws answers
//    500 api_error in the dialect's shape, logs it, and the server goes on.
//  - /v1/models (and /v1/models/ANY-ID) describes the one model with its context window in the field
//    names clients read; whatever model name a request sends, the one model serves it.
//  - Streaming responses are SSE over chunked HTTP. While nothing is generated for keepalive_ms
//    (a long prefill) an SSE comment is written; a failed write means the client left: its request is
//    cancelled and the scheduler frees its sequence within one step.
//  - Overload: at most max_queue requests wait for a sequence slot; beyond that a generation request
//    gets 503 (OpenAI type server_error, Anthropic overloaded_error) with a Retry-After header, before
//    anything is streamed. /health and /metrics are never queued.
//  - Nothing from prompts or outputs is logged unless log_prompts.
//  - The force-output test hook (`trove_force_output` body field) is only honoured with
//    test_force_output; otherwise the field is rejected with 400. With force_script (test hook too),
//    a request without the field gets the output of the script's first matching rule.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/speculative.h"
#include "kvstore/store.h"
#include "server/force_script.h"

namespace trove::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;                      // empty: no auth
  size_t max_body_bytes = 32u << 20;
  bool log_prompts = false;
  bool test_force_output = false;
  // Test hook (server/force_script.h): replies forced by what a request carries, for real clients.
  std::vector<ForceRule> force_script;
  int keepalive_ms = 3000;
  std::string model_id;                     // what /v1/models calls the model
  // Most tokens generated for a request that sets no limit (Codex sends none): Qwen3's recommended
  // output length. The context end still stops earlier.
  uint32_t default_max_tokens = 32768;
  int http_threads = 64;                    // concurrent connections served (streams hold one each)
  // A connection whose client sends nothing for this long while the server waits for its request
  // (header or body bytes) is closed. Bounds what a stalled or slowloris client holds (docs/api.md).
  int read_timeout_s = 30;
  // The KV store the engine writes (null with --no-store): the dashboard shows its health and trees.
  std::shared_ptr<kv::Store> store;
  uint64_t store_budget = 0;                // its --store-size, bytes
  int ui_sample_ms = 1000;                  // the dashboard's time-series period
  // Requests that may wait behind the running sequences (--parallel); one more gets 503 with
  // Retry-After: retry_after_s (overload is answered at once instead of by a growing wait).
  size_t max_queue = 64;
  int retry_after_s = 2;
  // Speculative decoding for requests without an x-trove-speculative header (--speculative), and the
  // draft model (--draft-model; null: none), which the scheduler's thread drives beside the engine.
  engine::SpecMethod speculative = engine::SpecMethod::kAuto;
  engine::Engine* draft = nullptr;
};

class HttpServer {
 public:
  HttpServer(engine::Engine& engine, ServerOptions options);
  ~HttpServer();
  Result<int> bind();
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace trove::server
