// `trove pull [MODEL]`: download a Qwen3-family GGUF from the Hugging Face Hub into $TROVE_HOME/models.
//   trove pull qwen3-coder                         a short name (trove pull --list shows them)
//   trove pull Qwen/Qwen3-8B-GGUF [--quant Q8_0]   any GGUF repo; the quantization that fits this GPU
// Resumes an interrupted download, checks every file's SHA-256 against the Hub, joins split GGUFs,
// and writes the model's manifest last (tools/hub.h). Environment: HF_TOKEN, HF_ENDPOINT /
// TROVE_HF_ENDPOINT.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>

#include <fmt/format.h>

#include "kernels/vk/runtime.h"
#include "tools/command.h"
#include "tools/hub.h"
#include "tools/paths.h"
#include "tools/sizes.h"

namespace {

using namespace trove;
namespace fs = std::filesystem;

struct PullArgs {
  std::string model = "qwen3-coder";
  std::string quant;
  std::string revision = "main";
  std::string gpu_memory;
  uint32_t ctx = 32768;
  bool list = false;
};

// A one-line progress bar on stderr (bytes, speed, ETA), redrawn at most 5 times a second; on a
// non-terminal (logs, tests) a line per 10%.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)), tty_(::isatty(2)) {}
  void update(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (!started_) {
      started_ = true;
      start_ = now;
      start_bytes_ = done;
    }
    const int pct = total ? static_cast<int>(done * 100 / total) : 0;
    if (tty_ ? now - last_ < std::chrono::milliseconds(200) && done != total : pct / 10 == last_decile_) return;
    last_ = now;
    last_decile_ = pct / 10;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0.2 ? static_cast<double>(done - start_bytes_) / secs : 0;
    std::string eta = "--";
    if (rate > 0 && total > done) {
      const auto left = static_cast<uint64_t>(static_cast<double>(total - done) / rate);
      eta = left >= 3600 ? fmt::format("{}h{:02}m", left / 3600, left / 60 % 60) : fmt::format("{}m{:02}s", left / 60, left % 60);
    }
    std::string line = fmt::format("  {}  {} / {}  {:3}%  {}/s  ETA {}", label_, cli::human_bytes(done),
                                   cli::human_bytes(total), pct, cli::human_bytes(static_cast<uint64_t>(rate)), eta);
    if (tty_) {
      std::fprintf(stderr, "\r%-100s", line.c_str());
      if (done == total) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

 private:
  std::string label_;
  bool tty_;
  bool started_ = false;
  std::chrono::steady_clock::time_point start_, last_;
  uint64_t start_bytes_ = 0;
  int last_decile_ = -1;
};

// The GPU's device-local memory, from the Vulkan device trove would use.
uint64_t gpu_memory_bytes(std::string& device_name) {
  auto dev = vk::Device::open();
  if (!dev.ok()) return 0;
  device_name = (*dev)->features().name;
  return (*dev)->features().device_local_bytes;
}

std::string model_name(const hub::QuantGroup& g) {
  std::string base = fs::path(g.parts.front().path).filename().string();
  base = base.substr(0, base.size() - 5);  // .gguf
  if (g.parts.size() > 1) {
    const size_t at = base.rfind("-00001-of-");
    if (at != std::string::npos) base = base.substr(0, at);
  }
  return base;
}

void pull(const PullArgs& a) {
  if (a.list) {
    std::printf("%-16s %-46s %s\n", "NAME", "REPO", "MODEL");
    for (const auto& al : hub::aliases()) {
      std::printf("%-16s %-46s %s\n", al.name.c_str(), al.repo.c_str(), al.description.c_str());
    }
    return;
  }
  const hub::Alias* alias = hub::find_alias(a.model);
  std::string repo = alias ? alias->repo : a.model;
  if (repo.find('/') == std::string::npos) {
    std::string names;
    for (const auto& al : hub::aliases()) names += (names.empty() ? "" : ", ") + al.name;
    cli::fail(fmt::format("{}: not a short name ({}) nor a Hugging Face repo id like Qwen/Qwen3-8B-GGUF", a.model,
                          names));
  }
  const hub::HubOptions opt = hub::hub_options_from_env();
  hub::HubClient client(opt);
  std::fprintf(stderr, "trove pull: %s (%s, revision %s)\n", repo.c_str(), opt.endpoint.c_str(), a.revision.c_str());
  auto files = client.list(repo, a.revision);
  if (!files.ok()) cli::fail(files.status().message());
  const auto groups = hub::group_gguf_files(*files);

  uint64_t gpu = 0;
  std::string device = "--gpu-memory";
  if (!a.gpu_memory.empty()) {
    auto g = cli::parse_size(a.gpu_memory);
    if (!g || *g == 0) cli::fail(fmt::format("--gpu-memory {}: not a size; write e.g. 24G", a.gpu_memory));
    gpu = *g;
  } else if (a.quant.empty()) {
    gpu = gpu_memory_bytes(device);
    if (gpu == 0) std::fprintf(stderr, "trove pull: no Vulkan device found; choosing as if it had 8 GiB (--gpu-memory sets it)\n");
    if (gpu == 0) gpu = 8ull << 30;
  }
  const uint64_t kv = alias ? alias->kv_bytes_per_token : hub::kDefaultKvBytesPerToken;
  std::optional<std::string> forced;
  if (!a.quant.empty()) forced = a.quant;
  auto choice = hub::choose_quant(groups, gpu, kv, a.ctx, forced);
  if (!choice.ok()) cli::fail(fmt::format("{}: {}", repo, choice.status().message()));
  const hub::QuantGroup& g = choice->group;
  std::fprintf(stderr, "trove pull: chose %s%s\n", choice->why.c_str(),
               a.quant.empty() && a.gpu_memory.empty() ? fmt::format(" (GPU: {})", device).c_str() : "");

  hub::ModelStore store(cli::default_model_dir());
  const std::string name = model_name(g);
  const std::string final_path = store.gguf_path(name);
  std::error_code ec;
  fs::create_directories(store.partial_dir() + "/" + name, ec);
  if (ec) cli::fail(fmt::format("cannot create {}: {}", store.partial_dir(), ec.message()));
  // Already complete with the same files: nothing to do.
  for (const auto& m : store.list()) {
    if (m.name != name || !m.managed) continue;
    bool same = m.manifest.value("repo", "") == repo && m.manifest.contains("files") &&
                m.manifest["files"].size() == g.parts.size();
    for (size_t i = 0; same && i < g.parts.size(); ++i) {
      same = m.manifest["files"][i].value("sha256", "") == g.parts[i].sha256;
    }
    if (same) {
      std::printf("%s is already pulled: %s\n", name.c_str(), final_path.c_str());
      return;
    }
  }
  // The model is complete only once its manifest is written (below); a stale one goes first, so an
  // interrupted re-pull never leaves an old manifest beside new bytes.
  fs::remove(store.manifest_path(name), ec);

  std::vector<std::string> verified;
  for (size_t i = 0; i < g.parts.size(); ++i) {
    const hub::HubFile& f = g.parts[i];
    const std::string base = fs::path(f.path).filename().string();
    const std::string dir = store.partial_dir() + "/" + name;
    const std::string done_path = dir + "/" + base;
    verified.push_back(done_path);
    if (fs::exists(done_path, ec) && fs::file_size(done_path, ec) == f.size) continue;  // verified earlier
    ProgressBar bar(g.parts.size() > 1 ? fmt::format("{} part {}/{}", g.quant, i + 1, g.parts.size()) : g.quant);
    Status s = client.download(repo, a.revision, f, done_path + ".part", done_path,
                               [&](uint64_t d, uint64_t t) { bar.update(d, t); });
    if (!s.ok()) cli::fail(s.message());
  }
  if (verified.size() == 1) {
    if (std::rename(verified[0].c_str(), final_path.c_str()) != 0) {
      cli::fail(fmt::format("cannot move {} to {}: {}", verified[0], final_path, std::strerror(errno)));
    }
  } else {
    std::fprintf(stderr, "trove pull: joining %zu parts into one GGUF\n", verified.size());
    if (Status s = hub::merge_split_gguf(verified, final_path); !s.ok()) {
      cli::fail(fmt::format("joining the parts of {}: {}", name, s.message()));
    }
  }
  fs::remove_all(store.partial_dir() + "/" + name, ec);
  nlohmann::json files_json = nlohmann::json::array();
  for (const auto& f : g.parts) files_json.push_back({{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}});
  nlohmann::json manifest = {{"name", name},
                             {"repo", repo},
                             {"revision", a.revision},
                             {"quant", g.quant},
                             {"alias", alias ? alias->name : ""},
                             {"endpoint", opt.endpoint},
                             {"bytes", g.bytes},
                             {"files", files_json},
                             {"pulled_at", static_cast<int64_t>(std::time(nullptr))}};
  if (Status s = store.write_manifest(name, manifest); !s.ok()) cli::fail(s.message());
  std::printf("pulled %s (%s) into %s\nserve it with: trove serve --model %s\n", name.c_str(),
              cli::human_bytes(g.bytes).c_str(), final_path.c_str(), final_path.c_str());
}

void add_pull(CLI::App& sub) {
  auto a = std::make_shared<PullArgs>();
  sub.add_option("model", a->model, "A short name (see --list) or a Hugging Face repo id")->capture_default_str();
  sub.add_option("--quant", a->quant, "Quantization to download (Q4_K_M, Q5_K_M, Q6_K, Q8_0, BF16, ...)");
  sub.add_option("--revision", a->revision, "Branch, tag or commit of the repo")->capture_default_str();
  sub.add_option("--gpu-memory", a->gpu_memory, "Choose as if the GPU had this much memory (default: ask Vulkan)");
  sub.add_option("--ctx", a->ctx, "Context to leave KV room for when choosing")->capture_default_str();
  sub.add_flag("--list", a->list, "List the short model names and exit");
  sub.callback([a] { pull(*a); });
}

cli::CommandRegistration reg{"pull", "Download a Qwen3 GGUF from the Hugging Face Hub (resumable, SHA-256 checked)",
                             add_pull};

}  // namespace
