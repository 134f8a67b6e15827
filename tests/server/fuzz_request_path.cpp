// libFuzzer over the request path a client's bytes take before the scheduler: the body → lenient JSON
// (server/request_body.h) → each dialect's parser (server/request.h) → Conversation → both chat
// renderers → the tokenizer. Beyond "no crash, no sanitizer report", it checks the promises the HTTP
// layer relies on:
//  - every error message is valid UTF-8 (writing it as JSON must not throw: that was a bare 500);
//  - every rendered prompt is valid UTF-8 (the body was repaired, so nothing invalid may get through);
//  - a body the leniency accepted parses again unchanged after its repair (the repair is idempotent).
// Seed corpus: tests/server/corpus/ (also replayed over HTTP by test_server_hostile).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/chat/render.h"
#include "server/request.h"
#include "server/request_body.h"
#include "tests/tokenizer/tokenizer_test_model.h"

namespace {

using namespace trove;

void require(bool ok, const char* what, const std::string& detail) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_request_path: %s\n%s\n", what, detail.c_str());
  std::abort();
}

bool valid_utf8(const std::string& s) { return server::repair_utf8(s) == s; }

void check_error(const server::ApiError& e) {
  require(e.status >= 400 && e.status < 500, "a client error that is not a 4xx", e.message);
  require(valid_utf8(e.message), "an error message that is not valid UTF-8", e.message);
  require(!e.message.empty(), "an empty error message", "");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto qwen3 = chat::make_qwen3_renderer();
  static const auto coder = chat::make_qwen3_coder_renderer();
  const auto& tok = tokenizer::testing::qwen3();

  const std::string body(reinterpret_cast<const char*>(data), size);
  server::ParsedBody b = server::parse_request_body(body);
  if (!b.ok()) {
    check_error(b.error);
    return 0;
  }
  const server::RepairedJsonText once = server::repair_json_text(body);
  const server::RepairedJsonText twice = server::repair_json_text(once.text);
  require(twice.text == once.text && twice.repairs.invalid_utf8 == 0 && twice.repairs.lone_surrogates == 0,
          "the repair is not idempotent", body);

  using Parser = server::ParsedRequest (*)(const chat::Json&);
  for (Parser parse : {Parser{server::parse_openai_chat}, Parser{server::parse_anthropic_messages},
                       Parser{server::parse_anthropic_count_tokens}, Parser{server::parse_responses}}) {
    server::ParsedRequest p = parse(*b.json);
    if (!p.ok()) {
      check_error(p.error);
      continue;
    }
    (void)server::tools_for_parser(p.job->conversation).dump();
    for (const chat::ChatRenderer* r : {qwen3.get(), coder.get()}) {
      auto text = r->render(p.job->conversation);
      if (!text.ok()) {
        require(valid_utf8(text.status().message()), "a render error that is not valid UTF-8", text.status().message());
        continue;
      }
      require(valid_utf8(*text), "a rendered prompt that is not valid UTF-8", *text);
      (void)tok.encode(*text, /*parse_special=*/true);
    }
  }
  return 0;
}
