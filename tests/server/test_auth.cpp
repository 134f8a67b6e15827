#include "server/auth.h"

#include <gtest/gtest.h>

#include <string>

using trove::server::api_key_matches;

TEST(Auth, NoKeyConfiguredAllowsEverything) {
  EXPECT_TRUE(api_key_matches("", "", ""));
  EXPECT_TRUE(api_key_matches("", "Bearer whatever", ""));
}

TEST(Auth, BearerHeader) {
  EXPECT_TRUE(api_key_matches("sk-1", "Bearer sk-1", ""));
  EXPECT_TRUE(api_key_matches("sk-1", "bearer sk-1", ""));
  EXPECT_FALSE(api_key_matches("sk-1", "Bearer sk-2", ""));
  EXPECT_FALSE(api_key_matches("sk-1", "Bearer sk-1x", ""));
  EXPECT_FALSE(api_key_matches("sk-1", "Basic sk-1", ""));
  EXPECT_FALSE(api_key_matches("sk-1", "sk-1", ""));
  EXPECT_FALSE(api_key_matches("sk-1", "", ""));
}

TEST(Auth, XApiKeyHeader) {
  EXPECT_TRUE(api_key_matches("sk-1", "", "sk-1"));
  EXPECT_FALSE(api_key_matches("sk-1", "", "sk-"));
  EXPECT_TRUE(api_key_matches("sk-1", "Bearer wrong", "sk-1"));
}

TEST(Auth, KeysThatArePrefixesOrRepetitionsDoNotMatch) {
  // The comparison walks the client's value and wraps around the key: a repetition of the key must
  // still fail on the length.
  EXPECT_FALSE(api_key_matches("ab", "", "abab"));
  EXPECT_FALSE(api_key_matches("ab", "", "a"));
  EXPECT_FALSE(api_key_matches("ab", "Bearer abab", ""));
  EXPECT_FALSE(api_key_matches("abab", "", "ab"));
  EXPECT_TRUE(api_key_matches("k\xFF", "", "k\xFF"));
  EXPECT_FALSE(api_key_matches("k", "", std::string("k\0", 2)));
}
