// `trove render`: print the exact prompt text a model's chat template makes of a conversation.
// The template comes from the model's `tokenizer.chat_template` GGUF metadata (-m), a template file
// (--template) or a format name (--format qwen3|qwen3-coder); the renderer is trove's native one.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "engine/chat/conversation.h"
#include "engine/chat/render.h"
#include "engine/gguf/gguf.h"
#include "tools/command.h"

namespace {

std::string slurp(const std::string& path, const char* what) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  std::ifstream f(path, std::ios::binary);
  if (!f) trove::cli::fail(std::string("cannot open ") + what + " " + path + ": check the path");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct RenderArgs {
  std::string model, template_file, format, conversation;
  bool show_format = false;
};

void add_render(CLI::App& sub) {
  auto a = std::make_shared<RenderArgs>();
  sub.add_option("-m,--model", a->model, "GGUF model whose tokenizer.chat_template to use");
  sub.add_option("--template", a->template_file, "Chat template file (Jinja source of a supported template)");
  sub.add_option("--format", a->format, "Chat format by name: qwen3 or qwen3-coder");
  sub.add_option("--conversation", a->conversation,
                 "JSON file {messages, tools?, enable_thinking?, add_generation_prompt?} ('-' = stdin)")
      ->required();
  sub.add_flag("--show-format", a->show_format, "Print the recognised format name to stderr");
  sub.callback([a] {
    int sources = !a->model.empty() + !a->template_file.empty() + !a->format.empty();
    if (sources != 1) trove::cli::fail("render: give exactly one of -m MODEL, --template FILE or --format NAME");
    trove::Result<std::unique_ptr<trove::chat::ChatRenderer>> renderer =
        trove::Status::Internal("no renderer chosen");
    if (!a->format.empty()) {
      renderer = trove::chat::renderer_by_name(a->format);
    } else if (!a->template_file.empty()) {
      renderer = trove::chat::select_renderer(slurp(a->template_file, "template"));
    } else {
      auto f = trove::gguf::GgufFile::open(a->model);
      if (!f.ok()) trove::cli::fail(f.status().message());
      auto t = (*f)->get_string("tokenizer.chat_template");
      if (!t.ok())
        trove::cli::fail("render: " + a->model + " has no tokenizer.chat_template; pass --template FILE or --format NAME");
      renderer = trove::chat::select_renderer(*t);
    }
    if (!renderer.ok()) trove::cli::fail(renderer.status().message());
    std::string text = slurp(a->conversation, "conversation");
    auto json = trove::chat::Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) trove::cli::fail("render: " + a->conversation + " is not valid JSON");
    auto conv = trove::chat::from_openai_json(json);
    if (!conv.ok()) trove::cli::fail(conv.status().message());
    auto prompt = (*renderer)->render(*conv);
    if (!prompt.ok()) trove::cli::fail(prompt.status().message());
    if (a->show_format) std::fprintf(stderr, "format: %s\n", std::string((*renderer)->name()).c_str());
    std::fwrite(prompt->data(), 1, prompt->size(), stdout);
  });
}

trove::cli::CommandRegistration reg{"render", "Render a conversation with a model's chat template", add_render};

}  // namespace
