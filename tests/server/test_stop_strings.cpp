#include "server/stop_strings.h"

#include <gtest/gtest.h>

using trove::server::StopStringMatcher;

TEST(StopStrings, NoStopsPassesEverything) {
  StopStringMatcher m({});
  auto p = m.feed("hello");
  EXPECT_EQ(p.text, "hello");
  EXPECT_FALSE(p.stopped);
  EXPECT_EQ(m.finish(), "");
}

TEST(StopStrings, MatchInsideOnePiece) {
  StopStringMatcher m({"END"});
  auto p = m.feed("abcENDxyz");
  EXPECT_EQ(p.text, "abc");
  EXPECT_TRUE(p.stopped);
  EXPECT_EQ(m.feed("more").text, "");
  EXPECT_EQ(m.finish(), "");
}

TEST(StopStrings, MatchAcrossPiecesHoldsBackThePrefix) {
  StopStringMatcher m({"</end>"});
  auto a = m.feed("text </");
  EXPECT_EQ(a.text, "text ");
  EXPECT_FALSE(a.stopped);
  auto b = m.feed("en");
  EXPECT_EQ(b.text, "");
  auto c = m.feed("d> tail");
  EXPECT_EQ(c.text, "");
  EXPECT_TRUE(c.stopped);
}

TEST(StopStrings, FalseStartIsReleased) {
  StopStringMatcher m({"</end>"});
  EXPECT_EQ(m.feed("a</e").text, "a");
  EXPECT_EQ(m.feed("x").text, "</ex");
  EXPECT_EQ(m.feed("</").text, "");
  EXPECT_EQ(m.finish(), "</");
}

TEST(StopStrings, EarliestOfSeveralWins) {
  StopStringMatcher m({"zz", "b"});
  auto p = m.feed("azzb");
  EXPECT_EQ(p.text, "a");
  EXPECT_TRUE(p.stopped);
}

TEST(StopStrings, CharByCharFeedingStopsAtTheMatch) {
  StopStringMatcher m({"abcd", "cc"});
  std::string in = "abcabcxcabcdz";
  std::string out;
  bool stopped = false;
  for (char c : in) {
    auto p = m.feed(std::string(1, c));
    out += p.text;
    stopped |= p.stopped;
  }
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "abcabcxc");
}

TEST(StopStrings, CharByCharConcatenationEqualsInputWhenNoStop) {
  StopStringMatcher m({"abcd", "cc"});
  std::string in = "abcabcxcabcz";
  std::string out;
  for (char c : in) {
    auto p = m.feed(std::string(1, c));
    EXPECT_FALSE(p.stopped);
    out += p.text;
  }
  out += m.finish();
  EXPECT_EQ(out, in);
}

TEST(StopStrings, ReportsWhichStopStringMatched) {
  StopStringMatcher m({"END", "</x>"});
  EXPECT_EQ(m.matched(), "");
  m.feed("abc </");
  auto p = m.feed("x> END");
  EXPECT_TRUE(p.stopped);
  EXPECT_EQ(m.matched(), "</x>");
}
