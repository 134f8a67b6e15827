// Fuzz target: random bytes, random chunking, both formats, both reasoning flags. Checks that the
// event stream is consistent and that the whole-text run and the chunked run give the same message.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "tests/chat_parse/parser_invariants.h"

using namespace trove::chat;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  OutputParserOptions opt;
  opt.format = (data[0] & 1) ? OutputFormat::kQwen3Coder : OutputFormat::kQwen3;
  opt.starts_in_reasoning = data[0] & 2;
  opt.tools = nlohmann::json::parse(R"([{"type":"function","function":{"name":"f","parameters":{"type":"object",
    "properties":{"n":{"type":"integer"},"b":{"type":"boolean"},"o":{"type":"object"},"a":{"type":"array"},"s":{"type":"string"}}}}}])");
  uint32_t seed = data[1] * 2654435761u + 1;
  std::string text(reinterpret_cast<const char*>(data + 2), size - 2);
  std::vector<std::string> chunks;
  for (size_t i = 0; i < text.size();) {
    seed = seed * 1103515245u + 12345u;
    size_t n = 1 + (seed >> 16) % 7;
    chunks.push_back(text.substr(i, n));
    i += n;
  }
  auto whole = trove::chat::testing::run_chunks(opt, {text});
  auto split = trove::chat::testing::run_chunks(opt, chunks);
  for (auto* r : {&whole, &split}) {
    if (!r->violation.empty()) {
      fprintf(stderr, "invariant violated: %s\n", r->violation.c_str());
      abort();
    }
  }
  auto a = trove::chat::testing::describe(whole.message), b = trove::chat::testing::describe(split.message);
  if (a != b) {
    fprintf(stderr, "chunking changed the result:\n%s\n%s\n", a.c_str(), b.c_str());
    abort();
  }
  return 0;
}
