// Qwen2/Qwen3 byte-level BPE tokenizer and a streaming detokenizer.
//
// Contract:
//  - A Vocabulary (tokens, token types, merges, special ids) comes from GGUF metadata
//    (Tokenizer::from_gguf) or, for development, from a Hugging Face tokenizer.json
//    (Tokenizer::from_hf_json). Only `tokenizer.ggml.model == gpt2` with `tokenizer.ggml.pre == qwen2`
//    is accepted; anything else is refused with an error naming the key and value.
//  - encode(text, parse_special): with parse_special, every added token (types CONTROL and
//    USER_DEFINED: <|im_start|>, <think>, <tool_call>, ...) found in `text` becomes its own id and
//    the text between them is NFC-normalized, then goes through the pre-tokenizer regex + BPE.
//    Without it (user text), added tokens are plain characters. Any byte string is accepted: bytes
//    that are not valid UTF-8 become byte-level tokens, so decode(encode(s)) == normalize(s) for
//    every s, and == s for every s already in NFC.
//  - decode(ids) returns the exact bytes (possibly invalid UTF-8 if the ids are cut mid code point).
//  - Detokenizer: fed one id at a time, returns only complete UTF-8; holds back a trailing partial
//    code point until the next token completes it; flush() ends the stream.
//  - A Tokenizer is immutable after construction except for an internal word cache guarded by a
//    mutex; encode/decode are safe from many threads.
//
// Normalization: like the reference (Qwen3's tokenizer.json declares an NFC normalizer), the text
// between added tokens is put in Unicode NFC (utf8proc) before it is split, so decomposed text
// (macOS file names, pasted text) gets the ids the model was trained on. See docs/tokenizer.md.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace trove::gguf {
class GgufFile;
}

namespace trove::tokenizer {

using TokenId = int32_t;

// GGUF token types (llama.cpp's numbering).
enum class TokenType : int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

struct Vocabulary {
  std::vector<std::string> tokens;  // byte-level encoded pieces (added tokens: their literal text)
  std::vector<int32_t> types;       // TokenType per token (same length as tokens)
  std::vector<std::string> merges;  // "left right", in rank order
  TokenId bos = -1, eos = -1, pad = -1;
  std::string model = "gpt2";
  std::string pre = "qwen2";
};

class Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> from_vocabulary(Vocabulary v);
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const gguf::GgufFile& f);
  static Result<std::unique_ptr<Tokenizer>> from_hf_json(const std::string& tokenizer_json_path);
  ~Tokenizer();

  std::vector<TokenId> encode(std::string_view text, bool parse_special) const;
  // Appends to `out` (no allocation of a fresh vector per call).
  void encode_into(std::string_view text, bool parse_special, std::vector<TokenId>& out) const;

  // Exact bytes. Ids out of range are an error naming the id. Special (added) tokens render their
  // text when `render_special`, else nothing.
  Result<std::string> decode(std::span<const TokenId> ids, bool render_special = true) const;

  size_t n_vocab() const { return pieces_.size(); }
  TokenId bos() const { return vocab_.bos; }
  TokenId eos() const { return vocab_.eos; }
  TokenId pad() const { return vocab_.pad; }
  bool is_added(TokenId id) const;        // CONTROL or USER_DEFINED
  TokenType type(TokenId id) const;
  // The raw bytes a token stands for (added tokens: their text). Empty for out-of-range ids.
  const std::string& piece(TokenId id) const;
  // Id of an exact token string (byte-level encoded for normal tokens), or -1.
  TokenId find(std::string_view token_text) const;

  const std::string& split_pattern() const;  // the PCRE2 pattern actually compiled

  // NFC (Unicode canonical composition) of every valid UTF-8 run of `text`; bytes that are not valid
  // UTF-8 stay as they are. What encode() does to text before it is split.
  static std::string normalize(std::string_view text);

 private:
  Tokenizer() = default;
  Status build();
  void encode_text(std::string_view text, std::vector<TokenId>& out) const;
  void encode_word(std::string_view word, std::vector<TokenId>& out) const;
  void bpe(std::string_view word, std::vector<TokenId>& out) const;

  Vocabulary vocab_;
  std::vector<std::string> pieces_;                    // raw bytes per id
  std::unordered_map<std::string_view, TokenId> ids_;  // token text -> id (views into vocab_.tokens)
  TokenId byte_token_[256] = {};                       // id of each single byte's token
  std::unordered_map<uint64_t, std::pair<int32_t, TokenId>> merge_;  // (left,right) -> (rank, merged)
  std::vector<TokenId> added_;                         // added token ids, longest text first
  bool added_first_byte_[256] = {};
  struct Regex;
  std::unique_ptr<Regex> regex_;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<TokenId>> cache_;
};

// Streaming detokenizer: see the contract above. Invalid byte sequences (which no later token can
// complete) are emitted as U+FFFD when `replace_invalid`, else passed through raw.
class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer& tok, bool render_special = false, bool replace_invalid = true)
      : tok_(tok), render_special_(render_special), replace_invalid_(replace_invalid) {}
  // Returns the text that became complete with this token (possibly empty). Unknown ids are an error.
  Result<std::string> push(TokenId id);
  // Everything still held back (an incomplete trailing sequence becomes U+FFFD / raw bytes).
  std::string flush();

 private:
  std::string take_complete(bool at_end);
  const Tokenizer& tok_;
  bool render_special_, replace_invalid_;
  std::string pending_;
};

// Length of the longest prefix of `s` that ends on a code point boundary, treating a trailing
// sequence that is a valid-but-incomplete UTF-8 prefix as not yet complete. Exposed for tests.
size_t complete_utf8_prefix(std::string_view s);

}  // namespace trove::tokenizer
