// tools/hub.h — the Hugging Face Hub as `trove pull` uses it, and the models it leaves on disk.
//
// Contract:
//  - HubClient talks to one endpoint (https://huggingface.co, or HF_ENDPOINT / TROVE_HF_ENDPOINT; http
//    endpoints are accepted for tests on loopback). With a token (HF_TOKEN, else the token file the
//    huggingface CLI writes) every request to the endpoint carries `Authorization: Bearer TOKEN`; a
//    redirect to another host (the Hub's CDN) never does.
//  - list() returns a repo's files with their sizes and, for LFS files, the SHA-256 the Hub records
//    (the LFS object id). Errors name the repo and say what to do: 404 (no such repo or revision),
//    401/403 (gated or private: accept the licence on the model page and set HF_TOKEN).
//  - download() fetches one file into `partial` (appending: an existing partial file is resumed with
//    an HTTP Range request), checks the size and the SHA-256 of the whole file, and only then renames
//    it to `dest`. A cut connection, a wrong checksum (the partial file is deleted: its bytes cannot be
//    trusted), an HTTP error or a failed write (disk full) returns an error and never leaves `dest`.
//  - Quantization choice (choose_quant) is a pure function of the repo's GGUF files, the GPU memory
//    and the model's KV bytes per token, so it is tested without a network or a GPU.
//  - ModelStore: `$TROVE_HOME/models/NAME.gguf` plus `NAME.manifest.json` (repo, revision, quant, source
//    files with sizes and SHA-256). A model is complete only when its manifest exists: pull writes the
//    manifest last, atomically, after every file is verified and in place. Downloads in progress live
//    in `models/.partial/` until then.
//  Not thread-safe; one pull at a time per model directory.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace trove::hub {

struct HubFile {
  std::string path;    // in the repo, e.g. "Q8_0/Qwen3-8B-Q8_0-00001-of-00002.gguf"
  uint64_t size = 0;
  std::string sha256;  // lowercase hex; empty when the Hub gives none (not an LFS file)
};

// The GGUF files of one quantization: one file, or the parts of a split GGUF in order.
struct QuantGroup {
  std::string quant;  // "Q4_K_M", "Q8_0", "BF16", ...
  std::vector<HubFile> parts;
  uint64_t bytes = 0;
  bool supported = false;  // trove can run every weight type this quantization uses
};

// "Qwen3-8B-Q4_K_M.gguf" → "Q4_K_M"; "x-UD-Q4_K_XL-00001-of-00002.gguf" → "UD-Q4_K_XL"; "" when none.
std::string quant_of(const std::string& filename);
// The GGUF files of a repo grouped by quantization (split parts in order); incomplete split sets
// and non-GGUF files are left out. Sorted by size.
std::vector<QuantGroup> group_gguf_files(const std::vector<HubFile>& files);

struct QuantChoice {
  QuantGroup group;
  std::string why;  // one sentence: what was chosen and why (printed by trove pull)
};
// Picks the best quantization that fits `gpu_bytes` with room for the KV of `context_tokens`
// (kv_bytes_per_token each) and a fixed working reserve: the first of Q8_0, Q6_K, Q5_K_M, Q5_K_S,
// Q4_K_M, Q4_K_S present and fitting (16-bit files are only taken when asked for: twice the bytes
// to read per token for a gain Q8_0 already gets). Nothing fits: the smallest supported one, saying it
// will not fit. `forced` (--quant) picks that one, case-insensitively, or fails listing the choices.
Result<QuantChoice> choose_quant(const std::vector<QuantGroup>& groups, uint64_t gpu_bytes, uint64_t kv_bytes_per_token,
                                 uint32_t context_tokens, const std::optional<std::string>& forced);

// Short names: `trove pull qwen3-8b`. kv_bytes_per_token is the model's f16 KV per token
// (2 · layers · kv_heads · head_dim · 2 bytes).
struct Alias {
  std::string name;
  std::string repo;
  std::string description;
  uint64_t kv_bytes_per_token;
};
const std::vector<Alias>& aliases();
const Alias* find_alias(const std::string& name_or_repo);
// KV bytes per token assumed for a repo that is not in the alias table (the largest Qwen3 shape's).
inline constexpr uint64_t kDefaultKvBytesPerToken = 256 * 1024;

struct HubOptions {
  std::string endpoint = "https://huggingface.co";
  std::string token;
};
// From the environment: TROVE_HF_ENDPOINT, else HF_ENDPOINT; HF_TOKEN, else the file
// $HF_TOKEN_PATH, else $HF_HOME/token (default ~/.cache/huggingface/token).
HubOptions hub_options_from_env();

// Bytes done, bytes total (of the current file), for a progress bar.
using Progress = std::function<void(uint64_t done, uint64_t total)>;

class HubClient {
 public:
  explicit HubClient(HubOptions options);
  Result<std::vector<HubFile>> list(const std::string& repo, const std::string& revision) const;
  Status download(const std::string& repo, const std::string& revision, const HubFile& file,
                  const std::string& partial, const std::string& dest, const Progress& progress) const;

 private:
  HubOptions opt_;
};

// Joins the parts of a split GGUF (llama.cpp's gguf-split: split.no / split.count / split.tensors.count
// in each part's metadata) into one GGUF at `out` — trove loads single files. Metadata comes from the
// first part without the split.* keys; tensors in part order. The output appears only when complete.
Status merge_split_gguf(const std::vector<std::string>& parts, const std::string& out);

// SHA-256 of a file's bytes, lowercase hex.
Result<std::string> sha256_file(const std::string& path);

struct ModelEntry {
  std::string name;       // file stem: what `trove rm` and `trove serve --model` take
  std::string path;       // the .gguf
  uint64_t bytes = 0;
  bool managed = false;   // has a manifest (pulled); false: a GGUF put there by hand or mkmodel
  nlohmann::json manifest;
};

class ModelStore {
 public:
  explicit ModelStore(std::string dir);
  const std::string& dir() const { return dir_; }
  std::string partial_dir() const { return dir_ + "/.partial"; }
  std::string gguf_path(const std::string& name) const { return dir_ + "/" + name + ".gguf"; }
  std::string manifest_path(const std::string& name) const { return dir_ + "/" + name + ".manifest.json"; }
  // Every complete model (a .gguf with a manifest, or a .gguf without one), newest first.
  std::vector<ModelEntry> list() const;
  // Writes the manifest atomically (temporary file, fsync, rename): the model becomes complete.
  Status write_manifest(const std::string& name, const nlohmann::json& manifest) const;
  // Deletes the model's .gguf and manifest. NotFound naming the models there when it has neither.
  Status remove(const std::string& name) const;

 private:
  std::string dir_;
};

}  // namespace trove::hub
