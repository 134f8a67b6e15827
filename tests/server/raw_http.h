// Raw-socket HTTP for the server's unit tests: an HttpServer over a FakeEngine on a free loopback port
// (Served), and a client that writes exactly the bytes a test gives it and reads exactly what comes
// back, so tests control when a client reads, stalls, half-closes or leaves.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "server/http_server.h"
#include "tests/server/fake_engine.h"

namespace trove::server::testing {

class Served {
 public:
  Served(FakeEngine& e, ServerOptions o) : server_(e, [&] { o.port = 0; o.model_id = "fake"; return o; }()) {
    auto p = server_.bind();
    EXPECT_TRUE(p.ok());
    port = *p;
    thread_ = std::thread([this] { server_.run(); });
  }
  ~Served() {
    server_.stop();
    thread_.join();
  }
  int port = 0;

 private:
  HttpServer server_;
  std::thread thread_;
};

inline int connect_to(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

inline void send_all(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server closed the connection; the reply (if any) tells the test why
    sent += static_cast<size_t>(n);
  }
}

inline std::string http_request_bytes(const std::string& method, const std::string& path, const std::string& body,
                                      const std::string& extra_headers = "", bool close = true) {
  return method + " " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra_headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n" + (close ? "Connection: close\r\n" : "") +
         "\r\n" + body;
}

inline void send_request(int fd, const std::string& method, const std::string& path, const std::string& body,
                         const std::string& extra_headers = "") {
  send_all(fd, http_request_bytes(method, path, body, extra_headers));
}

// Reads until `until` appears (or the peer closes / `limit` passes); returns everything read.
inline std::string read_until(int fd, const std::string& until,
                              std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  std::string got;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (got.find(until) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    timeval tv{0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n > 0) got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

inline std::string request(int port, const std::string& method, const std::string& path, const std::string& body,
                           const std::string& headers = "") {
  int fd = connect_to(port);
  send_request(fd, method, path, body, headers);
  std::string r = read_until(fd, "\r\n\r\n{never}");
  ::close(fd);
  return r;
}

// One response split into its status code, head and body (the raw text when it does not parse).
struct Reply {
  int status = 0;
  std::string head, body;
};

inline Reply parse_reply(const std::string& raw) {
  Reply r;
  const size_t sp = raw.find(' ');
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || sp == std::string::npos) {
    r.body = raw;
    return r;
  }
  r.status = std::atoi(raw.c_str() + sp + 1);
  const size_t end = raw.find("\r\n\r\n");
  r.head = raw.substr(0, end);
  if (end != std::string::npos) r.body = raw.substr(end + 4);
  if (r.head.find("Transfer-Encoding: chunked") != std::string::npos) {
    // Chunked: size in hex, CRLF, data, CRLF; a zero size ends it.
    std::string body;
    size_t pos = 0;
    while (pos < r.body.size()) {
      const size_t eol = r.body.find("\r\n", pos);
      if (eol == std::string::npos) break;
      const size_t n = std::strtoul(r.body.substr(pos, eol - pos).c_str(), nullptr, 16);
      if (n == 0) break;
      body += r.body.substr(eol + 2, n);
      pos = eol + 2 + n + 2;
    }
    r.body = body;
  }
  return r;
}

// Reads one response on a connection that may stay open (keep-alive, pipelining): its head, then its
// Content-Length body or its chunked body up to the last chunk. `carry` keeps bytes already read past
// this response (the next pipelined one) for the next call.
inline std::string read_one_response(int fd, std::string& carry,
                                     std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  char buf[4096];
  auto complete = [&]() -> size_t {  // the response's length in carry, or 0 while incomplete
    const size_t head_end = carry.find("\r\n\r\n");
    if (head_end == std::string::npos) return 0;
    const std::string head = carry.substr(0, head_end);
    if (head.find("Transfer-Encoding: chunked") != std::string::npos) {
      const size_t last = carry.find("\r\n0\r\n\r\n", head_end);
      return last == std::string::npos ? 0 : last + 7;
    }
    const size_t cl = head.find("Content-Length: ");
    const size_t n = cl == std::string::npos ? 0 : std::strtoul(head.c_str() + cl + 16, nullptr, 10);
    return carry.size() >= head_end + 4 + n ? head_end + 4 + n : 0;
  };
  size_t n = 0;
  while ((n = complete()) == 0 && std::chrono::steady_clock::now() < deadline) {
    timeval tv{0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
    if (got == 0) break;
    if (got > 0) carry.append(buf, static_cast<size_t>(got));
  }
  if (n == 0) n = carry.size();  // closed or timed out: whatever arrived
  std::string one = carry.substr(0, n);
  carry.erase(0, n);
  return one;
}

// The `data:` payloads of an SSE body, in order.
inline std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t eol = body.find('\n', pos);
    out.push_back(body.substr(pos + 6, eol == std::string::npos ? std::string::npos : eol - pos - 6));
    pos = eol == std::string::npos ? body.size() : eol;
  }
  return out;
}

inline Reply post(int port, const std::string& path, const std::string& body, const std::string& headers = "") {
  return parse_reply(request(port, "POST", path, body, headers));
}

}  // namespace trove::server::testing
