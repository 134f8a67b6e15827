// server/ui.h — the dashboard of `trove serve`: the page GET /ui (its files, server/ui/*, are embedded
// in the binary at build time: no CDN, no external font, works offline) and the endpoints it reads,
// which are documented (docs/api.md) and usable without it:
//   GET  /v1/trove/status              everything at once, with the last hour's series (server/status.h)
//   GET  /v1/trove/tree?namespace=NS   a namespace's prefix tree from the KV store's index
//   GET  /v1/trove/events              SSE: one `status` event per sample, with the new samples
//   POST /ui/login                     the form behind /ui when the server has an API key
//
// Contract:
//  - Dashboard samples the server's activity every `sample_period` on its own thread into an
//    ActivitySeries (an hour kept) and wakes every event stream after each sample.
//  - Auth, with an API key set: the dashboard's routes take the key as every route does (the
//    server's check runs first) or a session cookie. A browser cannot put a header on a page load or
//    an EventSource, so POST /ui/login checks the key (form field `key`) and sets the cookie
//    `trove_ui` (HttpOnly, SameSite=Strict): a random token made at start, valid for the dashboard's
//    routes only (not the inference APIs), until the server stops. Without credentials GET /ui answers
//    401 with the login form; the other dashboard routes answer 401 JSON.
//  - The documents hold counts, times and request labels, never prompt or output text.
//  - stop() ends every event stream within one sample period; the destructor stops and joins the
//    sampling thread. The Dashboard must outlive the httplib::Server it was installed into and be
//    destroyed before the Scheduler it reads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "engine/runtime/engine.h"
#include "server/activity_series.h"
#include "server/http_server.h"
#include "server/scheduler.h"
#include "server/status.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace trove::server {

class Dashboard {
 public:
  Dashboard(const engine::Engine& engine, const Scheduler& scheduler, const ServerOptions& options);
  ~Dashboard();
  Dashboard(const Dashboard&) = delete;
  Dashboard& operator=(const Dashboard&) = delete;

  // Adds the routes above to `http`.
  void install(httplib::Server& http);

  // For the server's auth check, which calls these only when the request carries no valid API key:
  // admits() is true for the login form and for a dashboard route with a valid session cookie;
  // refuse() writes the 401 login page for GET /ui (true) and leaves every other path to the
  // server's JSON 401 (false).
  bool admits(const httplib::Request& req) const;
  bool refuse(const httplib::Request& req, httplib::Response& res) const;

  // A request's time to first token (the scheduler's observer), for the TTFT chart.
  void observe_ttft(double seconds) { series_.observe_ttft(seconds); }
  // Takes one sample now (the thread does this every period; tests call it to avoid waiting).
  void sample_now();
  void stop();

  // True for /ui, /ui/…, and /v1/trove/….
  static bool is_dashboard_path(const std::string& path);

 private:
  void sample_loop();
  void status(const httplib::Request& req, httplib::Response& res);
  void tree(const httplib::Request& req, httplib::Response& res);
  void events(const httplib::Request& req, httplib::Response& res);
  void login(const httplib::Request& req, httplib::Response& res);
  void asset(const httplib::Request& req, httplib::Response& res);
  // The whole status document; `series_after_ms` < 0 leaves the series out.
  StatusJson status_object(int64_t series_after_ms, bool namespaces) const;

  const engine::Engine& engine_;
  const Scheduler& scheduler_;
  const ServerOptions options_;
  const std::string session_token_;  // the `trove_ui` cookie's value (only used with an API key)
  const std::chrono::system_clock::time_point started_;
  ActivitySeries series_;

  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t samples_taken_ = 0;  // guarded by mu_; event streams wait for it to move
  bool stopping_ = false;       // guarded by mu_
  std::thread sampler_;
};

}  // namespace trove::server
