// `trove launch CLIENT [-- CLIENT ARGS]`: run a coding agent (pi, claude, codex, opencode, qwen) against
// trove with nothing set up by hand.
//   1. Finds the trove server this machine's launches share ($TROVE_HOME/run/server.json, checked with
//      GET /health), or starts one in the background (`trove serve --lease-dir … --idle-exit …`, its
//      log in $TROVE_HOME/run/serve.log) under a lock, so two launches at once start one server.
//   2. Takes a lease: a file named after this process's pid in $TROVE_HOME/run/leases. The server stops
//      --idle-exit seconds (default 300) after the last lease is gone; a launcher killed without
//      cleaning up loses its lease when the server sees its pid is dead.
//   3. Points the client at the server (tools/clients.h: environment variables, flags, or config files
//      of trove's own under $TROVE_HOME/clients/CLIENT — never the user's), prints what it set, and
//      runs the client in the foreground.
//   4. Watchdog: while the client runs, the server's /health is polled every 2 s; a server that died is
//      started again on the same port, so the client's URL stays valid.
// The exit code is the client's.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tools/clients.h"
#include "tools/command.h"
#include "tools/paths.h"

namespace {

using namespace trove;
namespace fs = std::filesystem;
using json = nlohmann::json;

struct LaunchArgs {
  std::string client;
  std::vector<std::string> client_args;
  std::string model;
  int port = 8080;
  uint32_t idle_exit = 300;
  std::string program;               // run this instead of the client's own executable
  std::string serve_args;            // more `trove serve` options, space-separated
  bool server_only = false;          // find or start the server, print it as JSON, exit
  long lease_pid = 0;                // --server-only: take the lease for this process (its caller)
};

std::string run_dir() { return cli::trove_home() + "/run"; }

bool healthy(const std::string& url) {
  httplib::Client c(url);
  c.set_connection_timeout(1, 0);
  c.set_read_timeout(3, 0);
  auto r = c.Get("/health");
  return r && r->status == 200;
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("trove") : p.string();
}

// A free port for a server: `port` when nothing listens there (a connect is refused), else any free
// one (bound to port 0 by a plain socket, then closed). Not a bind test on `port` itself: a server that
// just died leaves TIME_WAIT connections there that fail such a bind, though trove serve (httplib sets
// SO_REUSEPORT) can listen again at once — and the watchdog must restart it on the same port.
int free_port(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (port > 0) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    a.sin_port = htons(static_cast<uint16_t>(port));
    const bool refused = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno == ECONNREFUSED;
    ::close(fd);
    if (refused) return port;
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int got = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    got = ntohs(a.sin_port);
  }
  ::close(fd);
  return got;
}

// Starts `trove serve` detached (its own session, so the client's Ctrl-C does not reach it) and waits
// for it to listen. Returns its URL.
Result<std::string> start_server(const LaunchArgs& a, int port, pid_t& pid_out) {
  const std::string log = run_dir() + "/serve.log";
  std::vector<std::string> argv = {self_exe(), "serve", "--port", std::to_string(port), "--lease-dir",
                                   run_dir() + "/leases", "--idle-exit", std::to_string(a.idle_exit)};
  if (!a.model.empty()) argv.insert(argv.end(), {"--model", a.model});
  std::istringstream more(a.serve_args);
  for (std::string w; more >> w;) argv.push_back(w);
  // Everything the child needs is prepared before fork(): the watchdog forks from a threaded process,
  // where the child may only make async-signal-safe calls before exec.
  std::vector<char*> cargv;
  for (auto& s : argv) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return Status::IoError(fmt::format("cannot start trove serve: {}", std::strerror(errno)));
  if (pid == 0) {
    ::setsid();
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  pid_out = pid;
  const std::string url = fmt::format("http://127.0.0.1:{}", port);
  // A big model takes a while to load; the server says when it listens.
  for (int i = 0; i < 1200; ++i) {
    if (healthy(url)) return url;
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      std::ifstream in(log);
      std::stringstream ss;
      ss << in.rdbuf();
      std::string tail = ss.str();
      if (tail.size() > 2000) tail = tail.substr(tail.size() - 2000);
      return Status::FailedPrecondition(fmt::format("trove serve exited before it listened (log {}):\n{}", log, tail));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return Status::FailedPrecondition(fmt::format("trove serve did not listen within 5 minutes; see {}", log));
}

// The shared server: the one in server.json if it answers, else a new one. Under run/launch.lock.
Result<std::string> find_or_start_server(const LaunchArgs& a, pid_t& started_pid) {
  std::error_code ec;
  fs::create_directories(run_dir() + "/leases", ec);
  const int lock = ::open((run_dir() + "/launch.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock < 0) return Status::IoError(fmt::format("cannot open {}/launch.lock: {}", run_dir(), std::strerror(errno)));
  ::flock(lock, LOCK_EX);
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }  // releases the flock
  } unlock{lock};
  const std::string state = run_dir() + "/server.json";
  {
    std::ifstream in(state);
    json s = json::object();
    try {
      if (in) s = json::parse(in);
    } catch (const json::exception&) {
    }
    if (!s.is_object()) s = json::object();
    const std::string url = s.value("url", "");
    if (!url.empty() && (a.model.empty() || s.value("model", "") == a.model) && healthy(url)) {
      std::fprintf(stderr, "trove launch: using the trove server at %s (pid %lld)\n", url.c_str(),
                   static_cast<long long>(s.value("pid", 0)));
      return url;
    }
  }
  const int port = free_port(a.port);
  if (port == 0) return Status::IoError("cannot find a free port on 127.0.0.1 for trove serve");
  std::fprintf(stderr, "trove launch: starting trove serve on port %d (log: %s/serve.log)\n", port, run_dir().c_str());
  auto url = start_server(a, port, started_pid);
  if (!url.ok()) return url;
  json s = {{"url", *url}, {"pid", started_pid}, {"model", a.model}, {"port", port}};
  std::ofstream(state) << s.dump() << "\n";
  return url;
}

void launch(LaunchArgs a) {
  if (a.client.empty() && !a.server_only) cli::fail("name the client to launch: " + [] {
    std::string names;
    for (const auto& n : clients::client_names()) names += (names.empty() ? "" : ", ") + n;
    return names;
  }());
  // The lease comes first: a server this launch starts must not see an empty lease directory and stop.
  const long holder = a.server_only ? a.lease_pid : static_cast<long>(::getpid());
  const std::string lease = run_dir() + "/leases/" + std::to_string(holder);
  if (holder > 0) {
    std::error_code ec;
    fs::create_directories(run_dir() + "/leases", ec);
    std::ofstream(lease) << a.client << "\n";
  }
  pid_t server_pid = 0;
  auto url = find_or_start_server(a, server_pid);
  if (!url.ok()) {
    std::remove(lease.c_str());
    cli::fail(url.status().message());
  }
  if (a.server_only) {
    // For integrations that hold their own lease (a file named by their pid in run/leases), such as
    // the Pi package in integrations/pi.
    bool running = false;
    auto m = clients::describe_served_model(*url, cli::default_model_path(), running);
    if (!m.ok()) cli::fail(m.status().message());
    json out = {{"url", *url}, {"model", m->id}, {"context_window", m->n_ctx}, {"max_output_tokens", m->max_output},
                {"reasoning", m->reasoning}, {"leases", run_dir() + "/leases"}, {"log", run_dir() + "/serve.log"}};
    std::printf("%s\n", out.dump().c_str());
    return;
  }

  bool running = false;
  auto model = clients::describe_served_model(*url, cli::default_model_path(), running);
  if (!model.ok()) {
    std::remove(lease.c_str());
    cli::fail(model.status().message());
  }
  if (const char* k = std::getenv("TROVE_API_KEY"); k && *k) model->api_key = k;
  const std::string config_dir = cli::trove_home() + "/clients/" + a.client;
  auto setup = clients::client_setup(a.client, *model, config_dir);
  if (!setup.ok()) {
    std::remove(lease.c_str());
    cli::fail(setup.status().message());
  }
  std::error_code ec;
  for (const auto& f : setup->files) {
    fs::create_directories(fs::path(f.path).parent_path(), ec);
    std::ofstream(f.path) << f.content;
    std::fprintf(stderr, "trove launch: wrote %s\n", f.path.c_str());
  }
  for (const auto& [k, v] : setup->env) {
    ::setenv(k.c_str(), v.c_str(), 1);
    std::fprintf(stderr, "trove launch: %s=%s\n", k.c_str(), v.c_str());
  }
  std::fprintf(stderr, "trove launch: %s with model %s (context %u tokens) at %s\n", a.client.c_str(),
               model->id.c_str(), model->n_ctx, url->c_str());

  std::vector<std::string> argv = {a.program.empty() ? setup->program : a.program};
  argv.insert(argv.end(), setup->args.begin(), setup->args.end());
  argv.insert(argv.end(), a.client_args.begin(), a.client_args.end());
  const pid_t child = ::fork();
  if (child < 0) cli::fail(fmt::format("cannot start {}: {}", argv[0], std::strerror(errno)));
  if (child == 0) {
    std::vector<char*> cargv;
    for (auto& s : argv) cargv.push_back(s.data());
    cargv.push_back(nullptr);
    ::execvp(cargv[0], cargv.data());
    std::fprintf(stderr, "trove launch: cannot run %s: %s; install it with: npm install -g %s\n", cargv[0],
                 std::strerror(errno), setup->npm_package.c_str());
    ::_exit(127);
  }
  // The client owns the terminal: Ctrl-C goes to it, and we wait for it to finish.
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGQUIT, SIG_IGN);
  std::atomic<bool> client_done{false};
  std::thread watchdog([&] {
    int failures = 0;
    while (!client_done.load()) {
      for (int i = 0; i < 20 && !client_done.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (client_done.load()) return;
      if (healthy(*url)) {
        failures = 0;
        continue;
      }
      if (++failures < 2) continue;  // one slow answer is not a dead server
      std::fprintf(stderr, "\ntrove launch: the trove server at %s stopped answering; starting it again\n",
                   url->c_str());
      LaunchArgs again = a;
      again.port = std::stoi(url->substr(url->rfind(':') + 1));
      pid_t pid = 0;
      auto restarted = find_or_start_server(again, pid);
      if (!restarted.ok()) std::fprintf(stderr, "trove launch: %s\n", restarted.status().message().c_str());
      failures = 0;
    }
  });
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  client_done.store(true);
  watchdog.join();
  std::remove(lease.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code != 0) std::fprintf(stderr, "trove launch: %s exited with %d\n", a.client.c_str(), code);
  cli::exit_with(code);
}

void add_launch(CLI::App& sub) {
  auto a = std::make_shared<LaunchArgs>();
  std::string names;
  for (const auto& n : clients::client_names()) names += (names.empty() ? "" : ", ") + n;
  sub.add_option("client", a->client, "The coding agent: " + names);
  sub.add_option("client_args", a->client_args, "Arguments for the client (after --)");
  sub.add_option("-m,--model", a->model, "GGUF to serve when a server is started (default: the newest pulled)");
  sub.add_option("--port", a->port, "Port for a server this launch starts (a free one if taken)")->capture_default_str();
  sub.add_option("--idle-exit", a->idle_exit, "A started server stops this many seconds after the last client left")
      ->capture_default_str();
  sub.add_option("--program", a->program, "Run this executable instead of the client's own (same settings)");
  sub.add_option("--serve-args", a->serve_args, "More `trove serve` options for a server this launch starts, e.g. \"--ctx 16384\"");
  sub.add_flag("--server-only", a->server_only,
               "Only find or start the shared server and print it as JSON (for integrations with their own lease)");
  sub.add_option("--lease-pid", a->lease_pid,
                 "With --server-only: take the lease for this process id (it holds the server while it lives)");
  sub.positionals_at_end(false);
  sub.callback([a] { launch(*a); });
}

cli::CommandRegistration reg{"launch", "Run a coding agent (pi, claude, codex, opencode, qwen) against trove", add_launch};

}  // namespace
