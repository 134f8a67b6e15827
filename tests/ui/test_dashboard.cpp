// The dashboard's endpoints (server/ui.h) over the scripted fake engine and a real KV store: what
// GET /v1/trove/status says about requests (finished, running, queued), the series, the tree, the
// event stream, the embedded page, and the API key / session cookie rules. Raw sockets, as in
// tests/server/test_http_server.cpp, so headers and status lines are checked exactly.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <thread>

#include "kvstore/prefix_tree.h"
#include "server/activity_series.h"
#include "tests/kvstore/store_test_util.h"
#include "tests/server/fake_engine.h"

namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using trove::server::HttpServer;
using trove::server::ServerOptions;
using trove::server::testing::FakeEngine;

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

int connect_to(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

void send_request(int fd, const std::string& method, const std::string& path, const std::string& body,
                  const std::string& headers = "", const std::string& type = "application/json") {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: " + type + "\r\n" + headers +
                    "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
}

std::string read_until(int fd, const std::string& until, std::chrono::milliseconds limit = 20s) {
  std::string got;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (got.find(until) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    timeval tv{0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n > 0) got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

struct Reply {
  int status = 0;
  std::string head;
  std::string body;
  std::string header(const std::string& name) const {
    const std::string key = "\r\n" + name + ": ";
    const size_t p = head.find(key);
    if (p == std::string::npos) return {};
    const size_t e = head.find("\r\n", p + key.size());
    return head.substr(p + key.size(), e - p - key.size());
  }
};

Reply request(int port, const std::string& method, const std::string& path, const std::string& body = "",
              const std::string& headers = "", const std::string& type = "application/json") {
  int fd = connect_to(port);
  send_request(fd, method, path, body, headers, type);
  const std::string r = read_until(fd, "\r\n\r\n{never}");
  ::close(fd);
  Reply out;
  const size_t split = r.find("\r\n\r\n");
  out.head = r.substr(0, split);
  out.body = split == std::string::npos ? "" : r.substr(split + 4);
  if (r.size() > 12) out.status = std::stoi(r.substr(9, 3));
  return out;
}

json status_of(int port, const std::string& query = "") {
  const Reply r = request(port, "GET", "/v1/trove/status" + query);
  EXPECT_EQ(r.status, 200) << r.head << r.body;
  return json::parse(r.body);
}

const json* sequence_with_id(const json& status, const std::string& id) {
  for (const auto& s : status["sequences"]) {
    if (s["id"] == id) return &s;
  }
  return nullptr;
}

}  // namespace

TEST(Dashboard, StatusListsAFinishedRequestWithItsLabelsAndTokens) {
  FakeEngine e(2, 64);
  e.script = e.tokenizer().encode(" one two three four", false);
  ServerOptions o;
  o.ui_sample_ms = 20;
  Served s(e, o);
  const Reply r = request(s.port, "POST", "/v1/chat/completions",
                          R"({"max_tokens":3,"messages":[{"role":"user","content":"hello there"}]})",
                          "User-Agent: test-agent/1.0\r\nx-trove-cache-namespace: team-a\r\n");
  ASSERT_EQ(r.status, 200) << r.body;
  const json reply = json::parse(r.body);
  const uint32_t prompt = reply["usage"]["prompt_tokens"];

  const json st = status_of(s.port);
  EXPECT_EQ(st["server"]["model"], "fake");
  EXPECT_EQ(st["server"]["parallel"], 2);
  EXPECT_EQ(st["server"]["store"], false);
  EXPECT_EQ(st["server"]["auth"], false);
  EXPECT_EQ(st["store"], nullptr);
  const json* q = sequence_with_id(st, reply["id"]);
  ASSERT_NE(q, nullptr) << st["sequences"].dump();
  EXPECT_EQ((*q)["dialect"], "chat.completions");
  EXPECT_EQ((*q)["user_agent"], "test-agent/1.0");
  EXPECT_EQ((*q)["namespace"], "team-a");
  EXPECT_EQ((*q)["state"], "finished");
  EXPECT_EQ((*q)["finish"], "length");
  EXPECT_EQ((*q)["prompt_tokens"], prompt);
  EXPECT_EQ((*q)["computed_tokens"], prompt);  // the fake engine caches nothing
  EXPECT_EQ((*q)["gpu_cached_tokens"], 0);
  EXPECT_EQ((*q)["store_cached_tokens"], 0);
  EXPECT_EQ((*q)["generated_tokens"], 3);
  EXPECT_TRUE((*q)["ttft_seconds"].is_number());
  EXPECT_TRUE((*q)["ended_seconds_ago"].is_number());
  // The first token comes from the prefill step, the other two from decode steps.
  EXPECT_EQ(st["totals"]["prefill_tokens"], prompt);
  EXPECT_EQ(st["totals"]["decode_tokens"], 2);
  EXPECT_EQ(st["totals"]["generated_tokens"], 3);
  EXPECT_EQ(st["totals"]["completed"], 1);
  // Speculation: none (the fake engine verifies no drafts), and no draft model.
  EXPECT_EQ(st["speculative"]["lookup"], (json{{"drafted", 0}, {"accepted", 0}, {"steps", 0}}));
  EXPECT_EQ(st["speculative"]["draft"], (json{{"drafted", 0}, {"accepted", 0}, {"steps", 0}}));
  EXPECT_EQ(st["speculative"]["draft_model"], false);
  EXPECT_EQ(st["speculative"]["draft_step_seconds"], 0.0);
  EXPECT_EQ(st["speculative"]["auto_draft_tokens"], -1);

  // The series catches up within a few samples and adds up to the same totals.
  json series;
  for (int i = 0; i < 100; ++i) {
    series = status_of(s.port)["series"];
    uint64_t sum = 0;
    for (const auto& v : series["prefill_tokens"]) sum += v.get<uint64_t>();
    if (sum == prompt) break;
    std::this_thread::sleep_for(20ms);
  }
  uint64_t prefill = 0, decode = 0, ttfts = 0;
  for (size_t i = 0; i < series["t"].size(); ++i) {
    prefill += series["prefill_tokens"][i].get<uint64_t>();
    decode += series["decode_tokens"][i].get<uint64_t>();
    ttfts += series["ttft_count"][i].get<uint64_t>();
    if (i) EXPECT_GT(series["t"][i], series["t"][i - 1]);
  }
  EXPECT_EQ(prefill, prompt);
  EXPECT_EQ(decode, 2u);
  EXPECT_EQ(ttfts, 1u);
  for (const char* column : {"seconds", "prefill_tps", "decode_tps", "ttft_mean", "ttft_max", "gpu_hit_tokens",
                             "store_hit_tokens", "store_block_reads", "store_blocks_written", "pool_used_blocks",
                             "pool_cached_blocks", "pool_total_blocks", "active", "queued"}) {
    ASSERT_TRUE(series.contains(column)) << column;
    EXPECT_EQ(series[column].size(), series["t"].size()) << column;
  }
  // since= gives only the newer samples; series=0 none.
  const int64_t last = series["t"].back();
  for (const auto& t : status_of(s.port, "?since=" + std::to_string(last))["series"]["t"]) EXPECT_GT(t, last);
  EXPECT_FALSE(status_of(s.port, "?series=0").contains("series"));
  EXPECT_EQ(request(s.port, "GET", "/v1/trove/status?since=yesterday").status, 400);
}

TEST(Dashboard, RunningAndQueuedRequestsShowTheirState) {
  FakeEngine e(1, 64);  // one slot: the second request waits in the queue
  e.script.assign(5000, e.tokenizer().encode(" tick", false)[0]);
  e.step_delay = 10ms;
  Served s(e, ServerOptions{});
  const std::string body = R"({"stream":true,"max_tokens":5000,"messages":[{"role":"user","content":"hi"}]})";
  int first = connect_to(s.port), second = connect_to(s.port);
  send_request(first, "POST", "/v1/chat/completions", body, "User-Agent: agent-one\r\n");
  ASSERT_NE(read_until(first, "tick").find("tick"), std::string::npos);
  send_request(second, "POST", "/v1/messages",
               R"({"stream":true,"max_tokens":5000,"messages":[{"role":"user","content":"hi"}]})", "User-Agent: agent-two\r\n");
  json seqs;
  // The running rows are the scheduler's snapshot of its last loop, the queued ones are live: under a
  // loaded machine the first status with the second request queued can still show the first as it
  // was before its first step, so wait for both (this flaked once in a full -j2 run, 2026-12-05).
  for (int i = 0; i < 200; ++i) {
    seqs = status_of(s.port)["sequences"];
    if (seqs.size() == 2 && seqs[0]["state"] == "queued" && seqs[1]["state"] == "decoding") break;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(seqs.size(), 2u) << seqs.dump();
  // Queued first, then running.
  EXPECT_EQ(seqs[0]["state"], "queued");
  EXPECT_EQ(seqs[0]["dialect"], "messages");
  EXPECT_EQ(seqs[0]["user_agent"], "agent-two");
  EXPECT_EQ(seqs[0]["id"].get<std::string>().rfind("msg_", 0), 0u);
  EXPECT_EQ(seqs[1]["state"], "decoding");
  EXPECT_EQ(seqs[1]["user_agent"], "agent-one");
  EXPECT_GT(seqs[1]["generated_tokens"], 0);
  EXPECT_EQ(seqs[1]["finish"], nullptr);
  ::close(first);
  ::close(second);
  // Both end as cancelled rows.
  json st;
  for (int i = 0; i < 300; ++i) {
    st = status_of(s.port);
    if (st["sequences"].size() == 2 && st["sequences"][0]["state"] == "finished" &&
        st["sequences"][1]["state"] == "finished") {
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(st["sequences"].size(), 2u);
  for (const auto& q : st["sequences"]) EXPECT_EQ(q["finish"], "cancelled") << q.dump();
}

TEST(Dashboard, TreeIsTheStoresPrefixTreeOfANamespace) {
  using namespace trove::kv;
  namespace kvt = trove::kv::testing;
  kvt::TempDir dir;
  auto opened = Store::open(dir.str(), Options{});
  ASSERT_TRUE(opened.ok());
  std::shared_ptr<Store> store = std::move(*opened);
  auto base = kvt::tokens_for(1, 64 * 4);
  kvt::insert_prompt(*store, "alice", "fp", base, 2048);
  for (int b = 0; b < 3; ++b) {
    auto branch = base;
    for (size_t i = 128; i < branch.size(); ++i) branch[i] = (branch[i] + 1 + b) % 1000;
    kvt::insert_prompt(*store, "alice", "fp", branch, 2048);
  }
  kvt::insert_prompt(*store, "bob", "fp", kvt::tokens_for(2, 64), 2048);
  ASSERT_TRUE(store->flush().ok());

  FakeEngine e(1, 64);
  ServerOptions o;
  o.store = store;
  o.store_budget = 1ull << 30;
  Served s(e, o);
  const Reply r = request(s.port, "GET", "/v1/trove/tree?namespace=alice");
  ASSERT_EQ(r.status, 200) << r.body;
  const json tree = json::parse(r.body);
  EXPECT_EQ(tree["namespace"], "alice");
  EXPECT_EQ(tree["blocks"], 4 + 3 * 2);
  ASSERT_EQ(tree["roots"].size(), 1u);
  EXPECT_EQ(tree["roots"][0]["blocks"], 2);
  EXPECT_EQ(tree["roots"][0]["branches"], 4);
  EXPECT_EQ(tree["roots"][0]["leaves"], 4);
  // The same document as kvstore/prefix_tree.h builds (and `trove kv tree --format json` prints).
  std::vector<BlockEntry> entries;
  ASSERT_TRUE(store->for_each_entry([&](const BlockEntry& x) { entries.push_back(x); }).ok());
  PrefixTreeOptions po;
  po.max_nodes = 1000;
  json expected = json::parse(prefix_tree_json(build_prefix_tree(entries, "alice", 64, po), 0));
  json got = tree;
  got.erase("now");
  expected.erase("now");
  EXPECT_EQ(got, expected);

  const json limited = json::parse(request(s.port, "GET", "/v1/trove/tree?namespace=alice&max_nodes=2").body);
  EXPECT_EQ(limited["shown_nodes"], 2);
  EXPECT_EQ(limited["nodes"], 5);
  EXPECT_EQ(request(s.port, "GET", "/v1/trove/tree?max_nodes=lots").status, 400);
  EXPECT_EQ(json::parse(request(s.port, "GET", "/v1/trove/tree?namespace=nobody").body)["roots"].size(), 0u);
  EXPECT_EQ(json::parse(request(s.port, "GET", "/v1/trove/tree?namespace=alice&model=other").body)["blocks"], 0);

  // Store health and the namespaces in the status document.
  const json st = status_of(s.port);
  ASSERT_TRUE(st["store"].is_object());
  EXPECT_EQ(st["store"]["blocks"], 11);
  EXPECT_EQ(st["store"]["budget_bytes"], 1ull << 30);
  EXPECT_GE(st["store"]["segments"], 1);
  EXPECT_EQ(st["store"]["corrupt_blocks"], 0);
  ASSERT_EQ(st["store"]["namespaces"].size(), 2u);
  EXPECT_EQ(st["store"]["namespaces"][0]["namespace"], "alice");
  EXPECT_EQ(st["store"]["namespaces"][0]["blocks"], 10);
}

TEST(Dashboard, TreeWithoutAStoreSaysWhy) {
  FakeEngine e(1, 64);
  Served s(e, ServerOptions{});
  const Reply r = request(s.port, "GET", "/v1/trove/tree?namespace=x");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("--no-store"), std::string::npos) << r.body;
}

TEST(Dashboard, EventsStreamOneStatusPerSampleWithTheNewSamples) {
  FakeEngine e(1, 64);
  ServerOptions o;
  o.ui_sample_ms = 30;
  auto s = std::make_unique<Served>(e, o);
  int fd = connect_to(s->port);
  send_request(fd, "GET", "/v1/trove/events?since=0", "");
  const std::string got = read_until(fd, "}\n\n", 5s);  // the end of the first event
  EXPECT_NE(got.find("Content-Type: text/event-stream"), std::string::npos) << got;
  EXPECT_NE(got.find("retry: 2000"), std::string::npos);
  const size_t a = got.find("event: status\ndata: ");
  ASSERT_NE(a, std::string::npos) << got;
  const size_t from = a + 20;
  const json doc = json::parse(got.substr(from, got.find('\n', from) - from));
  EXPECT_TRUE(doc.contains("sequences"));
  EXPECT_TRUE(doc.contains("totals"));
  EXPECT_FALSE(doc.contains("series"));
  ASSERT_TRUE(doc.contains("samples"));
  EXPECT_TRUE(doc["samples"]["t"].is_array());
  // Stopping the server ends the stream (it does not hold the server open).
  const auto t0 = std::chrono::steady_clock::now();
  s.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  ::close(fd);
}

TEST(Dashboard, ThePageAndItsFilesAreEmbedded) {
  FakeEngine e(1, 64);
  Served s(e, ServerOptions{});
  const Reply page = request(s.port, "GET", "/ui");
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(page.header("Content-Type"), "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("/ui/dashboard.js"), std::string::npos);
  EXPECT_NE(page.header("Content-Security-Policy").find("default-src 'self'"), std::string::npos);
  // Nothing from another origin: no http(s) URL in the page, the script or the style sheet.
  for (const char* f : {"/ui", "/ui/dashboard.js", "/ui/dashboard.css"}) {
    const Reply r = request(s.port, "GET", f);
    ASSERT_EQ(r.status, 200) << f;
    EXPECT_EQ(r.body.find("http://"), r.body.find("http://www.w3.org/2000/svg")) << f;
    EXPECT_EQ(r.body.find("https://"), std::string::npos) << f;
  }
  EXPECT_EQ(request(s.port, "GET", "/ui/dashboard.js").header("Content-Type"), "text/javascript; charset=utf-8");
  EXPECT_EQ(request(s.port, "GET", "/ui/nothing.js").status, 404);
  EXPECT_NE(request(s.port, "GET", "/ui/../CMakeLists.txt").status, 200);
  // Without an API key the login form just leads to the page.
  const Reply login = request(s.port, "POST", "/ui/login", "key=", "", "application/x-www-form-urlencoded");
  EXPECT_EQ(login.status, 303);
  EXPECT_EQ(login.header("Location"), "/ui");
  EXPECT_EQ(login.header("Set-Cookie"), "");
}

TEST(Dashboard, WithAnApiKeyEverythingNeedsTheKeyOrTheSessionCookie) {
  FakeEngine e(1, 64);
  e.script = e.tokenizer().encode(" ok", false);
  ServerOptions o;
  o.api_key = "s3cret";
  Served s(e, o);
  // Refused without credentials: the page with the login form, the rest with JSON.
  const Reply page = request(s.port, "GET", "/ui");
  EXPECT_EQ(page.status, 401);
  EXPECT_NE(page.body.find("action=\"/ui/login\""), std::string::npos) << page.body;
  EXPECT_EQ(page.body.find("dashboard.js"), std::string::npos);
  for (const char* path : {"/ui/dashboard.js", "/ui/dashboard.css", "/v1/trove/status", "/v1/trove/tree",
                           "/v1/trove/events"}) {
    const Reply r = request(s.port, "GET", path);
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_NE(r.body.find("API key"), std::string::npos) << path << r.body;
  }
  // The key as a header works for the JSON endpoints (scripts, curl).
  EXPECT_EQ(request(s.port, "GET", "/v1/trove/status", "", "Authorization: Bearer s3cret\r\n").status, 200);
  EXPECT_EQ(request(s.port, "GET", "/ui/dashboard.js", "", "x-api-key: s3cret\r\n").status, 200);
  // A wrong key at the form: 401 and the form again, no cookie.
  const Reply wrong = request(s.port, "POST", "/ui/login", "key=guess", "", "application/x-www-form-urlencoded");
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(wrong.header("Set-Cookie"), "");
  EXPECT_NE(wrong.body.find("not the server's API key"), std::string::npos);
  // The right key: a session cookie, HttpOnly and SameSite=Strict.
  const Reply ok = request(s.port, "POST", "/ui/login", "key=s3cret", "", "application/x-www-form-urlencoded");
  ASSERT_EQ(ok.status, 303) << ok.body;
  const std::string cookie = ok.header("Set-Cookie");
  ASSERT_EQ(cookie.rfind("trove_ui=", 0), 0u) << cookie;
  EXPECT_NE(cookie.find("HttpOnly"), std::string::npos);
  EXPECT_NE(cookie.find("SameSite=Strict"), std::string::npos);
  const std::string session = "Cookie: other=1; " + cookie.substr(0, cookie.find(';')) + "\r\n";
  EXPECT_EQ(request(s.port, "GET", "/ui", "", session).status, 200);
  EXPECT_EQ(request(s.port, "GET", "/v1/trove/status", "", session).status, 200);
  EXPECT_EQ(request(s.port, "GET", "/v1/trove/status", "", "Cookie: trove_ui=forged\r\n").status, 401);
  // The cookie opens the dashboard only, not the inference APIs.
  EXPECT_EQ(request(s.port, "POST", "/v1/chat/completions",
                    R"({"max_tokens":1,"messages":[{"role":"user","content":"hi"}]})", session)
                .status,
            401);
  // /health stays open.
  EXPECT_EQ(request(s.port, "GET", "/health").status, 200);
}

TEST(ActivitySeries, SamplesHoldTheDifferencesAndRatesOfThePeriod) {
  using namespace trove::server;
  ActivitySeries a(std::chrono::seconds(10));
  const auto t0 = std::chrono::system_clock::time_point(std::chrono::seconds(1'000'000));
  ActivityTotals t;
  ActivityGauges g;
  a.sample(t0, t, g);  // the baseline: all zero
  t.prefill_tokens = 500;
  t.decode_tokens = 20;
  t.gpu_hit_tokens = 128;
  t.store_hit_tokens = 64;
  t.store_block_reads = 1;
  t.store_blocks_written = 7;
  g.pool_used_blocks = 9;
  g.pool_total_blocks = 100;
  a.observe_ttft(0.5);
  a.observe_ttft(1.5);
  a.sample(t0 + std::chrono::seconds(2), t, g);
  t.decode_tokens = 30;
  a.sample(t0 + std::chrono::seconds(3), t, g);
  const auto all = a.since(0);
  ASSERT_EQ(all.size(), 3u);
  const auto& s = all[1];
  EXPECT_EQ(s.unix_ms, 1'000'002'000);
  EXPECT_DOUBLE_EQ(s.seconds, 2.0);
  EXPECT_EQ(s.prefill_tokens, 500u);
  EXPECT_DOUBLE_EQ(s.prefill_per_second(), 250.0);
  EXPECT_DOUBLE_EQ(s.decode_per_second(), 10.0);
  EXPECT_EQ(s.gpu_hit_tokens, 128u);
  EXPECT_EQ(s.store_hit_tokens, 64u);
  EXPECT_EQ(s.store_block_reads, 1u);
  EXPECT_EQ(s.store_blocks_written, 7u);
  EXPECT_EQ(s.ttft_count, 2u);
  EXPECT_DOUBLE_EQ(s.ttft_mean, 1.0);
  EXPECT_DOUBLE_EQ(s.ttft_max, 1.5);
  EXPECT_EQ(s.gauges.pool_used_blocks, 9u);
  EXPECT_EQ(all[2].decode_tokens, 10u);
  EXPECT_EQ(all[2].prefill_tokens, 0u);
  EXPECT_EQ(all[2].ttft_count, 0u);
  EXPECT_EQ(a.since(1'000'002'000).size(), 1u);
  // The window: samples 10 s older than the newest are dropped.
  a.sample(t0 + std::chrono::seconds(12), t, g);
  const auto kept = a.since(0);
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept.front().unix_ms, 1'000'003'000);
  // A wall clock set back still gives increasing sample times.
  a.sample(t0 + std::chrono::seconds(5), t, g);
  EXPECT_GT(a.since(0).back().unix_ms, 1'000'012'000);
}
