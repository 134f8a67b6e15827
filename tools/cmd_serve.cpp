// `trove serve`: load a model and serve the OpenAI, Anthropic and Responses APIs on loopback.
//   trove serve --model MODEL [--ctx N] [--parallel N] [--host H] [--port P] [--api-key KEY] [--store DIR | --no-store]
// Prints "trove: listening on http://HOST:PORT" on stdout once it accepts connections (tests read it).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "common/log.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/speculative.h"
#include "server/http_server.h"
#include "tools/command.h"
#include "tools/paths.h"
#include "tools/sizes.h"
#include "kvstore/store.h"

namespace {

using namespace trove;

struct ServeArgs {
  std::string model;
  uint32_t ctx = 0;
  uint32_t parallel = 4;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  std::string store;
  std::string store_size = "64G";
  bool no_store = false;
  size_t max_body = 32u << 20;
  size_t max_queue = 64;
  bool log_prompts = false;
  bool test_force_output = false;
  std::string test_force_script;
  int keepalive_ms = 3000;
  uint32_t max_batch_tokens = 2048;
  uint32_t default_max_tokens = 32768;
  std::string lease_dir;
  uint32_t idle_exit = 300;
  std::string speculative;  // empty: engine::default_spec_method()
  std::string draft_model;
};

// `trove launch` starts the server with --lease-dir: every launched client holds a file there named
// after its launcher's pid. A lease whose process is gone is removed; once no lease has existed for
// `idle_seconds`, the server stops (the last client is gone). Checked every second.
void watch_leases(const std::string& dir, uint32_t idle_seconds, server::HttpServer& srv, const std::atomic<bool>& done) {
  namespace fs = std::filesystem;
  auto last_held = std::chrono::steady_clock::now();
  while (true) {
    for (int i = 0; i < 10; ++i) {
      if (done.load()) return;  // the server stopped otherwise (a signal): srv is about to go
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    bool held = false;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      const long pid = std::strtol(name.c_str(), nullptr, 10);
      if (pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) {
        held = true;
      } else if (pid > 0) {
        fs::remove(it->path(), ec);  // its launcher is gone (killed without cleaning up)
      }
    }
    const auto now = std::chrono::steady_clock::now();
    if (held) last_held = now;
    if (!held && now - last_held >= std::chrono::seconds(idle_seconds)) {
      std::fprintf(stderr, "trove serve: no launched client for %u s (leases in %s); stopping\n", idle_seconds,
                   dir.c_str());
      srv.stop();
      return;
    }
  }
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

void serve(ServeArgs a) {
  // SIGINT/SIGTERM are blocked in every thread (threads inherit the mask, so this comes before the
  // engine's driver threads exist) and taken by one waiter thread that stops the server from ordinary
  // code: stop() takes locks, which a signal handler must not.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::string model = a.model.empty() ? cli::default_model_path() : a.model;
  if (model.empty()) cli::fail(cli::no_model_message());
  if (a.api_key.empty()) {
    if (const char* k = std::getenv("TROVE_API_KEY"); k && *k) a.api_key = k;
  }
  if (a.parallel == 0) cli::fail("--parallel must be at least 1 (concurrent sequences)");
  if (a.default_max_tokens == 0) cli::fail("--default-max-tokens must be at least 1");
  if (!is_loopback(a.host) && a.api_key.empty()) {
    log::warn("serve", "listening on {} (not loopback) with no API key: anyone who can reach this address can use "
                       "the model; set --api-key or TROVE_API_KEY", a.host);
  }
  engine::EngineOptions eo;
  // The SSD tier of the prefix cache: on by default under the cache dir, so a restart keeps every
  // prefix computed before.
  std::shared_ptr<kv::Store> store;
  uint64_t store_budget = 0;
  if (!a.no_store) {
    const std::string dir = a.store.empty() ? cli::default_store_dir() : a.store;
    const auto budget = cli::parse_size(a.store_size);
    if (!budget || *budget == 0) {
      cli::fail(fmt::format("--store-size {}: not a size; write e.g. 64G, 500M or 1T", a.store_size));
    }
    store_budget = *budget;
    kv::Options ko;
    ko.byte_budget = store_budget;
    auto opened = kv::Store::open(dir, ko);
    if (!opened.ok()) {
      cli::fail(fmt::format("{}\n(use --store DIR for another store directory, or --no-store to serve without "
                            "the SSD tier)", opened.status().message()));
    }
    store = std::move(*opened);
    eo.block_tokens = store->block_tokens();
    eo.store = store;
  }
  eo.model_path = model;
  eo.n_ctx = a.ctx;
  eo.max_sequences = a.parallel;
  eo.max_batch_tokens = a.max_batch_tokens;
  eo.progress = true;
  auto loaded = engine::Engine::load(eo);
  if (!loaded.ok()) cli::fail(loaded.status().message());
  engine::Engine& e = **loaded;
  if (auto r = e.renderer(); !r.ok()) cli::fail(r.status().message());
  const auto spec = a.speculative.empty() ? (a.draft_model.empty() ? engine::default_spec_method(e) : engine::SpecMethod::kAuto) : engine::parse_spec_method(a.speculative);
  if (!spec) cli::fail(fmt::format("--speculative {}: write off, lookup, draft or auto", a.speculative));
  std::unique_ptr<engine::Engine> draft;
  if (!a.draft_model.empty()) {
    engine::EngineOptions d;
    d.model_path = a.draft_model;
    d.n_ctx = e.n_ctx();
    d.max_sequences = e.max_sequences();
    d.max_batch_tokens = a.max_batch_tokens;
    d.block_tokens = eo.block_tokens;
    auto dl = engine::Engine::load(d);
    if (!dl.ok()) cli::fail(fmt::format("--draft-model {}: {}", a.draft_model, dl.status().message()));
    if (Status st = engine::Speculator::check_draft_model(e, **dl); !st.ok()) cli::fail(st.message());
    draft = std::move(*dl);
  } else if (*spec == engine::SpecMethod::kDraft) {
    cli::fail("--speculative draft needs --draft-model PATH (a smaller model with the same tokenizer)");
  }

  server::ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.api_key = a.api_key;
  so.max_body_bytes = a.max_body;
  so.max_queue = a.max_queue;
  so.log_prompts = a.log_prompts;
  so.test_force_output = a.test_force_output;
  if (!a.test_force_script.empty()) {
    auto rules = server::load_force_script(a.test_force_script);
    if (!rules.ok()) cli::fail(rules.status().message());
    so.force_script = std::move(*rules);
  }
  so.keepalive_ms = a.keepalive_ms;
  so.default_max_tokens = a.default_max_tokens;
  so.model_id = std::filesystem::path(model).stem().string();
  so.store = store;
  so.store_budget = store_budget;
  so.speculative = *spec;
  so.draft = draft.get();
  // Every running and queued request holds an HTTP thread (a stream, or a reply being waited for); the
  // rest serve /health, /metrics and quick refusals (503, 4xx) while the queue is full.
  so.http_threads = static_cast<int>(std::max<size_t>(64, a.parallel + a.max_queue + 16));
  server::HttpServer srv(e, so);
  auto port = srv.bind();
  if (!port.ok()) cli::fail(port.status().message());
  std::thread([&srv, stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "trove serve: stopping (signal %d)\n", sig);
    srv.stop();
  }).detach();  // at exit it is either done or still waiting for a signal that will not come
  std::atomic<bool> served{false};
  std::thread lease_watcher;
  if (!a.lease_dir.empty()) {
    lease_watcher = std::thread([&srv, &served, dir = a.lease_dir, idle = a.idle_exit] {
      watch_leases(dir, idle, srv, served);
    });
  }
  if (e.config().synthetic) {
    std::fprintf(stderr, "*** SYNTHETIC MODEL: random weights — its output is noise (/v1/models marks it synthetic) ***\n");
  }
  std::fprintf(stderr, "model %s on %s: context %u tokens, %u parallel sequences%s%s\n", so.model_id.c_str(),
               e.device_name().c_str(), e.n_ctx(), e.max_sequences(), a.api_key.empty() ? "" : ", API key required",
               a.test_force_output              ? ", TEST HOOK --test-force-output ON"
               : !a.test_force_script.empty() ? ", TEST HOOK --test-force-script ON"
                                              : "");
  std::fprintf(stderr, "speculative decoding: %s%s%s\n", engine::spec_method_name(*spec), draft ? ", draft model " : "",
               draft ? draft->config().name.c_str() : "");
  if (store) {
    // How much of the store this model can use: blocks stored under its fingerprint (any namespace).
    const std::string fp = e.fingerprint();
    uint64_t mine = 0, mine_bytes = 0;
    (void)store->for_each_entry([&](const kv::BlockEntry& be) {
      if (be.fingerprint != fp) return;
      ++mine;
      mine_bytes += be.ref.raw_size;
    });
    const kv::Stats st = store->stats();
    std::fprintf(stderr, "KV store %s: %s of %s used, %llu blocks; %llu blocks (%llu tokens, %s of KV) for this model\n",
                 store->dir().c_str(), cli::human_bytes(st.stored_bytes).c_str(),
                 cli::human_bytes(store_budget).c_str(), static_cast<unsigned long long>(st.blocks),
                 static_cast<unsigned long long>(mine), static_cast<unsigned long long>(mine * store->block_tokens()),
                 cli::human_bytes(mine_bytes).c_str());
  } else {
    std::fprintf(stderr, "KV store off (--no-store): prefixes are cached on the GPU only and lost on restart\n");
  }
  std::fprintf(stderr, "dashboard: http://%s:%d/ui%s\n", a.host.c_str(), *port,
               a.api_key.empty() ? "" : " (log in with the API key)");
  std::printf("trove: listening on http://%s:%d\n", a.host.c_str(), *port);
  std::fflush(stdout);
  srv.run();
  served.store(true);
  if (lease_watcher.joinable()) lease_watcher.join();
}

void add_serve(CLI::App& sub) {
  auto a = std::make_shared<ServeArgs>();
  sub.add_option("-m,--model", a->model, "GGUF model (default: the newest in the model directory)");
  sub.add_option("--ctx", a->ctx, "Context length per sequence (default: the model's, at most 32768)");
  sub.add_option("--parallel", a->parallel, "Concurrent sequences; more requests wait in a queue")->capture_default_str();
  sub.add_option("--host", a->host, "Address to listen on (loopback by default)")->capture_default_str();
  sub.add_option("--port", a->port, "Port (0: any free port)")->capture_default_str();
  sub.add_option("--api-key", a->api_key, "Require this key (Authorization: Bearer or x-api-key); also TROVE_API_KEY");
  sub.add_option("--store", a->store, "KV store directory: the SSD tier of the prefix cache (default: " +
                                          cli::default_store_dir() + ")");
  sub.add_option("--store-size", a->store_size, "KV store size limit; least useful blocks are evicted beyond it")
      ->capture_default_str();
  sub.add_flag("--no-store", a->no_store, "Serve without the KV store (prefix cache on the GPU only)");
  sub.add_option("--max-body", a->max_body, "Largest request body in bytes (413 beyond)")->capture_default_str();
  sub.add_option("--max-queue", a->max_queue, "Requests that may wait for a free sequence (503 with Retry-After beyond)")
      ->capture_default_str();
  sub.add_option("--max-batch-tokens", a->max_batch_tokens, "Most tokens per engine step: the prefill chunk of a prompt alone (512 beside decoding streams)")
      ->capture_default_str();
  sub.add_option("--default-max-tokens", a->default_max_tokens,
                 "Most tokens generated for a request that sets no limit (the context end stops earlier)")
      ->capture_default_str();
  sub.add_option("--lease-dir", a->lease_dir,
                 "Stop once no process holds a lease file (named by its pid) in DIR for --idle-exit seconds "
                 "(trove launch uses it)");
  sub.add_option("--idle-exit", a->idle_exit, "Seconds without a lease before --lease-dir stops the server")
      ->capture_default_str();
  sub.add_option("--speculative", a->speculative,
                 "Speculative decoding for requests without an x-trove-speculative header: off, lookup (prompt "
                 "lookup), draft (--draft-model), auto (lookup, and the draft model where lookup finds nothing); "
                 "default: auto on a GPU or with --draft-model, off on a CPU Vulkan device");
  sub.add_option("--draft-model", a->draft_model,
                 "Draft model for speculative decoding: a smaller model with the same tokenizer (own small KV pool)");
  sub.add_flag("--log-prompts", a->log_prompts, "Log prompts and outputs (off: only token counts and timings)");
  sub.add_flag("--test-force-output", a->test_force_output,
               "TEST HOOK: honour the `trove_force_output` body field (generated tokens forced to that text)");
  sub.add_option("--test-force-script", a->test_force_script,
                 "TEST HOOK: force replies from a script chosen by what each request carries (server/force_script.h; "
                 "for tests with real clients)");
  sub.add_option("--keepalive-ms", a->keepalive_ms, "SSE keepalive comment interval while nothing is generated")
      ->capture_default_str();
  sub.callback([a] { serve(*a); });
}

cli::CommandRegistration reg{"serve", "Serve the OpenAI, Anthropic and Responses APIs over HTTP", add_serve};

}  // namespace
