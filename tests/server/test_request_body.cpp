// Request bodies as bytes (server/request_body.h): invalid UTF-8 and lone surrogate escapes become
// U+FFFD the way Python-based servers accept them; non-JSON, too-deep and unrepresentable bodies get a
// 400 whose message is itself valid UTF-8.
#include "server/request_body.h"

#include <gtest/gtest.h>

namespace {

using trove::chat::Json;
using namespace trove::server;

const std::string kFffd = "\xEF\xBF\xBD";

std::string content_of(const ParsedBody& b) { return (*b.json)["c"].get<std::string>(); }

// The error text must survive being written as JSON (the old bug: it quoted the bad bytes, and
// writing the 400 threw, so the client got a bare 500).
void expect_printable(const ApiError& e) {
  EXPECT_NO_THROW((void)Json(e.message).dump()) << e.message;
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.type, "invalid_request_error");
}

TEST(RequestBody, ValidBodiesAreUnchanged) {
  const std::string body = R"({"c":"h\u00e9llo \ud83d\ude00 é 😀 \\ud83d \"q\"","n":[1,{"a":null}]})";
  auto b = parse_request_body(body);
  ASSERT_TRUE(b.ok()) << b.error.message;
  EXPECT_EQ(content_of(b), "h\xC3\xA9llo \xF0\x9F\x98\x80 \xC3\xA9 \xF0\x9F\x98\x80 \\ud83d \"q\"");
  EXPECT_EQ(b.repairs.invalid_utf8, 0u);
  EXPECT_EQ(b.repairs.lone_surrogates, 0u);
  EXPECT_EQ(repair_json_text(body).text, body);
}

TEST(RequestBody, InvalidUtf8InAStringBecomesReplacementCharacters) {
  // One U+FFFD per maximal ill-formed subsequence (Unicode 3.9, Python's errors="replace"):
  //   FF                 -> 1 (never a lead byte)
  //   E2 82 (then 'x')   -> 1 (a truncated 3-byte sequence)
  //   C0 AF              -> 2 (overlong lead C0, then a lone continuation)
  //   ED A0 80           -> 3 (an encoded surrogate: ED only takes 80..9F)
  //   F0 9F 98 (at end)  -> 1
  const std::string body = "{\"c\":\"a\xFF" "b\xE2\x82x\xC0\xAF" "c\xED\xA0\x80" "d\xF0\x9F\x98\"}";
  auto b = parse_request_body(body);
  ASSERT_TRUE(b.ok()) << b.error.message;
  EXPECT_EQ(content_of(b), "a" + kFffd + "b" + kFffd + "x" + kFffd + kFffd + "c" + kFffd + kFffd + kFffd + "d" + kFffd);
  EXPECT_EQ(b.repairs.invalid_utf8, 8u);
}

TEST(RequestBody, LoneSurrogateEscapesBecomeReplacementCharacters) {
  // A high surrogate cut off from its pair (a JavaScript string cut mid-emoji), at the end, before
  // another escape and before text; a low surrogate alone; two high surrogates in a row.
  const std::string body = R"({"c":"x\ud83d","d":"\ud83d\n","e":"\ud83dab","f":"\ude00","g":"\ud83d\ud83d\ude00"})";
  auto b = parse_request_body(body);
  ASSERT_TRUE(b.ok()) << b.error.message;
  const Json& j = *b.json;
  EXPECT_EQ(j["c"], "x" + kFffd);
  EXPECT_EQ(j["d"], kFffd + "\n");
  EXPECT_EQ(j["e"], kFffd + "ab");
  EXPECT_EQ(j["f"], kFffd);
  EXPECT_EQ(j["g"], kFffd + "\xF0\x9F\x98\x80");
  EXPECT_EQ(b.repairs.lone_surrogates, 5u);
}

TEST(RequestBody, KeysAreRepairedToo) {
  auto b = parse_request_body("{\"k\xFF\":1,\"\\udc00\":2}");
  ASSERT_TRUE(b.ok()) << b.error.message;
  EXPECT_EQ((*b.json)["k" + kFffd], 1);
  EXPECT_EQ((*b.json)[kFffd], 2);
}

TEST(RequestBody, NotJsonIsA400WithTheOffset) {
  for (const std::string& body : {std::string("hello"), std::string(""), std::string("{\"c\":"),
                                 std::string("{\"c\":\"x\"} trailing"), std::string("\xFF\xFE{}"),
                                 std::string("{\"c\":\"tab\there\"}")}) {
    auto b = parse_request_body(body);
    ASSERT_FALSE(b.ok()) << body;
    expect_printable(b.error);
    EXPECT_NE(b.error.message.find("not valid JSON (byte "), std::string::npos) << b.error.message;
  }
}

TEST(RequestBody, InvalidBytesOutsideStringsGetAPrintableMessage) {
  auto b = parse_request_body("{\"c\":\xC3\x28}");
  ASSERT_FALSE(b.ok());
  expect_printable(b.error);
}

TEST(RequestBody, DeepNestingIsRefusedBeforeParsing) {
  const std::string ok = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(parse_request_body(ok).ok());
  // Brackets inside strings do not count.
  EXPECT_TRUE(parse_request_body("{\"c\":\"" + std::string(10000, '[') + "\"}").ok());
  const std::string deep = std::string(1'000'000, '[');
  auto b = parse_request_body(deep);
  ASSERT_FALSE(b.ok());
  expect_printable(b.error);
  EXPECT_NE(b.error.message.find("more than 128 levels deep (at byte 128)"), std::string::npos) << b.error.message;
  auto o = parse_request_body("{\"a\":" + std::string(200, '{'));
  ASSERT_FALSE(o.ok());
}

TEST(RequestBody, HugeNumbers) {
  // Too large for a double: refused, with a message (nlohmann throws out_of_range, not parse_error).
  auto b = parse_request_body(R"({"max_tokens":1e400})");
  ASSERT_FALSE(b.ok());
  expect_printable(b.error);
  EXPECT_NE(b.error.message.find("range of a double"), std::string::npos) << b.error.message;
  // Integers past 64 bits become doubles; a long run of digits parses.
  auto big = parse_request_body(R"({"n":123456789012345678901234567890,"m":-99999999999999999999999})");
  ASSERT_TRUE(big.ok()) << big.error.message;
  EXPECT_TRUE((*big.json)["n"].is_number_float());
  auto digits = parse_request_body("{\"n\":1" + std::string(300, '0') + "}");
  EXPECT_TRUE(digits.ok());
}

TEST(RequestBody, RepairUtf8) {
  size_t n = 0;
  EXPECT_EQ(repair_utf8("ok \xC3\xA9 \xFF\xFE end", &n), "ok \xC3\xA9 " + kFffd + kFffd + " end");
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(repair_utf8("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // above U+10FFFF
  EXPECT_EQ(repair_utf8("\xF4\x8F\xBF\xBF"), "\xF4\x8F\xBF\xBF");              // U+10FFFF itself
}

}  // namespace
