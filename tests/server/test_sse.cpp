#include "server/sse.h"

#include <gtest/gtest.h>

using trove::server::sse_comment;
using trove::server::sse_done;
using trove::server::sse_event;

TEST(Sse, UnnamedEventIsOneDataLineAndBlankLine) {
  EXPECT_EQ(sse_event("", R"({"a":1})"), "data: {\"a\":1}\n\n");
}

TEST(Sse, NamedEventHasEventLineFirst) {
  EXPECT_EQ(sse_event("message_start", "{}"), "event: message_start\ndata: {}\n\n");
}

TEST(Sse, MultiLinePayloadIsSplitIntoDataLines) {
  EXPECT_EQ(sse_event("", "a\nb\r\nc\rd"), "data: a\ndata: b\ndata: c\ndata: d\n\n");
  EXPECT_EQ(sse_event("", "x\n"), "data: x\ndata: \n\n");
  EXPECT_EQ(sse_event("", ""), "data: \n\n");
}

TEST(Sse, CommentStaysOneLine) {
  EXPECT_EQ(sse_comment("keepalive"), ": keepalive\n\n");
  EXPECT_EQ(sse_comment("a\nb"), ": a b\n\n");
}

TEST(Sse, DoneMarker) { EXPECT_EQ(sse_done(), "data: [DONE]\n\n"); }
