#include "server/ui.h"

#include <httplib.h>

#include <random>

#include <fmt/format.h>

#include "common/log_problems.h"
#include "kvstore/prefix_tree.h"
#include "server/auth.h"
#include "server/dialects.h"
#include "server/sse.h"
#include "server/status.h"
#include "server/ui_assets.h"

namespace trove::server {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kCookie = "trove_ui";
// The dashboard's own files only: no inline script, no other origin (so no CDN could sneak in).
constexpr const char* kPolicy =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
// The login page is one self-contained file with its own <style>.
constexpr const char* kLoginPolicy =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

std::string make_session_token() {
  static const char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::random_device rd;  // the kernel's CSPRNG on Linux
  std::string t;
  for (int i = 0; i < 32; ++i) t += kAlphabet[rd() % 62];
  return t;
}

int64_t unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::string cookie_value(const std::string& header, std::string_view name) {
  size_t pos = 0;
  while (pos < header.size()) {
    size_t end = header.find(';', pos);
    if (end == std::string::npos) end = header.size();
    std::string_view part(header.data() + pos, end - pos);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    if (part.size() > name.size() && part.substr(0, name.size()) == name && part[name.size()] == '=') {
      return std::string(part.substr(name.size() + 1));
    }
    pos = end + 1;
  }
  return {};
}

const char* content_type(std::string_view path) {
  auto ends = [&](std::string_view ext) { return path.size() >= ext.size() && path.substr(path.size() - ext.size()) == ext; };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  if (ends(".png")) return "image/png";
  return "application/octet-stream";
}

void send_json_error(httplib::Response& res, int status, const std::string& message, const std::string& param = {}) {
  ApiError e;
  e.status = status;
  e.message = message;
  e.param = param;
  if (status == 404) e.type = "not_found_error";
  res.status = status;
  res.set_content(openai_error_body(e).dump(), "application/json");
}

std::string login_page(const std::string& error) {
  const UiAsset* page = find_ui_asset("login.html");
  std::string html = page ? std::string(page->bytes) : std::string("<!doctype html><p>login page missing</p>");
  const std::string marker = "<!--error-->";
  if (auto p = html.find(marker); p != std::string::npos) {
    html.replace(p, marker.size(), error.empty() ? "" : "<p class=\"error\">" + error + "</p>");
  }
  return html;
}

}  // namespace

bool Dashboard::is_dashboard_path(const std::string& path) {
  return path == "/ui" || path.rfind("/ui/", 0) == 0 || path.rfind("/v1/trove/", 0) == 0;
}

Dashboard::Dashboard(const engine::Engine& engine, const Scheduler& scheduler, const ServerOptions& options)
    : engine_(engine),
      scheduler_(scheduler),
      options_(options),
      session_token_(make_session_token()),
      started_(std::chrono::system_clock::now()) {
  sampler_ = std::thread([this] { sample_loop(); });
}

Dashboard::~Dashboard() {
  stop();
  if (sampler_.joinable()) sampler_.join();
}

void Dashboard::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

void Dashboard::sample_loop() {
  const auto period = std::chrono::milliseconds(std::max(10, options_.ui_sample_ms));
  auto next = Clock::now() + period;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_until(lock, next, [&] { return stopping_; })) return;
    }
    sample_now();
    next += period;
    if (next < Clock::now()) next = Clock::now() + period;  // fell behind (a suspended process): do not burst
  }
}

void Dashboard::sample_now() {
  const SchedulerStats s = scheduler_.stats();
  ActivityTotals t;
  t.prefill_tokens = s.prefill_tokens;
  t.decode_tokens = s.decode_tokens;
  t.gpu_hit_tokens = s.cache.gpu_hit_tokens;
  t.store_hit_tokens = s.cache.store_hit_tokens;
  t.store_block_reads = s.cache.store_page_cache_reads + s.cache.store_direct_reads;
  t.store_blocks_written = s.cache.store_blocks_queued;
  ActivityGauges g;
  g.pool_used_blocks = s.pool.used_blocks;
  g.pool_cached_blocks = s.pool.cached_blocks;
  g.pool_total_blocks = s.pool.total_blocks;
  g.active = s.active;
  g.queued = s.queued;
  series_.sample(std::chrono::system_clock::now(), t, g);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++samples_taken_;
  }
  cv_.notify_all();
}

bool Dashboard::admits(const httplib::Request& req) const {
  if (req.path == "/ui/login" && req.method == "POST") return true;
  if (!is_dashboard_path(req.path)) return false;
  const std::string cookie = cookie_value(req.get_header_value("Cookie"), kCookie);
  // api_key_matches compares in constant time; the token plays the key, the cookie the x-api-key header.
  return !cookie.empty() && api_key_matches(session_token_, "", cookie);
}

bool Dashboard::refuse(const httplib::Request& req, httplib::Response& res) const {
  if (req.path != "/ui" && req.path != "/ui/") return false;
  res.status = 401;
  res.set_header("Content-Security-Policy", kLoginPolicy);
  res.set_header("Cache-Control", "no-store");
  res.set_content(login_page(""), "text/html; charset=utf-8");
  return true;
}

void Dashboard::install(httplib::Server& http) {
  http.Get("/ui", [this](const httplib::Request& q, httplib::Response& r) { asset(q, r); });
  http.Get("/ui/(.*)", [this](const httplib::Request& q, httplib::Response& r) { asset(q, r); });
  http.Post("/ui/login", [this](const httplib::Request& q, httplib::Response& r) { login(q, r); });
  http.Get("/v1/trove/status", [this](const httplib::Request& q, httplib::Response& r) { status(q, r); });
  http.Get("/v1/trove/tree", [this](const httplib::Request& q, httplib::Response& r) { tree(q, r); });
  http.Get("/v1/trove/events", [this](const httplib::Request& q, httplib::Response& r) { events(q, r); });
}

void Dashboard::asset(const httplib::Request& req, httplib::Response& res) {
  std::string name = req.path == "/ui" || req.path == "/ui/" ? "index.html" : req.path.substr(4);
  const UiAsset* a = name == "login.html" ? nullptr : find_ui_asset(name);
  if (!a) return send_json_error(res, 404, fmt::format("no dashboard file {}; the dashboard is at /ui", req.path));
  res.set_header("Content-Security-Policy", kPolicy);
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Cache-Control", "no-cache");
  res.set_content(std::string(a->bytes), content_type(name));
}

void Dashboard::login(const httplib::Request& req, httplib::Response& res) {
  const std::string key = req.has_param("key") ? req.get_param_value("key") : std::string();
  if (options_.api_key.empty() || api_key_matches(options_.api_key, "", key)) {
    if (!options_.api_key.empty()) {
      res.set_header("Set-Cookie", fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict", kCookie, session_token_));
    }
    res.status = 303;
    res.set_header("Location", "/ui");
    return;
  }
  res.status = 401;
  res.set_header("Content-Security-Policy", kLoginPolicy);
  res.set_header("Cache-Control", "no-store");
  res.set_content(login_page("That is not the server's API key (--api-key or TROVE_API_KEY)."),
                  "text/html; charset=utf-8");
}

StatusJson Dashboard::status_object(int64_t series_after_ms, bool namespaces) const {
  const auto now_sys = std::chrono::system_clock::now();
  const SchedulerStats s = scheduler_.stats();
  StatusJson j;
  j["server"] = {{"model", options_.model_id},
                 {"device", engine_.device_name()},
                 {"synthetic", engine_.config().synthetic},
                 {"fingerprint", engine_.fingerprint()},
                 {"context", engine_.n_ctx()},
                 {"parallel", engine_.max_sequences()},
                 {"started", unix_ms(started_)},
                 {"now", unix_ms(now_sys)},
                 {"uptime_seconds", std::chrono::duration<double>(now_sys - started_).count()},
                 {"sample_seconds", options_.ui_sample_ms / 1000.0},
                 {"window_seconds", series_.window().count()},
                 {"store", options_.store != nullptr},
                 {"auth", !options_.api_key.empty()}};
  j["totals"] = {{"steps", s.steps},
                 {"completed", s.completed},
                 {"cancelled", s.cancelled},
                 {"prefill_tokens", s.prefill_tokens},
                 {"decode_tokens", s.decode_tokens},
                 {"generated_tokens", s.generated_tokens},
                 {"gpu_hit_tokens", s.cache.gpu_hit_tokens},
                 {"store_hit_tokens", s.cache.store_hit_tokens},
                 {"store_restored_bytes", s.cache.store_restored_bytes},
                 {"store_block_reads", s.cache.store_page_cache_reads + s.cache.store_direct_reads},
                 {"store_read_failures", s.cache.store_read_failures},
                 {"store_blocks_written", s.cache.store_blocks_queued},
                 {"store_blocks_dropped", s.cache.store_blocks_dropped}};
  j["pool"] = {{"total_blocks", s.pool.total_blocks}, {"used_blocks", s.pool.used_blocks},
               {"cached_blocks", s.pool.cached_blocks}, {"block_tokens", s.pool.block_tokens},
               {"bytes", s.pool.bytes},         {"evictions", s.pool.evictions}};
  j["queue"] = {{"queued", s.queued}, {"active", s.active}};
  auto drafts = [](const engine::SpecCounters& c) {
    return StatusJson{{"drafted", c.drafted}, {"accepted", c.accepted}, {"steps", c.steps}};
  };
  j["speculative"] = {{"lookup", drafts(s.spec.lookup)},
                      {"draft", drafts(s.spec.draft)},
                      {"draft_model", s.draft_model},
                      {"draft_step_seconds", s.draft_costs.draft_step_s},
                      {"auto_draft_tokens", s.auto_draft_tokens}};
  j["sequences"] = sequences_json(scheduler_.sequences(), Clock::now());
  j["store"] = options_.store ? store_json(*options_.store, options_.store_budget, namespaces) : StatusJson(nullptr);
  j["problems"] = problems_json(log::recent_problems());
  if (series_after_ms >= 0) j["series"] = series_json(series_.since(series_after_ms));
  return j;
}

void Dashboard::status(const httplib::Request& req, httplib::Response& res) {
  int64_t since = 0;
  if (req.has_param("since")) {
    try {
      since = std::stoll(req.get_param_value("since"));
    } catch (const std::exception&) {
      return send_json_error(res, 400, "since: must be a time in unix milliseconds (the `t` of the last sample you have)",
                             "since");
    }
  }
  const bool series = req.get_param_value("series") != "0";
  res.set_header("Cache-Control", "no-store");
  res.set_content(status_object(series ? since : -1, /*namespaces=*/true).dump(-1, ' ', false, StatusJson::error_handler_t::replace),
                  "application/json");
}

void Dashboard::tree(const httplib::Request& req, httplib::Response& res) {
  if (!options_.store) {
    return send_json_error(res, 404,
                           "this server runs without a KV store (--no-store); the prefix tree comes from the store's "
                           "index: start trove serve with a store to see it");
  }
  kv::PrefixTreeOptions o;
  o.max_nodes = 1000;
  if (req.has_param("max_nodes")) {
    const std::string v = req.get_param_value("max_nodes");
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 1 || n > 100000) {
      return send_json_error(res, 400, "max_nodes: must be an integer from 1 to 100000", "max_nodes");
    }
    o.max_nodes = static_cast<size_t>(n);
  }
  if (req.has_param("model")) {
    o.model = req.get_param_value("model");
    if (o.model == "current") o.model = engine_.fingerprint();
  }
  const std::string ns = req.has_param("namespace") ? req.get_param_value("namespace") : std::string("default");
  std::vector<kv::BlockEntry> entries;
  if (auto st = options_.store->for_each_entry([&](const kv::BlockEntry& e) {
        if (e.name_space == ns) entries.push_back(e);
      });
      !st.ok()) {
    return send_json_error(res, 500, "reading the KV store's index failed: " + st.message());
  }
  const auto tree = kv::build_prefix_tree(entries, ns, options_.store->block_tokens(), o);
  res.set_header("Cache-Control", "no-store");
  res.set_content(kv::prefix_tree_json(tree, unix_ms(std::chrono::system_clock::now()) / 1000), "application/json");
}

void Dashboard::events(const httplib::Request& req, httplib::Response& res) {
  // The client says which samples it has (the `t` of its last one); new ones come with each event.
  int64_t since = unix_ms(std::chrono::system_clock::now());
  if (req.has_param("since")) {
    try {
      since = std::stoll(req.get_param_value("since"));
    } catch (const std::exception&) {
      return send_json_error(res, 400, "since: must be a time in unix milliseconds", "since");
    }
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [this, since](size_t, httplib::DataSink& sink) mutable {
    auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    // How often the namespaces (a pass over the whole index) are sent: when the store's block count
    // moved, and every 10th event anyway (hits and last-access times change without it).
    uint64_t last_blocks = UINT64_MAX;
    int since_namespaces = 0;
    uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen = samples_taken_;
    }
    if (!write("retry: 2000\n\n")) return false;
    bool first = true;
    while (true) {
      if (!first) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::milliseconds(2 * std::max(10, options_.ui_sample_ms) + 1000),
                     [&] { return stopping_ || samples_taken_ != seen; });
        if (stopping_) break;
        seen = samples_taken_;
      }
      first = false;
      bool namespaces = false;
      if (options_.store) {
        const uint64_t blocks = options_.store->stats().blocks;
        namespaces = blocks != last_blocks || ++since_namespaces >= 10;
        if (namespaces) {
          last_blocks = blocks;
          since_namespaces = 0;
        }
      }
      StatusJson doc = status_object(-1, namespaces);
      const auto fresh = series_.since(since);
      if (!fresh.empty()) since = fresh.back().unix_ms;
      doc["samples"] = series_json(fresh);
      if (!write(sse_event("status", doc.dump(-1, ' ', false, StatusJson::error_handler_t::replace)))) return false;
    }
    sink.done();
    return true;
  });
}

}  // namespace trove::server
