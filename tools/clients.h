// tools/clients.h — how each coding agent is pointed at a trove server: `trove config CLIENT` prints
// it, `trove launch CLIENT` applies it.
//
// Contract: client_setup() is a pure function of the client's name and the served model (URL, id,
// context window, output limit, reasoning). It returns environment variables, extra command-line
// arguments and config files. Config files are always trove's own, under `config_dir`
// ($TROVE_HOME/clients/CLIENT): a client is pointed at them by an environment variable or a flag
// that layers them over the user's configuration; no file of the user's is ever written. Every client
// gets the model's real context window and output limit, whether it reasons, and that tool calls
// stream, so none falls back to defaults for an unknown model.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace trove::clients {

struct ServedModel {
  std::string url;       // http://127.0.0.1:8080 (no trailing slash, no /v1)
  std::string id;        // what /v1/models calls the model
  uint32_t n_ctx = 0;    // context window in tokens
  uint32_t max_output = 0;
  bool reasoning = false;
  std::string api_key;   // empty: the server needs none (clients still get a placeholder)
};

struct ConfigFile {
  std::string path;
  std::string content;
};

struct ClientSetup {
  std::string client;      // pi, claude, codex, opencode, qwen
  std::string program;     // the executable to run
  std::string npm_package; // where it comes from
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> args;  // before the user's own arguments
  std::vector<ConfigFile> files;
  std::string note;        // one line a person setting it up by hand should know
};

const std::vector<std::string>& client_names();

// The model to tell clients about: from the trove server at `url` (GET /v1/models) when it answers
// (`running` true), else from the GGUF at `model_path` (what trove serve would load: its context
// capped at serve's default 32768, reasoning for a Qwen3 thinking template).
Result<ServedModel> describe_served_model(const std::string& url, const std::string& model_path, bool& running);
Result<ClientSetup> client_setup(const std::string& client, const ServedModel& model, const std::string& config_dir);

}  // namespace trove::clients
