// Chat renderers: turn a Conversation into the exact prompt text a model's chat template produces.
//
// Contract:
// - Each renderer reproduces one official Jinja chat template byte for byte, natively (no Jinja
//   interpreter), as Hugging Face renders it (trim_blocks, lstrip_blocks, tojson = Python json.dumps with
//   ensure_ascii=False and ", " / ": " separators). tests/chat_render checks this against real Jinja2.
// - render() fails with InvalidArgument where the official template raises (e.g. no messages, a tool
//   without parameters for Qwen3-Coder), naming the message and the problem.
// - Documented deviations (docs/chat-formats.md): Qwen3 renders an assistant message with null content as
//   if the content were "" (the official template raises); null content on user/system/tool messages is
//   rejected by both renderers (the templates would raise or print "None").
// - select_renderer() recognises the supported templates by distinctive substrings and names them in
//   its error for any other template.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "engine/chat/conversation.h"

namespace trove::chat {

class ChatRenderer {
 public:
  virtual ~ChatRenderer() = default;
  virtual std::string_view name() const = 0;
  virtual Result<std::string> render(const Conversation& conversation) const = 0;
};

std::unique_ptr<ChatRenderer> make_qwen3_renderer();
std::unique_ptr<ChatRenderer> make_qwen3_coder_renderer();

// The names select_renderer() accepts in its error message: "qwen3, qwen3-coder".
Result<std::unique_ptr<ChatRenderer>> select_renderer(std::string_view chat_template);
// By name ("qwen3" or "qwen3-coder"), for tests and `trove render --format`.
Result<std::unique_ptr<ChatRenderer>> renderer_by_name(std::string_view name);

}  // namespace trove::chat
