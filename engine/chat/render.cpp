#include "engine/chat/render.h"

#include <fmt/format.h>

namespace trove::chat {

Result<std::unique_ptr<ChatRenderer>> renderer_by_name(std::string_view name) {
  if (name == "qwen3") return make_qwen3_renderer();
  if (name == "qwen3-coder") return make_qwen3_coder_renderer();
  return Status::InvalidArgument(
      fmt::format("chat format \"{}\" is not supported; supported formats: qwen3, qwen3-coder", name));
}

Result<std::unique_ptr<ChatRenderer>> select_renderer(std::string_view t) {
  auto has = [&](std::string_view s) { return t.find(s) != std::string_view::npos; };
  // Substrings that only these templates contain, chosen so whitespace edits elsewhere do not matter.
  if (has("render_item_list") && has("<function=") && has("<parameter=")) return make_qwen3_coder_renderer();
  if (has("multi_step_tool") && has("last_query_index") && has("<tool_response>") && has("reasoning_content"))
    return make_qwen3_renderer();
  if (t.empty())
    return Status::InvalidArgument(
        "chat template is empty; the model has no tokenizer.chat_template — pass --template FILE or --format "
        "qwen3|qwen3-coder");
  return Status::Unsupported(
      "chat template not recognised; trove renders natively only the official Qwen3 (hybrid thinking) and "
      "Qwen3-Coder templates — pass --format qwen3|qwen3-coder to use one of them");
}

}  // namespace trove::chat
