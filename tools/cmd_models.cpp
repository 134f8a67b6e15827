// `trove models` lists the models in $TROVE_HOME/models (pulled ones with their repo and quantization,
// GGUFs put there by hand or by mkmodel too); `trove rm NAME` deletes one (its .gguf, manifest and any
// partial download). `trove serve` without --model serves the newest of them.
#include <cstdio>
#include <ctime>
#include <string>

#include <fmt/format.h>

#include "tools/command.h"
#include "tools/hub.h"
#include "tools/paths.h"
#include "tools/sizes.h"

namespace {

using namespace trove;

void models(bool json_out) {
  hub::ModelStore store(cli::default_model_dir());
  const auto list = store.list();
  if (json_out) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& m : list) {
      nlohmann::json j = {{"name", m.name}, {"path", m.path}, {"bytes", m.bytes}, {"pulled", m.managed}};
      if (m.managed) {
        j["repo"] = m.manifest.value("repo", "");
        j["quant"] = m.manifest.value("quant", "");
      }
      out.push_back(j);
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  if (list.empty()) {
    std::printf("no models in %s; get one with: trove pull qwen3-coder (trove pull --list shows the names)\n",
                store.dir().c_str());
    return;
  }
  std::printf("%-44s %10s  %-8s %s\n", "NAME", "SIZE", "QUANT", "FROM");
  for (const auto& m : list) {
    std::printf("%-44s %10s  %-8s %s\n", m.name.c_str(), cli::human_bytes(m.bytes).c_str(),
                m.managed ? m.manifest.value("quant", "").c_str() : "",
                m.managed ? m.manifest.value("repo", "").c_str() : "(not pulled: put there by hand or mkmodel)");
  }
  std::printf("(in %s; the first is what trove serve uses without --model)\n", store.dir().c_str());
}

void add_models(CLI::App& sub) {
  auto json_out = std::make_shared<bool>(false);
  sub.add_flag("--json", *json_out, "Print JSON");
  sub.callback([json_out] { models(*json_out); });
}

void add_rm(CLI::App& sub) {
  auto names = std::make_shared<std::vector<std::string>>();
  sub.add_option("name", *names, "Model name(s) as `trove models` lists them")->required();
  sub.callback([names] {
    hub::ModelStore store(cli::default_model_dir());
    for (std::string n : *names) {
      if (n.size() > 5 && n.substr(n.size() - 5) == ".gguf") n = n.substr(0, n.size() - 5);
      if (Status s = store.remove(n); !s.ok()) cli::fail(s.message());
      std::printf("removed %s\n", n.c_str());
    }
  });
}

cli::CommandRegistration reg_models{"models", "List the models in the model directory", add_models};
cli::CommandRegistration reg_rm{"rm", "Delete a model from the model directory", add_rm};

}  // namespace
