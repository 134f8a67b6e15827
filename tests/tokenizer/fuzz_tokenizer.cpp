// libFuzzer: random bytes through encode (user and template text) and decode; the round trip must
// be exact, and the streaming detokenizer (raw mode) must reproduce the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/tokenizer/tokenizer.h"
#include "tests/tokenizer/tokenizer_test_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trove::tokenizer;
  const auto& tok = testing::qwen3();
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool special : {false, true}) {
    const auto ids = tok.encode(text, special);
    auto back = tok.decode(ids);
    if (!back.ok() || *back != text) std::abort();
    Detokenizer d(tok, /*render_special=*/true, /*replace_invalid=*/false);
    std::string streamed;
    for (TokenId id : ids) streamed += *d.push(id);
    streamed += d.flush();
    if (streamed != text) std::abort();
  }
  return 0;
}
