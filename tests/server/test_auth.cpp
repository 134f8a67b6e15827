#include "server/auth.h"

#include <gtest/gtest.h>

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
