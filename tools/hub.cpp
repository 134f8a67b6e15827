// The Hugging Face Hub client behind `trove pull`, quantization choice, and the model directory.
// See tools/hub.h for the contract and docs/agents.md for the user's side.
#include "tools/hub.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <httplib.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"

namespace trove::hub {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------- quantizations

namespace {

// Quantizations trove can run: every weight type in them is one of F32 F16 BF16 Q8_0 Q4_K Q5_K Q6_K
// (llama.cpp's K mixes use Q6_K for a few tensors). The order is the preference when several fit.
const std::vector<std::string>& auto_order() {
  static const std::vector<std::string> v = {"Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S"};
  return v;
}
bool supported_quant(const std::string& q) {
  static const std::vector<std::string> v = {"F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S"};
  return std::find(v.begin(), v.end(), q) != v.end();
}

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string human(uint64_t bytes) {
  const double g = static_cast<double>(bytes) / (1ull << 30);
  if (g >= 1) return fmt::format("{:.1f} GiB", g);
  return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1ull << 20));
}

// The split-part suffix of a GGUF name: "-00001-of-00003".
const std::regex& split_suffix() {
  static const std::regex re(R"(-(\d{5})-of-(\d{5})\.gguf$)", std::regex::icase);
  return re;
}

}  // namespace

std::string quant_of(const std::string& filename) {
  std::string base = fs::path(filename).filename().string();
  std::smatch m;
  if (std::regex_search(base, m, split_suffix())) base = base.substr(0, static_cast<size_t>(m.position(0))) + ".gguf";
  // The last "-" or "." separated token(s) before .gguf that look like a quantization name.
  static const std::regex re(R"((?:^|[-_.])((?:UD-)?(?:I?Q\d(?:_[0-9A-Z]+)*|F16|F32|BF16|MXFP4(?:_MOE)?))\.gguf$)",
                             std::regex::icase);
  if (!std::regex_search(base, m, re)) return "";
  return upper(m[1].str());
}

std::vector<QuantGroup> group_gguf_files(const std::vector<HubFile>& files) {
  // Key: the file name without its split suffix (in its directory), so two quantizations never mix.
  std::map<std::string, QuantGroup> groups;
  std::map<std::string, uint32_t> expected_parts;
  for (const auto& f : files) {
    if (f.path.size() < 5 || upper(f.path.substr(f.path.size() - 5)) != ".GGUF") continue;
    const std::string base = fs::path(f.path).filename().string();
    if (base.rfind("mmproj", 0) == 0) continue;  // vision projectors: not a language model
    std::string key = f.path;
    std::smatch m;
    uint32_t count = 1;
    if (std::regex_search(base, m, split_suffix())) {
      count = static_cast<uint32_t>(std::stoul(m[2].str()));
      key = f.path.substr(0, f.path.size() - base.size()) + base.substr(0, static_cast<size_t>(m.position(0)));
    }
    QuantGroup& g = groups[key];
    g.quant = quant_of(f.path);
    g.parts.push_back(f);
    g.bytes += f.size;
    expected_parts[key] = count;
  }
  std::vector<QuantGroup> out;
  for (auto& [key, g] : groups) {
    if (g.quant.empty() || g.parts.size() != expected_parts[key]) continue;  // unknown or incomplete set
    std::sort(g.parts.begin(), g.parts.end(), [](const HubFile& a, const HubFile& b) { return a.path < b.path; });
    g.supported = supported_quant(g.quant);
    out.push_back(std::move(g));
  }
  std::sort(out.begin(), out.end(), [](const QuantGroup& a, const QuantGroup& b) { return a.bytes < b.bytes; });
  return out;
}

Result<QuantChoice> choose_quant(const std::vector<QuantGroup>& groups, uint64_t gpu_bytes, uint64_t kv_bytes_per_token,
                                 uint32_t context_tokens, const std::optional<std::string>& forced) {
  std::string available;
  for (const auto& g : groups) {
    available += fmt::format("{}{} ({}{})", available.empty() ? "" : ", ", g.quant, human(g.bytes),
                             g.supported ? "" : ", not supported by trove");
  }
  if (groups.empty()) {
    return Status::NotFound("the repo has no GGUF model files; trove runs GGUF files of the Qwen3 family "
                            "(e.g. Qwen/Qwen3-8B-GGUF)");
  }
  const uint64_t kv = kv_bytes_per_token * context_tokens;
  // Working memory beside weights and KV: activations, prefill scratch, the Vulkan driver.
  const uint64_t reserve = 1ull << 30;
  auto need = [&](const QuantGroup& g) { return g.bytes + kv + reserve; };
  if (forced) {
    for (const auto& g : groups) {
      if (upper(*forced) != g.quant) continue;
      if (!g.supported) {
        return Status::Unsupported(fmt::format("--quant {}: trove cannot run this quantization's weight types "
                                               "(it runs F32 F16 BF16 Q8_0 Q4_K Q5_K Q6_K); available: {}",
                                               g.quant, available));
      }
      std::string why = fmt::format("{} ({}), as asked with --quant", g.quant, human(g.bytes));
      if (gpu_bytes && need(g) > gpu_bytes) {
        why += fmt::format("; it needs about {} with the KV of {} tokens and the GPU has {}: expect a smaller --ctx",
                           human(need(g)), context_tokens, human(gpu_bytes));
      }
      return QuantChoice{g, why};
    }
    return Status::NotFound(fmt::format("--quant {}: the repo has no such GGUF; available: {}", *forced, available));
  }
  for (const auto& q : auto_order()) {
    for (const auto& g : groups) {
      if (g.quant != q || need(g) > gpu_bytes) continue;
      return QuantChoice{g, fmt::format("{} ({}): the best quantization that fits {} of GPU memory with room for "
                                        "the KV of {} tokens ({}) and {} of working memory; --quant picks another",
                                        g.quant, human(g.bytes), human(gpu_bytes), context_tokens, human(kv),
                                        human(reserve))};
    }
  }
  // Nothing preferred fits: the smallest supported file, said plainly.
  for (const auto& g : groups) {
    if (!g.supported) continue;
    return QuantChoice{g, fmt::format("{} ({}): the smallest quantization trove runs; it needs about {} with the "
                                      "KV of {} tokens and the GPU has {}, so expect a smaller context or no fit",
                                      g.quant, human(g.bytes), human(need(g)), context_tokens, human(gpu_bytes))};
  }
  return Status::Unsupported(fmt::format("the repo has no quantization trove can run (it runs F32 F16 BF16 Q8_0 "
                                         "Q4_K Q5_K Q6_K: Q4_K_M, Q5_K_M, Q6_K, Q8_0, …); available: {}",
                                         available));
}

// ---------------------------------------------------------------- aliases

const std::vector<Alias>& aliases() {
  // KV per token: 2 (K and V) · layers · KV heads · head_dim 128 · 2 bytes (f16).
  auto kv = [](uint64_t layers, uint64_t kv_heads) { return 2 * layers * kv_heads * 128 * 2; };
  static const std::vector<Alias> v = {
      {"qwen3-coder", "unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF", "Qwen3-Coder 30B-A3B (MoE, 3B active): the flagship", kv(48, 4)},
      {"qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B-GGUF", "Qwen3 30B-A3B (MoE, thinking)", kv(48, 4)},
      {"qwen3-32b", "Qwen/Qwen3-32B-GGUF", "Qwen3 32B (dense, thinking)", kv(64, 8)},
      {"qwen3-14b", "Qwen/Qwen3-14B-GGUF", "Qwen3 14B (dense, thinking)", kv(40, 8)},
      {"qwen3-8b", "Qwen/Qwen3-8B-GGUF", "Qwen3 8B (dense, thinking)", kv(36, 8)},
      {"qwen3-4b", "Qwen/Qwen3-4B-GGUF", "Qwen3 4B (dense, thinking)", kv(36, 8)},
      {"qwen3-1.7b", "Qwen/Qwen3-1.7B-GGUF", "Qwen3 1.7B (dense, thinking)", kv(28, 8)},
      {"qwen3-0.6b", "Qwen/Qwen3-0.6B-GGUF", "Qwen3 0.6B (dense, thinking)", kv(28, 8)},
  };
  return v;
}

const Alias* find_alias(const std::string& name_or_repo) {
  for (const auto& a : aliases()) {
    if (a.name == name_or_repo || upper(a.repo) == upper(name_or_repo)) return &a;
  }
  return nullptr;
}

// ---------------------------------------------------------------- HTTP

namespace {

std::string getenv_str(const char* k) {
  const char* v = std::getenv(k);
  return v && *v ? v : "";
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

struct Url {
  std::string origin;  // scheme://host[:port]
  std::string path;    // /path?query
};

Url split_url(const std::string& url) {
  const size_t scheme = url.find("://");
  const size_t slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  if (slash == std::string::npos) return {url, "/"};
  return {url.substr(0, slash), url.substr(slash)};
}

// Percent-encodes a repo path segment by segment ('/' kept).
std::string encode_path(const std::string& p) {
  std::string out;
  for (unsigned char c : p) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') out += static_cast<char>(c);
    else out += fmt::format("%{:02X}", c);
  }
  return out;
}

std::unique_ptr<httplib::Client> client_for(const std::string& origin) {
  auto c = std::make_unique<httplib::Client>(origin);
  c->set_connection_timeout(30, 0);
  c->set_read_timeout(120, 0);
  c->set_follow_location(false);  // redirects are followed by hand: the token must not leave the Hub
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
  c->enable_server_certificate_verification(true);
#endif
  return c;
}

// What went wrong with a Hub response, in the user's terms.
Status http_status_error(int status, const httplib::Headers& headers, const std::string& what, const std::string& repo,
                         const HubOptions& opt) {
  std::string code;
  if (auto it = headers.find("X-Error-Code"); it != headers.end()) code = it->second;
  const std::string page = opt.endpoint + "/" + repo;
  if (code == "GatedRepo" || ((status == 401 || status == 403) && code != "RepoNotFound")) {
    return Status::FailedPrecondition(fmt::format(
        "{}: HTTP {}: the repo {} is gated or private. Accept its licence at {} and {}", what, status, repo, page,
        opt.token.empty() ? "set HF_TOKEN to an access token with read access (https://huggingface.co/settings/tokens)"
                          : "check that the token in HF_TOKEN has read access to it"));
  }
  if (status == 404 || code == "RepoNotFound" || code == "RevisionNotFound" || code == "EntryNotFound") {
    return Status::NotFound(fmt::format("{}: HTTP {}: {} (check the repo id and revision; `trove pull --list` shows the "
                                        "short names; a private repo needs HF_TOKEN)",
                                        what, status,
                                        code == "RevisionNotFound" ? "no such revision"
                                        : code == "EntryNotFound"  ? "no such file in the repo"
                                                                   : fmt::format("no repo {} on {}", repo, opt.endpoint)));
  }
  return Status::IoError(fmt::format("{}: the Hub answered HTTP {}; try again later", what, status));
}

Status connect_error(httplib::Error e, const std::string& what, const HubOptions& opt) {
  return Status::IoError(fmt::format("{}: cannot reach {} ({}); check the network, or set HF_ENDPOINT to a mirror",
                                     what, opt.endpoint, httplib::to_string(e)));
}

std::string hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

struct Sha256 {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  Sha256() { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx); }
  void update(const void* p, size_t n) { EVP_DigestUpdate(ctx, p, n); }
  std::string finish() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx, md, &n);
    return hex(md, n);
  }
};

// Reads the first `bytes` of fd into the hash (resuming a partial download).
Status hash_prefix(int fd, uint64_t bytes, Sha256& h, const std::string& path) {
  std::vector<char> buf(1 << 20);
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, buf.data(), std::min<uint64_t>(buf.size(), bytes - done), static_cast<off_t>(done));
    if (n <= 0) return Status::IoError(fmt::format("cannot read {}: {}", path, n < 0 ? std::strerror(errno) : "short file"));
    h.update(buf.data(), static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

}  // namespace

HubOptions hub_options_from_env() {
  HubOptions o;
  if (auto e = getenv_str("TROVE_HF_ENDPOINT"); !e.empty()) o.endpoint = e;
  else if (auto h = getenv_str("HF_ENDPOINT"); !h.empty()) o.endpoint = h;
  while (!o.endpoint.empty() && o.endpoint.back() == '/') o.endpoint.pop_back();
  o.token = getenv_str("HF_TOKEN");
  if (o.token.empty()) o.token = getenv_str("HUGGING_FACE_HUB_TOKEN");
  if (o.token.empty()) {
    std::string file = getenv_str("HF_TOKEN_PATH");
    if (file.empty()) {
      std::string home = getenv_str("HF_HOME");
      if (home.empty()) {
        const std::string xdg = getenv_str("XDG_CACHE_HOME");
        home = (xdg.empty() ? getenv_str("HOME") + "/.cache" : xdg) + "/huggingface";
      }
      file = home + "/token";
    }
    std::ifstream in(file);
    std::stringstream ss;
    if (in) ss << in.rdbuf();
    o.token = trim(ss.str());
  }
  return o;
}

HubClient::HubClient(HubOptions options) : opt_(std::move(options)) {}

Result<std::vector<HubFile>> HubClient::list(const std::string& repo, const std::string& revision) const {
  const std::string what = fmt::format("listing {}", repo);
  std::vector<HubFile> files;
  std::string url = fmt::format("{}/api/models/{}/tree/{}?recursive=true", opt_.endpoint, encode_path(repo),
                                encode_path(revision));
  for (int page = 0; page < 100 && !url.empty(); ++page) {
    const Url u = split_url(url);
    auto c = client_for(u.origin);
    httplib::Headers h;
    if (!opt_.token.empty()) h.emplace("Authorization", "Bearer " + opt_.token);
    auto r = c->Get(u.path, h);
    if (!r) return connect_error(r.error(), what, opt_);
    if (r->status != 200) return http_status_error(r->status, r->headers, what, repo, opt_);
    json body;
    try {
      body = json::parse(r->body);
    } catch (const json::exception& e) {
      return Status::Corruption(fmt::format("{}: the Hub's answer is not JSON ({}); is {} a Hugging Face endpoint?",
                                            what, e.what(), opt_.endpoint));
    }
    if (!body.is_array()) return Status::Corruption(fmt::format("{}: expected a JSON array of files", what));
    for (const auto& e : body) {
      if (!e.is_object() || e.value("type", "") != "file" || !e.contains("path") || !e["path"].is_string()) continue;
      HubFile f;
      f.path = e["path"].get<std::string>();
      if (e.contains("size") && e["size"].is_number_unsigned()) f.size = e["size"].get<uint64_t>();
      if (e.contains("lfs") && e["lfs"].is_object()) {
        const json& l = e["lfs"];
        if (l.contains("oid") && l["oid"].is_string()) f.sha256 = l["oid"].get<std::string>();
        if (l.contains("size") && l["size"].is_number_unsigned()) f.size = l["size"].get<uint64_t>();
      }
      files.push_back(std::move(f));
    }
    // Pagination: Link: <URL>; rel="next"
    url.clear();
    if (auto it = r->headers.find("Link"); it != r->headers.end()) {
      static const std::regex next(R"(<([^>]+)>\s*;\s*rel="?next"?)");
      std::smatch m;
      if (std::regex_search(it->second, m, next)) url = m[1].str();
      if (!url.empty() && url[0] == '/') url = opt_.endpoint + url;
    }
  }
  return files;
}

Status HubClient::download(const std::string& repo, const std::string& revision, const HubFile& file,
                           const std::string& partial, const std::string& dest, const Progress& progress) const {
  const std::string what = fmt::format("downloading {} from {}", file.path, repo);
  std::error_code ec;
  fs::create_directories(fs::path(partial).parent_path(), ec);
  int fd = ::open(partial.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IoError(fmt::format("cannot create {}: {}", partial, std::strerror(errno)));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  ::fstat(fd, &st);
  uint64_t have = static_cast<uint64_t>(st.st_size);
  if (file.size && have > file.size) {  // not a prefix of this file: start over
    if (::ftruncate(fd, 0) != 0) return Status::IoError(fmt::format("cannot truncate {}: {}", partial, std::strerror(errno)));
    have = 0;
  }
  // Room on the disk for the rest, before a byte is fetched.
  struct statvfs vfs {};
  if (file.size > have && ::statvfs(fs::path(partial).parent_path().c_str(), &vfs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (free_bytes < file.size - have) {
      return Status::IoError(fmt::format("{}: the disk is full: {} more bytes are needed in {} and {} are free; free "
                                         "space or set TROVE_HOME to a larger disk",
                                         what, file.size - have, fs::path(partial).parent_path().string(), free_bytes));
    }
  }
  Sha256 sha;
  if (Status s = hash_prefix(fd, have, sha, partial); !s.ok()) return s;
  if (::lseek(fd, static_cast<off_t>(have), SEEK_SET) < 0) return Status::IoError(std::strerror(errno));
  if (progress) progress(have, file.size);

  if (!file.size || have < file.size) {
    std::string url = fmt::format("{}/{}/resolve/{}/{}", opt_.endpoint, encode_path(repo), encode_path(revision),
                                  encode_path(file.path));
    const std::string hub_origin = split_url(opt_.endpoint).origin;
    int write_errno = 0;
    bool restarted = false;
    for (int hop = 0;; ++hop) {
      if (hop > 10) return Status::IoError(fmt::format("{}: too many redirects", what));
      const Url u = split_url(url);
      auto c = client_for(u.origin);
      httplib::Headers h;
      // The token goes to the Hub only, never to the CDN a redirect points at.
      if (!opt_.token.empty() && u.origin == hub_origin) h.emplace("Authorization", "Bearer " + opt_.token);
      if (have > 0) h.emplace("Range", fmt::format("bytes={}-", have));
      std::string location;
      int status = 0;
      httplib::Headers resp_headers;
      auto r = c->Get(
          u.path, h,
          [&](const httplib::Response& resp) {
            status = resp.status;
            resp_headers = resp.headers;
            if (status >= 300 && status < 400) {
              location = resp.get_header_value("Location");
              return false;
            }
            if (status == 200 && have > 0) {  // the server ignored the Range: take the whole file again
              if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) < 0) return false;
              have = 0;
              sha = Sha256();
            }
            return status == 200 || status == 206;
          },
          [&](const char* data, size_t n) {
            size_t off = 0;
            while (off < n) {
              const ssize_t w = ::write(fd, data + off, n - off);
              if (w < 0 && errno == EINTR) continue;
              if (w <= 0) {
                write_errno = w < 0 ? errno : ENOSPC;
                return false;
              }
              off += static_cast<size_t>(w);
            }
            sha.update(data, n);
            have += n;
            if (progress) progress(have, file.size);
            return true;
          });
      if (!location.empty()) {
        url = location[0] == '/' ? u.origin + location : location;
        continue;
      }
      if (write_errno) {
        return Status::IoError(fmt::format("{}: cannot write {}: {}{}", what, partial, std::strerror(write_errno),
                                           write_errno == ENOSPC || write_errno == EFBIG || write_errno == EDQUOT
                                               ? " (the disk is full: free space or set TROVE_HOME to a larger disk, "
                                                 "then run trove pull again to resume)"
                                               : ""));
      }
      if (status == 416 && !restarted) {  // our partial file is not a prefix the server knows: restart
        if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) < 0) return Status::IoError(std::strerror(errno));
        have = 0;
        sha = Sha256();
        restarted = true;
        continue;
      }
      if (status != 0 && status != 200 && status != 206) return http_status_error(status, resp_headers, what, repo, opt_);
      if (!r && status == 0) return connect_error(r.error(), what, opt_);
      if (!r || (file.size && have < file.size)) {
        return Status::IoError(fmt::format("{}: the connection ended at {} of {} bytes{}; run trove pull again to "
                                           "resume from there",
                                           what, have, file.size, r ? "" : " (" + httplib::to_string(r.error()) + ")"));
      }
      break;
    }
  }
  if (::fsync(fd) != 0) return Status::IoError(fmt::format("cannot sync {}: {}", partial, std::strerror(errno)));
  if (file.size && have != file.size) {
    ::unlink(partial.c_str());
    return Status::Corruption(fmt::format("{}: got {} bytes, the Hub lists {}; the partial file was deleted, run "
                                          "trove pull again",
                                          what, have, file.size));
  }
  const std::string got = sha.finish();
  if (!file.sha256.empty() && got != file.sha256) {
    ::unlink(partial.c_str());
    return Status::Corruption(fmt::format("{}: SHA-256 mismatch: the file has {}, the Hub lists {}; the download was "
                                          "deleted (its bytes cannot be trusted); run trove pull again",
                                          what, got, file.sha256));
  }
  if (std::rename(partial.c_str(), dest.c_str()) != 0) {
    return Status::IoError(fmt::format("cannot move {} to {}: {}", partial, dest, std::strerror(errno)));
  }
  return Status::Ok();
}

Result<std::string> sha256_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IoError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  Sha256 h;
  Status s = hash_prefix(fd, static_cast<uint64_t>(st.st_size), h, path);
  ::close(fd);
  if (!s.ok()) return s;
  return h.finish();
}

// ---------------------------------------------------------------- split GGUF

namespace {

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);  // GGUF is little-endian, as is every target
}

// A metadata value's payload as GGUF lays it out (the type id is written by set_raw).
void encode_value(const gguf::Value& v, std::string& out) {
  using T = gguf::ValueType;
  switch (v.type) {
    case T::kU8: put<uint8_t>(out, static_cast<uint8_t>(v.u)); break;
    case T::kI8: put<int8_t>(out, static_cast<int8_t>(v.i)); break;
    case T::kU16: put<uint16_t>(out, static_cast<uint16_t>(v.u)); break;
    case T::kI16: put<int16_t>(out, static_cast<int16_t>(v.i)); break;
    case T::kU32: put<uint32_t>(out, static_cast<uint32_t>(v.u)); break;
    case T::kI32: put<int32_t>(out, static_cast<int32_t>(v.i)); break;
    case T::kF32: put<float>(out, static_cast<float>(v.f)); break;
    case T::kBool: put<uint8_t>(out, v.u ? 1 : 0); break;
    case T::kString:
      put<uint64_t>(out, v.s.size());
      out.append(v.s);
      break;
    case T::kArray:
      put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(out, v.items.size());
      for (const auto& it : v.items) encode_value(it, out);  // a nested array writes its own header
      break;
    case T::kU64: put<uint64_t>(out, v.u); break;
    case T::kI64: put<int64_t>(out, v.i); break;
    case T::kF64: put<double>(out, v.f); break;
  }
}

}  // namespace

Status merge_split_gguf(const std::vector<std::string>& parts, const std::string& out) {
  std::vector<std::unique_ptr<gguf::GgufFile>> files;
  for (const auto& p : parts) {
    auto f = gguf::GgufFile::open(p);
    if (!f.ok()) return f.status();
    files.push_back(std::move(*f));
  }
  if (files.empty()) return Status::InvalidArgument("no GGUF parts to join");
  if (auto count = files[0]->get_u32_or("split.count", 1); !count.ok() || *count != files.size()) {
    return Status::Corruption(fmt::format("{}: split.count says {} parts, {} were downloaded", parts[0],
                                          count.ok() ? *count : 0, files.size()));
  }
  gguf::GgufWriter w(files[0]->alignment());
  for (const auto& [key, value] : files[0]->metadata()) {
    if (key.rfind("split.", 0) == 0) continue;
    std::string payload;
    encode_value(value, payload);
    w.set_raw(std::string(key), static_cast<uint32_t>(value.type),
              std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  }
  std::vector<const gguf::TensorInfo*> tensors;
  for (const auto& f : files) {
    for (const auto& t : f->tensors()) {
      w.add_tensor(std::string(t.name), std::vector<uint64_t>(t.ne, t.ne + t.n_dims), t.type);
      tensors.push_back(&t);
    }
  }
  if (Status s = w.begin(out); !s.ok()) return s;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (Status s = w.write_tensor(i, std::span<const uint8_t>(tensors[i]->data, tensors[i]->n_bytes)); !s.ok()) return s;
  }
  return w.finish();
}

// ---------------------------------------------------------------- the model directory

ModelStore::ModelStore(std::string dir) : dir_(std::move(dir)) {}

std::vector<ModelEntry> ModelStore::list() const {
  std::vector<std::pair<fs::file_time_type, ModelEntry>> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() != ".gguf" || !it->is_regular_file(ec)) continue;
    ModelEntry m;
    m.name = it->path().stem().string();
    m.path = it->path().string();
    m.bytes = it->file_size(ec);
    std::ifstream in(manifest_path(m.name));
    if (in) {
      try {
        m.manifest = json::parse(in);
        m.managed = true;
      } catch (const json::exception&) {
      }
    }
    found.emplace_back(it->last_write_time(ec), std::move(m));
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<ModelEntry> out;
  for (auto& [t, m] : found) out.push_back(std::move(m));
  return out;
}

Status ModelStore::write_manifest(const std::string& name, const json& manifest) const {
  const std::string path = manifest_path(name), tmp = path + ".tmp";
  const std::string text = manifest.dump(2) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IoError(fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return Status::IoError(fmt::format("cannot write {}: {}", path, std::strerror(ok ? errno : err)));
  }
  return Status::Ok();
}

Status ModelStore::remove(const std::string& name) const {
  std::error_code ec;
  const bool had_gguf = fs::remove(gguf_path(name), ec);
  const bool had_manifest = fs::remove(manifest_path(name), ec);
  fs::remove_all(partial_dir() + "/" + name, ec);
  if (!had_gguf && !had_manifest) {
    std::string names;
    for (const auto& m : list()) names += (names.empty() ? "" : ", ") + m.name;
    return Status::NotFound(fmt::format("no model {} in {}; models there: {}", name, dir_,
                                        names.empty() ? "none" : names));
  }
  return Status::Ok();
}

}  // namespace trove::hub
