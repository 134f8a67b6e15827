// `trove tokenize`: text to token ids and back with a model's tokenizer.
//
//   trove tokenize -m MODEL [--special] TEXT         ids of TEXT as a JSON array
//   trove tokenize -m MODEL [--special] --file F     ids of F's bytes
//   trove tokenize -m MODEL --decode "[1,2,3]"       text of ids (JSON array or comma separated)
//   trove tokenize -m MODEL --jsonl IN               batch: each line {"text": "...", "special": bool}
//                                                    → {"ids": [...], "roundtrip": bool} per line
// MODEL is a GGUF file, or (for development) a Hugging Face tokenizer.json.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/command.h"

namespace {

using trove::tokenizer::TokenId;
using trove::tokenizer::Tokenizer;

std::unique_ptr<Tokenizer> load(const std::string& path) {
  trove::Result<std::unique_ptr<Tokenizer>> t = trove::Status::Internal("unreachable");
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    t = Tokenizer::from_hf_json(path);
  } else {
    auto f = trove::gguf::GgufFile::open(path);
    if (!f.ok()) trove::cli::fail(f.status().message());
    t = Tokenizer::from_gguf(**f);
  }
  if (!t.ok()) trove::cli::fail(t.status().message());
  return std::move(*t);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) trove::cli::fail("cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<TokenId> parse_ids(const std::string& s) {
  std::vector<TokenId> ids;
  try {
    auto j = nlohmann::json::parse(s.find('[') != std::string::npos ? s : "[" + s + "]");
    for (const auto& v : j) ids.push_back(v.get<TokenId>());
  } catch (const std::exception& e) {
    trove::cli::fail("--decode expects token ids as a JSON array or comma separated integers, got '" + s + "'");
  }
  return ids;
}

std::string ids_json(const std::vector<TokenId>& ids) {
  return nlohmann::json(ids).dump();
}

void add_tokenize(CLI::App& sub) {
  struct Opts {
    std::string model, text, file, decode, jsonl;
    bool special = false;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("-m,--model", o->model, "GGUF model (or tokenizer.json)")->required();
  sub.add_option("text", o->text, "Text to tokenize");
  sub.add_option("--file", o->file, "Tokenize this file's bytes");
  sub.add_flag("--special", o->special, "Match added tokens (<|im_start|>, <think>, ...) whole (template text)");
  sub.add_option("--decode", o->decode, "Token ids to turn into text (JSON array or comma separated)");
  sub.add_option("--jsonl", o->jsonl, "Batch mode: one JSON object {\"text\",\"special\"} per line");
  sub.callback([o] {
    auto tok = load(o->model);
    if (!o->decode.empty()) {
      const auto ids = parse_ids(o->decode);
      auto s = tok->decode(ids, /*render_special=*/true);
      if (!s.ok()) trove::cli::fail(s.status().message());
      std::fwrite(s->data(), 1, s->size(), stdout);
      std::printf("\n");
      return;
    }
    if (!o->jsonl.empty()) {
      std::ifstream in(o->jsonl);
      if (!in) trove::cli::fail("cannot read '" + o->jsonl + "'");
      std::string line;
      size_t n = 0;
      while (std::getline(in, line)) {
        ++n;
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const std::exception& e) {
          trove::cli::fail(o->jsonl + ":" + std::to_string(n) + ": not JSON: " + e.what());
        }
        const auto text = j.at("text").get<std::string>();
        const bool special = j.value("special", false);
        const auto ids = tok->encode(text, special);
        auto back = tok->decode(ids, true);
        nlohmann::json r;
        r["ids"] = ids;
        // Round trip to the normalized text (== text for text already in NFC).
        r["roundtrip"] = back.ok() && *back == Tokenizer::normalize(text);
        std::printf("%s\n", r.dump().c_str());
      }
      return;
    }
    const std::string text = o->file.empty() ? o->text : read_all(o->file);
    std::printf("%s\n", ids_json(tok->encode(text, o->special)).c_str());
  });
}

trove::cli::CommandRegistration reg{"tokenize", "Text to token ids (and back with --decode)", add_tokenize};
}  // namespace
