// server/peer.h on real loopback sockets: the server side's socket is found by the client's address
// and port, reads as connected while the client is there (even with unread data pending) and as
// closed once the client closes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "server/peer.h"

using namespace trove::server;

namespace {
struct Pair {
  int listener = -1, client = -1, accepted = -1;
  int client_port = 0;
  Pair() {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(listener, 4);
    socklen_t len = sizeof(a);
    getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
    client = socket(AF_INET, SOCK_STREAM, 0);
    connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    accepted = accept(listener, nullptr, nullptr);
    sockaddr_in c{};
    len = sizeof(c);
    getsockname(client, reinterpret_cast<sockaddr*>(&c), &len);
    client_port = ntohs(c.sin_port);
  }
  ~Pair() {
    for (int fd : {listener, client, accepted})
      if (fd >= 0) close(fd);
  }
};
}  // namespace

TEST(Peer, FindsTheServerSideSocketByTheClientsAddress) {
  Pair p;
  ASSERT_GE(p.accepted, 0);
  EXPECT_EQ(find_peer_socket("127.0.0.1", p.client_port), p.accepted);
  EXPECT_EQ(find_peer_socket("127.0.0.1", 1), -1);
  EXPECT_EQ(find_peer_socket("10.9.8.7", p.client_port), -1);
}

TEST(Peer, ConnectedUntilTheClientCloses) {
  Pair p;
  ASSERT_GE(p.accepted, 0);
  EXPECT_FALSE(peer_closed(p.accepted));
  ASSERT_EQ(write(p.client, "x", 1), 1);  // pending data is not a close, and is not consumed
  usleep(20000);
  EXPECT_FALSE(peer_closed(p.accepted));
  close(p.client);
  p.client = -1;
  usleep(20000);
  EXPECT_TRUE(peer_closed(p.accepted));
  char c = 0;
  EXPECT_EQ(read(p.accepted, &c, 1), 1);
  EXPECT_EQ(c, 'x');
  EXPECT_FALSE(peer_closed(-1));
}
