// server/peer.h — is the client of a request still connected? For handlers that wait (a non-streaming
// completion) and must cancel their sequence when the client leaves.
//
// Contract: find_peer_socket(remote address, remote port) returns this process's TCP socket whose
// peer is that address and port (-1 when none): cpp-httplib 0.11 hands a handler the peer's address
// but not the socket, and a connected TCP socket's peer identifies it. peer_closed(fd) is true once
// the peer has closed its end (an orderly shutdown reads as 0 bytes, a reset as an error); it never
// consumes data (MSG_PEEK) and never blocks. Linux only, like the rest of trove.
#pragma once

#include <string>

namespace trove::server {

int find_peer_socket(const std::string& remote_addr, int remote_port);
bool peer_closed(int fd);

}  // namespace trove::server
