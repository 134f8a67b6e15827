// Prefix-cache benchmark: time to first token for a long shared prefix (a coding agent's system prompt
// and tool schemas), cold, warm on the GPU, from the KV store after a restart (store files in the page
// cache, and dropped from it), and for 8 sessions that share the prefix. Printed beside the cold time
// and llama.cpp's (TARGETS.md: its prompt cache lives in RAM, so after a restart it prefills again).
//
//   build/bench/cache/bench_prefix_cache --model M.gguf [--model M2.gguf] [--prefix 25000] [--sessions 8]
//       [--store-dir DIR] [--batch 2048]
//
// Engine level, as the scheduler drives it (after one uncached warm-up prompt that builds the pipelines): attach_prefix() (GPU match, then the store), prefill the
// rest in steps of --batch tokens (the engine's and `trove serve`'s default, 2048), the first token sampled from the last step. Times include attach (lookup,
// reads, upload) and exclude model loading (printed separately). The request's own tail (--suffix
// tokens after the prefix) differs per measurement, as a new user turn would. "restart" destroys the
// engine and the store (flushed) and opens both again; "cold disk" additionally drops the store's
// files from the page cache (posix_fadvise DONTNEED per file; root also writes /proc/sys/vm/drop_caches).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "engine/runtime/engine.h"
#include "kvstore/store.h"

using namespace trove;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Args {
  std::vector<std::string> models;
  uint32_t prefix = 25000;
  uint32_t suffix = 64;
  uint32_t sessions = 8;
  uint32_t batch = engine::EngineOptions{}.max_batch_tokens;
  std::string store_dir;
};

std::vector<int32_t> random_tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, 150000);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

// The prompt of one request: the shared prefix, then its own tail.
std::vector<int32_t> request(const std::vector<int32_t>& prefix, uint32_t suffix, uint32_t seed) {
  auto p = prefix;
  const auto tail = random_tokens(suffix, seed);
  p.insert(p.end(), tail.begin(), tail.end());
  return p;
}

struct Timed {
  double ttft = 0;          // seconds to the first token
  uint32_t attached = 0;    // tokens taken from the cache
};

// Opens `n` sequences, attaches each prompt's cached prefix, then prefills every remainder together in
// steps of at most max_batch_tokens (round-robin over the sequences, as the scheduler batches) until
// each has sampled its first token. Returns the time until the LAST first token and the mean attach.
Result<std::vector<Timed>> first_tokens(engine::Engine& e, const std::vector<std::vector<int32_t>>& prompts) {
  const auto t0 = Clock::now();
  std::vector<engine::SeqId> seqs;
  std::vector<Timed> out(prompts.size());
  std::vector<size_t> at(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto s = e.open_sequence();
    if (!s.ok()) return s.status();
    seqs.push_back(*s);
    const std::span<const int32_t> p(prompts[i]);
    auto got = e.attach_prefix(*s, p.first(p.size() - 1), "bench");
    if (!got.ok()) return got.status();
    out[i].attached = *got;
    at[i] = *got;
  }
  size_t left = prompts.size();
  while (left > 0) {
    std::vector<engine::StepInput> batch;
    std::vector<size_t> who;
    uint32_t budget = e.max_batch_tokens();
    for (size_t i = 0; i < prompts.size() && budget > 0; ++i) {
      if (at[i] >= prompts[i].size()) continue;
      const uint32_t n = std::min<uint32_t>(budget, static_cast<uint32_t>(prompts[i].size() - at[i]));
      engine::StepInput in;
      in.seq = seqs[i];
      in.tokens = std::span<const int32_t>(prompts[i]).subspan(at[i], n);
      in.sample = at[i] + n == prompts[i].size();
      batch.push_back(in);
      who.push_back(i);
      budget -= n;
    }
    auto r = e.step(batch);
    if (!r.ok()) return r.status();
    for (size_t j = 0; j < batch.size(); ++j) {
      const size_t i = who[j];
      at[i] += batch[j].tokens.size();
      if (batch[j].sample) {
        out[i].ttft = secs(t0);
        --left;
      }
    }
  }
  for (auto s : seqs) e.close_sequence(s);
  return out;
}

Result<std::shared_ptr<kv::Store>> open_store(const std::string& dir) {
  auto s = kv::Store::open(dir, kv::Options{});
  if (!s.ok()) return s.status();
  return std::shared_ptr<kv::Store>(std::move(*s));
}

// Drops the store's files from the page cache. Returns what was done, for the table's notes.
std::string drop_page_cache(const std::string& dir) {
  uint64_t files = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir)) {
    if (!f.is_regular_file()) continue;
    const int fd = ::open(f.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    (void)::fdatasync(fd);
    if (::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0) ++files;
    ::close(fd);
  }
  std::string how = fmt::format("fadvise DONTNEED on {} files", files);
  ::sync();
  std::ofstream drop("/proc/sys/vm/drop_caches");
  if (drop && (drop << "1\n") && drop.flush()) how += " + drop_caches";
  return how;
}

struct Result_ {
  std::string model;
  double load = 0, cold = 0, gpu = 0, restart = 0, disk = 0, sessions = 0, sessions_mean = 0;
  uint32_t attached_gpu = 0, attached_restart = 0, attached_disk = 0;
  double restored_gb = 0, restore_s_cached = 0, restore_s_disk = 0;
  double export_s = 0;         // of the cold request: the steps' time copying completed blocks back
  double export_worker_s = 0;  // the write-behind worker's time for them (off the steps, see block_export.h)
  double export_after_s = 0;   // how long after the first token the worker had queued the last of them
  double export_wait_s = 0;    // of the worker's time, waiting for room in the store's queue (the disk)
  uint64_t dropped = 0;        // completed blocks the store's queue refused (not stored)
  kv::Stats store;
  std::string drop_how;
};

Status bench_model(const Args& a, const std::string& model, Result_& r) {
  const std::string dir = a.store_dir + "/" + std::filesystem::path(model).stem().string();
  std::filesystem::remove_all(dir);
  engine::EngineOptions o;
  o.model_path = model;
  o.n_ctx = (a.prefix + a.suffix + 64 + 63) / 64 * 64;
  o.max_sequences = a.sessions;
  o.max_batch_tokens = a.batch;
  const auto prefix = random_tokens(a.prefix, 1);
  auto load = [&](std::shared_ptr<kv::Store> store) -> Result<std::unique_ptr<engine::Engine>> {
    o.store = std::move(store);
    const auto t0 = Clock::now();
    auto e = engine::Engine::load(o);
    r.load = secs(t0);
    o.store.reset();  // the engine holds its own reference; a restart must be able to close the store
    return e;
  };
  // Builds the pipelines of every step shape (a full step and a short one) with a prompt that caches
  // nothing (no attach_prefix), so the cold time is the prefill's and not a fresh machine's compiles.
  auto warm_up = [&](engine::Engine& e) -> Status {
    auto s = e.open_sequence();
    if (!s.ok()) return s.status();
    const auto toks = random_tokens(e.max_batch_tokens() + 100, 7);
    for (size_t at = 0; at < toks.size();) {
      const size_t n = std::min<size_t>(e.max_batch_tokens(), toks.size() - at);
      engine::StepInput in;
      in.seq = *s;
      in.tokens = std::span<const int32_t>(toks).subspan(at, n);
      in.sample = at + n == toks.size();
      auto r = e.step(std::span<const engine::StepInput>(&in, 1));
      if (!r.ok()) return r.status();
      at += n;
    }
    e.close_sequence(*s);
    return Status::Ok();
  };
  auto one = [&](engine::Engine& e, uint32_t seed) -> Result<Timed> {
    auto t = first_tokens(e, {request(prefix, a.suffix, seed)});
    if (!t.ok()) return t.status();
    return (*t)[0];
  };

  auto store = open_store(dir);
  if (!store.ok()) return store.status();
  {
    auto e = load(*store);
    if (!e.ok()) return e.status();
    r.model = (*e)->config().name;
    if (Status w = warm_up(**e); !w.ok()) return w;
    auto cold = one(**e, 100);
    if (!cold.ok()) return cold.status();
    r.cold = cold->ttft;
    r.export_s = (*e)->cache_stats().store_export_seconds;
    const auto t_drain = Clock::now();
    (*e)->wait_for_store_writes();
    r.export_after_s = secs(t_drain);
    r.export_worker_s = (*e)->cache_stats().store_export_worker_seconds;
    r.export_wait_s = (*e)->cache_stats().store_export_wait_seconds;
    r.dropped = (*e)->cache_stats().store_blocks_dropped;
    auto warm = one(**e, 101);
    if (!warm.ok()) return warm.status();
    r.gpu = warm->ttft;
    r.attached_gpu = warm->attached;
    std::vector<std::vector<int32_t>> many;
    for (uint32_t i = 0; i < a.sessions; ++i) many.push_back(request(prefix, a.suffix, 200 + i));
    auto s = first_tokens(**e, many);
    if (!s.ok()) return s.status();
    double mean = 0;
    for (const auto& t : *s) {
      r.sessions = std::max(r.sessions, t.ttft);
      mean += t.ttft / s->size();
    }
    r.sessions_mean = mean;
  }  // the engine flushes the store
  r.store = (*store)->stats();
  store->reset();

  // Restart with the store's files in the page cache (written moments ago).
  store = open_store(dir);
  if (!store.ok()) return store.status();
  {
    auto e = load(*store);
    if (!e.ok()) return e.status();
    auto t = one(**e, 102);
    if (!t.ok()) return t.status();
    r.restart = t->ttft;
    r.attached_restart = t->attached;
    r.restored_gb = (*e)->cache_stats().store_restored_bytes / 1e9;
    r.restore_s_cached = (*e)->cache_stats().store_restore_seconds;
  }
  store->reset();

  // Restart from a cold disk.
  r.drop_how = drop_page_cache(dir);
  store = open_store(dir);
  if (!store.ok()) return store.status();
  {
    auto e = load(*store);
    if (!e.ok()) return e.status();
    auto t = one(**e, 103);
    if (!t.ok()) return t.status();
    r.disk = t->ttft;
    r.attached_disk = t->attached;
    r.restore_s_disk = (*e)->cache_stats().store_restore_seconds;
  }
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"trove prefix-cache benchmark: time to first token with a long shared prefix"};
  app.add_option("--model", a.models, "GGUF model(s)")->required();
  app.add_option("--prefix", a.prefix, "Shared prefix tokens")->capture_default_str();
  app.add_option("--suffix", a.suffix, "Each request's own tokens after the prefix")->capture_default_str();
  app.add_option("--sessions", a.sessions, "Concurrent sessions sharing the prefix")->capture_default_str();
  app.add_option("--batch", a.batch, "Tokens per engine step (EngineOptions::max_batch_tokens)")->capture_default_str();
  app.add_option("--store-dir", a.store_dir, "Where the benchmark's KV stores go (emptied per model)");
  CLI11_PARSE(app, argc, argv);
  if (a.store_dir.empty()) a.store_dir = (std::filesystem::temp_directory_path() / "trove-bench-store").string();

  std::vector<Result_> rows;
  for (const auto& m : a.models) {
    Result_ r;
    if (Status st = bench_model(a, m, r); !st.ok()) {
      std::fprintf(stderr, "%s: %s\n", m.c_str(), st.ToString().c_str());
      return 1;
    }
    rows.push_back(r);
  }
  std::printf("\nTime to first token, %u-token shared prefix + %u own tokens, steps of %u tokens (seconds; %% = of cold)\n\n",
              a.prefix, a.suffix, a.batch);
  std::printf("| model | cold | warm GPU | restart, store in page cache | restart, cold disk | %u sessions (last / mean) | llama.cpp after restart |\n",
              a.sessions);
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %s | %.2f | %.3f (%.1f%%) | %.3f (%.1f%%) | %.3f (%.1f%%) | %.3f / %.3f | ≈ cold (prefills again; TARGETS.md: ≈2.5 s) |\n",
                r.model.c_str(), r.cold, r.gpu, 100 * r.gpu / r.cold, r.restart, 100 * r.restart / r.cold, r.disk,
                100 * r.disk / r.cold, r.sessions, r.sessions_mean);
  }
  std::printf("\n| model | cached tokens (GPU / restart / disk) | KV restored | restore time page cache / disk | store on disk (compression) | write-behind: in the cold TTFT / worker (waiting for the disk) / done after the first token; blocks dropped | load | page cache drop |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %s | %u / %u / %u | %.2f GB | %.3f s (%.1f GB/s) / %.3f s (%.1f GB/s) | %.2f GB (%.2fx) | %.2f / %.2f (%.2f) / %.2f s; %llu | %.1f s | %s |\n",
                r.model.c_str(), r.attached_gpu, r.attached_restart, r.attached_disk, r.restored_gb, r.restore_s_cached,
                r.restored_gb / std::max(1e-9, r.restore_s_cached), r.restore_s_disk,
                r.restored_gb / std::max(1e-9, r.restore_s_disk), r.store.stored_bytes / 1e9,
                r.store.compression_ratio(), r.export_s, r.export_worker_s, r.export_wait_s, r.export_after_s,
                static_cast<unsigned long long>(r.dropped), r.load, r.drop_how.c_str());
  }
  return 0;
}
