// server/force_script.h — a test hook: a script of replies chosen by what a request carries, for tests
// that drive real clients (which never send the `trove_force_output` body field).
//
// Contract:
//  - load_force_script() reads a JSON file `{"rules": [{"last": ROLE?, "tool": NAME?, "output": TEXT}, …]}`
//    and rejects anything else with a message naming the rule and field at fault.
//  - pick_forced_output() returns the output of the first rule whose conditions all hold, or nothing:
//      "last": the role of the conversation's last message ("tool": the client just sent a tool result;
//              "user", "assistant", "system");
//      "tool": a tool of that name is offered (a client's side requests, e.g. titles, offer none).
//    A rule without conditions matches every request. The text is forced exactly as with
//    `trove_force_output` (tokens generated, then stop); a request that sends that field keeps it.
//  - Only `trove serve --test-force-script FILE` loads one; nothing else changes without it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/chat/conversation.h"

namespace trove::server {

struct ForceRule {
  std::optional<chat::Role> last;
  std::optional<std::string> tool;
  std::string output;
};

Result<std::vector<ForceRule>> load_force_script(const std::string& path);
std::optional<std::string> pick_forced_output(const std::vector<ForceRule>& rules, const chat::Conversation& c);

}  // namespace trove::server
