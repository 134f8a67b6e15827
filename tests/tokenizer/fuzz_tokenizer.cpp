// libFuzzer: random bytes through encode (user and template text) and decode. encode puts the text
// in NFC first (as the reference does), so the round trip must give Tokenizer::normalize(text) for
// user text, and text itself when it is already in NFC; the streaming detokenizer (raw mode) must
// reproduce exactly the bytes decode gives.
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
  const std::string nfc = Tokenizer::normalize(text);
  for (bool special : {false, true}) {
    const auto ids = tok.encode(text, special);
    auto back = tok.decode(ids);
    if (!back.ok()) std::abort();
    if (!special && *back != nfc) std::abort();
    if (nfc == text && *back != text) std::abort();
    // With added tokens the text between them is normalized piece by piece; what comes back is
    // stable: encoding it again gives the same ids.
    if (special && tok.encode(*back, special) != ids) std::abort();
    Detokenizer d(tok, /*render_special=*/true, /*replace_invalid=*/false);
    std::string streamed;
    for (TokenId id : ids) streamed += *d.push(id);
    streamed += d.flush();
    if (streamed != *back) std::abort();
  }
  return 0;
}
