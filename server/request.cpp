#include "server/request.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace trove::server {

using chat::Json;

namespace {

const char* type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    case Json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

std::string join_path(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

// Typed access to a JSON object's optional fields; the first problem is kept with its path.
class Fields {
 public:
  Fields(const Json& obj, std::string prefix, std::optional<ApiError>& error)
      : obj_(obj), prefix_(std::move(prefix)), error_(error) {}

  const Json* get(const char* key) const {
    if (!obj_.is_object()) return nullptr;
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  void fail(const std::string& path, const std::string& problem) {
    if (error_) return;
    ApiError e;
    e.param = path;
    e.message = fmt::format("{}: {}", path, problem);
    error_ = e;
  }
  std::string path(const char* key) const { return join_path(prefix_, key); }

  std::optional<std::string> str(const char* key) {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) return fail(path(key), fmt::format("must be a string, got {}", type_name(*v))), std::nullopt;
    return v->get<std::string>();
  }
  std::optional<bool> boolean(const char* key) {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) return fail(path(key), fmt::format("must be true or false, got {}", type_name(*v))), std::nullopt;
    return v->get<bool>();
  }
  std::optional<int64_t> integer(const char* key, int64_t lo, int64_t hi) {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    bool integral = v->is_number_integer() ||
                    (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>());
    if (!integral) {
      return fail(path(key), fmt::format("must be an integer >= {}, got {}", lo, type_name(*v))), std::nullopt;
    }
    const double d = v->get<double>();
    // Compared as doubles, then exactly: 2^63 as a double equals (double)INT64_MAX, and converting it
    // to int64_t would be undefined behaviour.
    const bool out_of_range =
        d < static_cast<double>(lo) || d > static_cast<double>(hi) ||
        (hi >= 0 && v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) ||
        (v->is_number_float() && (d >= 0x1p63 || d < -0x1p63));
    if (out_of_range) {
      return fail(path(key), fmt::format("must be between {} and {}, got {}", lo, hi, v->dump())), std::nullopt;
    }
    return v->is_number_integer() ? v->get<int64_t>() : static_cast<int64_t>(d);
  }
  std::optional<double> number(const char* key, double lo, double hi) {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) return fail(path(key), fmt::format("must be a number, got {}", type_name(*v))), std::nullopt;
    const double d = v->get<double>();
    if (d < lo || d > hi) return fail(path(key), fmt::format("must be between {} and {}, got {}", lo, hi, d)), std::nullopt;
    return d;
  }
  const Json* object(const char* key) {
    const Json* v = get(key);
    if (v && !v->is_object()) return fail(path(key), fmt::format("must be an object, got {}", type_name(*v))), nullptr;
    return v;
  }
  const Json* array(const char* key) {
    const Json* v = get(key);
    if (v && !v->is_array()) return fail(path(key), fmt::format("must be an array, got {}", type_name(*v))), nullptr;
    return v;
  }

 private:
  const Json& obj_;
  std::string prefix_;
  std::optional<ApiError>& error_;
};

ParsedRequest failed(ApiError e) {
  ParsedRequest r;
  r.error = std::move(e);
  return r;
}

ParsedRequest failed(const std::string& path, const std::string& problem) {
  ApiError e;
  e.param = path;
  e.message = path.empty() ? problem : fmt::format("{}: {}", path, problem);
  return failed(e);
}

// chat::from_openai_json reports "conversation: PATH: problem"; keep the path as the error's param.
ApiError conversation_error(const Status& s, const std::string& path_prefix = "") {
  ApiError e;
  std::string m = s.message();
  const std::string tag = "conversation: ";
  if (m.rfind(tag, 0) == 0) m = m.substr(tag.size());
  const size_t colon = m.find(": ");
  if (colon != std::string::npos) {
    e.param = path_prefix + m.substr(0, colon);
    e.message = path_prefix + m;
  } else {
    e.message = m;
  }
  return e;
}

// Sampling fields common to the dialects.
void read_sampling(Fields& f, ChatJob& job) {
  job.sampling.temperature = 0.7f;
  job.sampling.top_p = 0.8f;
  job.sampling.top_k = 20;
  if (auto t = f.number("temperature", 0.0, 2.0)) job.sampling.temperature = static_cast<float>(*t);
  if (auto p = f.number("top_p", 0.0, 1.0)) job.sampling.top_p = static_cast<float>(*p);
  if (auto k = f.integer("top_k", 0, 1 << 30)) job.sampling.top_k = *k <= 0 ? 64 : static_cast<uint32_t>(std::min<int64_t>(*k, 64));
  if (auto m = f.number("min_p", 0.0, 1.0)) job.sampling.min_p = static_cast<float>(*m);
  if (auto s = f.integer("seed", INT64_MIN, INT64_MAX)) job.sampling.seed = static_cast<uint64_t>(*s);
}

void read_stop(Fields& f, const char* key, ChatJob& job) {
  const Json* v = f.get(key);
  if (!v) return;
  if (v->is_string()) {
    job.stop.push_back(v->get<std::string>());
    return;
  }
  if (!v->is_array()) return f.fail(f.path(key), fmt::format("must be a string or an array of strings, got {}", type_name(*v)));
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string()) return f.fail(fmt::format("{}[{}]", f.path(key), i), "must be a string");
    job.stop.push_back((*v)[i].get<std::string>());
  }
}

// tool_choice "none" removes the tools from the prompt; a named tool keeps only that one.
// "required" / "any" and a named tool make the server start the reply inside a tool call.
std::optional<ApiError> apply_tool_choice(Json& conv, const std::string& name_or_mode, ChatJob& job) {
  if (name_or_mode == "none") {
    conv.erase("tools");
    return std::nullopt;
  }
  if (name_or_mode == "auto") return std::nullopt;
  if (name_or_mode == "required" || name_or_mode == "any") {
    if (!conv.contains("tools")) {
      ApiError e;
      e.param = "tool_choice";
      e.message = fmt::format("tool_choice: \"{}\" needs at least one tool in tools", name_or_mode);
      return e;
    }
    job.require_tool_call = true;
    return std::nullopt;
  }
  if (!conv.contains("tools")) {
    ApiError e;
    e.param = "tool_choice";
    e.message = fmt::format("tool_choice: names the tool \"{}\" but the request offers no tools", name_or_mode);
    return e;
  }
  Json kept = Json::array();
  for (const auto& t : conv["tools"]) {
    // Any shape may arrive here (a tool that is not an object, a name that is not a string): the
    // tools' own validation reports those; value() would throw on them (found by fuzz_request_path).
    const Json& fn = t.is_object() && t.contains("function") ? t["function"] : t;
    const auto name = fn.is_object() ? fn.find("name") : fn.end();
    if (fn.is_object() && name != fn.end() && name->is_string() && name->get<std::string>() == name_or_mode) {
      kept.push_back(t);
    }
  }
  if (kept.empty()) {
    ApiError e;
    e.param = "tool_choice";
    e.message = fmt::format("tool_choice: names the tool \"{}\" which is not in tools", name_or_mode);
    return e;
  }
  conv["tools"] = kept;
  job.require_tool_call = true;
  job.required_tool = name_or_mode;
  return std::nullopt;
}

ParsedRequest finish_job(Json conv, ChatJob job, Fields& f, std::optional<ApiError>& err) {
  if (auto fo = f.str("trove_force_output")) job.force_output = *fo;
  if (err) return failed(*err);
  auto parsed = chat::from_openai_json(conv);
  if (!parsed.ok()) return failed(conversation_error(parsed.status()));
  job.conversation = std::move(*parsed);
  ParsedRequest r;
  r.job = std::move(job);
  return r;
}

}  // namespace

std::string namespaced_tool_name(const std::string& ns, const std::string& name) {
  size_t ns_end = ns.size();
  while (ns_end > 0 && ns[ns_end - 1] == '_') --ns_end;
  size_t name_begin = 0;
  while (name_begin < name.size() && name[name_begin] == '_') ++name_begin;
  return ns.substr(0, ns_end) + "__" + name.substr(name_begin);
}

nlohmann::json tools_for_parser(const chat::Conversation& conversation) {
  nlohmann::json tools = nlohmann::json::array();
  for (const auto& t : conversation.tools) {
    tools.push_back({{"type", "function"},
                     {"function", {{"name", t.name}, {"parameters", nlohmann::json::parse(t.parameters.dump())}}}});
  }
  return tools;
}

// ---------------------------------------------------------------- OpenAI chat completions

ParsedRequest parse_openai_chat(const Json& body) {
  if (!body.is_object()) return failed("", "the request body must be a JSON object");
  std::optional<ApiError> err;
  Fields f(body, "", err);
  ChatJob job;
  if (auto m = f.str("model")) job.model = *m;
  const Json* messages = f.array("messages");
  if (!err && !messages) return failed("messages", "is missing; send \"messages\": [{\"role\":\"user\",\"content\":\"...\"}]");
  if (auto s = f.boolean("stream")) job.stream = *s;
  if (const Json* so = f.object("stream_options")) {
    Fields sf(*so, "stream_options", err);
    if (auto iu = sf.boolean("include_usage")) job.include_usage = *iu;
  }
  if (auto n = f.integer("max_tokens", 1, 1 << 30)) job.max_tokens = static_cast<uint32_t>(*n);
  if (auto n = f.integer("max_completion_tokens", 1, 1 << 30)) job.max_tokens = static_cast<uint32_t>(*n);
  read_sampling(f, job);
  read_stop(f, "stop", job);
  f.boolean("parallel_tool_calls");
  Json conv = Json::object();
  if (messages) conv["messages"] = *messages;
  if (const Json* tools = f.array("tools")) conv["tools"] = *tools;
  if (auto effort = f.str("reasoning_effort")) {
    if (*effort == "none" || *effort == "minimal") {
      conv["enable_thinking"] = false;
    } else if (*effort == "low" || *effort == "medium" || *effort == "high") {
      conv["enable_thinking"] = true;
    } else {
      f.fail("reasoning_effort", fmt::format("unknown value \"{}\"; use none, minimal, low, medium or high", *effort));
    }
  }
  if (const Json* kw = f.object("chat_template_kwargs")) {
    Fields kf(*kw, "chat_template_kwargs", err);
    if (auto et = kf.boolean("enable_thinking")) conv["enable_thinking"] = *et;
  }
  if (const Json* tc = f.get("tool_choice")) {
    std::string choice;
    if (tc->is_string()) {
      choice = tc->get<std::string>();
      if (choice != "auto" && choice != "none" && choice != "required") {
        f.fail("tool_choice", fmt::format("unknown value \"{}\"; use auto, none, required or {{\"type\":\"function\",\"function\":{{\"name\":...}}}}", choice));
      }
    } else if (tc->is_object() && tc->contains("function") && (*tc)["function"].is_object() &&
               (*tc)["function"].contains("name") && (*tc)["function"]["name"].is_string()) {
      choice = (*tc)["function"]["name"].get<std::string>();
    } else {
      f.fail("tool_choice", "must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}");
    }
    if (!err && !choice.empty()) {
      if (auto e = apply_tool_choice(conv, choice, job)) err = e;
    }
  }
  return finish_job(std::move(conv), std::move(job), f, err);
}

// ---------------------------------------------------------------- Anthropic messages

namespace {

// Text of a string or a list of {type:"text", text} blocks (tool_result content, system).
std::optional<std::string> block_text(const Json& v, const std::string& path, Fields& f) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) return f.fail(path, fmt::format("must be a string or an array of text blocks, got {}", type_name(v))), std::nullopt;
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& b = v[i];
    const std::string bp = fmt::format("{}[{}]", path, i);
    if (!b.is_object() || !b.contains("type") || !b["type"].is_string()) {
      return f.fail(bp, "must be a block {\"type\":\"text\",\"text\":...}"), std::nullopt;
    }
    if (b["type"] != "text") {
      return f.fail(bp + ".type", fmt::format("block type \"{}\" is not supported here; send text blocks",
                                              b["type"].get<std::string>())), std::nullopt;
    }
    if (!b.contains("text") || !b["text"].is_string()) return f.fail(bp + ".text", "must be a string"), std::nullopt;
    if (!out.empty()) out += "\n";
    out += b["text"].get<std::string>();
  }
  return out;
}

bool is_billing_header_block(const Json& b) {
  static const std::string kPrefix = "x-anthropic-billing-header:";
  if (!b.is_object()) return false;
  auto t = b.find("text");
  return b.value("type", std::string()) == "text" && t != b.end() && t->is_string() &&
         t->get_ref<const std::string&>().rfind(kPrefix, 0) == 0;
}

ParsedRequest parse_anthropic(const Json& body, bool count_only) {
  if (!body.is_object()) return failed("", "the request body must be a JSON object");
  std::optional<ApiError> err;
  Fields f(body, "", err);
  ChatJob job;
  if (auto m = f.str("model")) job.model = *m;
  auto max_tokens = f.integer("max_tokens", 1, 1 << 30);
  if (!count_only && !err && !max_tokens) return failed("max_tokens", "is missing; send the most tokens to generate, e.g. \"max_tokens\": 1024");
  if (max_tokens) job.max_tokens = static_cast<uint32_t>(*max_tokens);
  if (auto s = f.boolean("stream")) job.stream = *s;
  read_sampling(f, job);
  if (const Json* ss = f.array("stop_sequences")) {
    for (size_t i = 0; i < ss->size(); ++i) {
      if (!(*ss)[i].is_string()) f.fail(fmt::format("stop_sequences[{}]", i), "must be a string");
      else job.stop.push_back((*ss)[i].get<std::string>());
    }
  }
  Json msgs = Json::array();
  if (const Json* sys = f.get("system")) {
    // Claude Code's first system block is `x-anthropic-billing-header: cc_version=….<hex>; …`: request
    // metadata whose hex changes with every prompt. Rendered, it would put a different first line in
    // front of an identical system prompt and tools, and no session would share their cached KV.
    Json kept = *sys;
    if (kept.is_array()) {
      kept = Json::array();
      for (const auto& b : *sys) {
        if (is_billing_header_block(b)) continue;
        kept.push_back(b);
      }
    }
    if (auto text = block_text(kept, "system", f); text && !(kept.is_array() && kept.empty())) {
      msgs.push_back({{"role", "system"}, {"content", *text}});
    }
  }
  const Json* messages = f.array("messages");
  if (!err && !messages) return failed("messages", "is missing; send \"messages\": [{\"role\":\"user\",\"content\":\"...\"}]");
  for (size_t i = 0; messages && i < messages->size() && !err; ++i) {
    const Json& m = (*messages)[i];
    const std::string mp = fmt::format("messages[{}]", i);
    if (!m.is_object()) {
      f.fail(mp, "must be an object {\"role\":...,\"content\":...}");
      break;
    }
    Fields mf(m, mp, err);
    auto role = mf.str("role");
    if (!role) {
      if (!err) mf.fail(mp + ".role", "is missing; use user or assistant");
      break;
    }
    if (*role != "user" && *role != "assistant" && *role != "system") {
      mf.fail(mp + ".role", fmt::format("unknown role \"{}\"; use user or assistant", *role));
      break;
    }
    const Json* content = mf.get("content");
    if (!content) {
      mf.fail(mp + ".content", "is missing; send a string or an array of content blocks");
      break;
    }
    if (content->is_string()) {
      msgs.push_back({{"role", *role}, {"content", *content}});
      continue;
    }
    if (!content->is_array()) {
      mf.fail(mp + ".content", fmt::format("must be a string or an array of content blocks, got {}", type_name(*content)));
      break;
    }
    std::string text, thinking;
    Json tool_calls = Json::array();
    Json tool_results = Json::array();
    for (size_t j = 0; j < content->size() && !err; ++j) {
      const Json& b = (*content)[j];
      const std::string bp = fmt::format("{}.content[{}]", mp, j);
      if (!b.is_object() || !b.contains("type") || !b["type"].is_string()) {
        mf.fail(bp, "must be a content block with a \"type\"");
        break;
      }
      Fields bf(b, bp, err);
      const std::string type = b["type"].get<std::string>();
      if (type == "text") {
        if (auto t = bf.str("text")) text += *t;
        else if (!err) bf.fail(bp + ".text", "is missing; send a string");
      } else if (type == "thinking") {
        if (auto t = bf.str("thinking")) thinking += *t;
      } else if (type == "redacted_thinking") {
        // Opaque to trove: nothing to render.
      } else if (type == "tool_use") {
        auto id = bf.str("id");
        auto name = bf.str("name");
        const Json* input = bf.object("input");
        if (!err && (!id || !name)) bf.fail(bp + (id ? ".name" : ".id"), "is missing; send a string");
        if (err) break;
        tool_calls.push_back({{"id", *id}, {"type", "function"},
                              {"function", {{"name", *name}, {"arguments", input ? *input : Json::object()}}}});
      } else if (type == "tool_result") {
        auto id = bf.str("tool_use_id");
        if (!err && !id) bf.fail(bp + ".tool_use_id", "is missing; send the id of the tool_use it answers");
        std::string out;
        if (const Json* c = bf.get("content")) {
          if (auto t = block_text(*c, bp + ".content", bf)) out = *t;
        }
        if (err) break;
        tool_results.push_back({{"role", "tool"}, {"tool_call_id", *id}, {"content", out}});
      } else {
        bf.fail(bp + ".type", fmt::format("block type \"{}\" is not supported by a text model; use text, "
                                          "thinking, tool_use or tool_result", type));
      }
    }
    if (err) break;
    for (auto& tr : tool_results) msgs.push_back(std::move(tr));
    if (*role == "assistant") {
      Json a = {{"role", "assistant"}, {"content", text}};
      if (!thinking.empty()) a["reasoning_content"] = thinking;
      if (!tool_calls.empty()) a["tool_calls"] = tool_calls;
      msgs.push_back(std::move(a));
    } else if (!text.empty() || tool_results.empty()) {
      msgs.push_back({{"role", *role}, {"content", text}});
    }
  }
  Json conv = {{"messages", msgs}};
  if (const Json* tools = f.array("tools")) {
    Json out = Json::array();
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string tp = fmt::format("tools[{}]", i);
      if (!t.is_object()) {
        f.fail(tp, "must be an object {name, description, input_schema}");
        break;
      }
      // Server tools (web_search_…, bash_…) have a versioned "type"; they are not offered to the model.
      if (t.contains("type") && t["type"].is_string() && t["type"] != "custom") continue;
      // Deferred tools are placeholders the client loads on demand (tool search): not for the model.
      if (t.contains("defer_loading") && t["defer_loading"] == true) continue;
      Fields tf(t, tp, err);
      auto name = tf.str("name");
      if (!err && !name) tf.fail(tp + ".name", "is missing; send a string");
      Json fn = {{"name", name.value_or("")}};
      if (auto d = tf.str("description")) fn["description"] = *d;
      if (const Json* schema = tf.object("input_schema")) fn["parameters"] = *schema;
      else if (!err) tf.fail(tp + ".input_schema", "is missing; send the tool's JSON Schema");
      out.push_back({{"type", "function"}, {"function", fn}});
    }
    if (!out.empty()) conv["tools"] = out;
  }
  if (const Json* th = f.object("thinking")) {
    Fields tf(*th, "thinking", err);
    auto type = tf.str("type");
    if (type == "disabled") conv["enable_thinking"] = false;
    else if (type == "enabled" || type == "adaptive") conv["enable_thinking"] = true;
    else if (!err) tf.fail("thinking.type", "must be \"enabled\", \"disabled\" or \"adaptive\"");
  }
  if (const Json* tc = f.object("tool_choice")) {
    Fields tf(*tc, "tool_choice", err);
    auto type = tf.str("type");
    std::string choice;
    if (type == "auto" || type == "any" || type == "none") choice = *type;
    else if (type == "tool") choice = tf.str("name").value_or("");
    if (!err && choice.empty()) tf.fail("tool_choice.type", "must be auto, any, none, or tool with a name");
    if (!err) {
      if (auto e = apply_tool_choice(conv, choice, job)) err = e;
    }
  }
  return finish_job(std::move(conv), std::move(job), f, err);
}

}  // namespace

ParsedRequest parse_anthropic_messages(const Json& body) { return parse_anthropic(body, false); }
ParsedRequest parse_anthropic_count_tokens(const Json& body) { return parse_anthropic(body, true); }

// ---------------------------------------------------------------- OpenAI Responses

ParsedRequest parse_responses(const Json& body) {
  if (!body.is_object()) return failed("", "the request body must be a JSON object");
  std::optional<ApiError> err;
  Fields f(body, "", err);
  ChatJob job;
  if (auto m = f.str("model")) job.model = *m;
  if (auto s = f.boolean("stream")) job.stream = *s;
  if (auto n = f.integer("max_output_tokens", 1, 1 << 30)) job.max_tokens = static_cast<uint32_t>(*n);
  read_sampling(f, job);
  f.boolean("parallel_tool_calls");
  Json msgs = Json::array();
  if (auto ins = f.str("instructions")) msgs.push_back({{"role", "system"}, {"content", *ins}});
  const Json* input = f.get("input");
  if (!err && !input) return failed("input", "is missing; send a string or an array of input items");
  std::string pending_reasoning;
  auto last_assistant = [&]() -> Json* {
    if (!msgs.empty() && msgs.back()["role"] == "assistant") return &msgs.back();
    msgs.push_back({{"role", "assistant"}, {"content", ""}});
    if (!pending_reasoning.empty()) {
      msgs.back()["reasoning_content"] = pending_reasoning;
      pending_reasoning.clear();
    }
    return &msgs.back();
  };
  if (input && input->is_string()) {
    msgs.push_back({{"role", "user"}, {"content", *input}});
  } else if (input && !input->is_array()) {
    f.fail("input", fmt::format("must be a string or an array of input items, got {}", type_name(*input)));
  } else if (input) {
    for (size_t i = 0; i < input->size() && !err; ++i) {
      const Json& it = (*input)[i];
      const std::string ip = fmt::format("input[{}]", i);
      if (!it.is_object()) {
        f.fail(ip, "must be an input item object");
        break;
      }
      Fields itf(it, ip, err);
      std::string type = itf.str("type").value_or("message");
      if (type == "message") {
        auto role = itf.str("role");
        if (!err && !role) itf.fail(ip + ".role", "is missing; use user, assistant, system or developer");
        if (err) break;
        const Json* content = itf.get("content");
        std::string text;
        if (content && content->is_string()) {
          text = content->get<std::string>();
        } else if (content && content->is_array()) {
          for (size_t j = 0; j < content->size(); ++j) {
            const Json& part = (*content)[j];
            const std::string pp = fmt::format("{}.content[{}]", ip, j);
            if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
              itf.fail(pp, "must be a content part with a \"type\"");
              break;
            }
            const std::string pt = part["type"].get<std::string>();
            if (pt != "input_text" && pt != "output_text" && pt != "text") {
              itf.fail(pp + ".type", fmt::format("content type \"{}\" is not supported by a text model; use input_text", pt));
              break;
            }
            if (!part.contains("text") || !part["text"].is_string()) {
              itf.fail(pp + ".text", "must be a string");
              break;
            }
            text += part["text"].get<std::string>();
          }
        } else if (content) {
          itf.fail(ip + ".content", fmt::format("must be a string or an array of content parts, got {}", type_name(*content)));
        }
        if (err) break;
        if (*role == "assistant") {
          Json* a = last_assistant();
          (*a)["content"] = (*a)["content"].get<std::string>() + text;
        } else {
          msgs.push_back({{"role", *role}, {"content", text}});
        }
      } else if (type == "function_call") {
        auto call_id = itf.str("call_id");
        auto name = itf.str("name");
        auto args = itf.str("arguments");
        auto ns = itf.str("namespace");
        if (!err && !call_id) itf.fail(ip + ".call_id", "is missing; send a string");
        if (!err && !name) itf.fail(ip + ".name", "is missing; send a string");
        if (err) break;
        // A call of a namespace tool's function is rendered under the flat name the model wrote.
        if (ns && !ns->empty()) name = namespaced_tool_name(*ns, *name);
        Json* a = last_assistant();
        if (!a->contains("tool_calls")) (*a)["tool_calls"] = Json::array();
        (*a)["tool_calls"].push_back({{"id", *call_id}, {"type", "function"},
                                      {"function", {{"name", *name}, {"arguments", args.value_or("{}")}}}});
      } else if (type == "function_call_output") {
        auto call_id = itf.str("call_id");
        if (!err && !call_id) itf.fail(ip + ".call_id", "is missing; send the call_id of the function_call");
        std::string out;
        if (const Json* o = itf.get("output")) {
          if (o->is_string()) {
            out = o->get<std::string>();
          } else if (o->is_array()) {
            for (const auto& p : *o) {
              if (p.is_object() && p.contains("text") && p["text"].is_string()) out += p["text"].get<std::string>();
            }
          } else {
            itf.fail(ip + ".output", "must be a string");
          }
        }
        if (err) break;
        msgs.push_back({{"role", "tool"}, {"tool_call_id", *call_id}, {"content", out}});
      } else if (type == "reasoning") {
        std::string r;
        for (const char* key : {"content", "summary"}) {
          if (const Json* parts = itf.get(key); parts && parts->is_array()) {
            for (const auto& p : *parts) {
              if (p.is_object() && p.contains("text") && p["text"].is_string()) r += p["text"].get<std::string>();
            }
            if (!r.empty()) break;
          }
        }
        pending_reasoning += r;
      } else {
        // Other item types (web_search_call, …) carry nothing a text model can render.
      }
    }
  }
  Json conv = {{"messages", msgs}};
  if (const Json* tools = f.array("tools")) {
    Json out = Json::array();
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string tp = fmt::format("tools[{}]", i);
      if (!t.is_object()) {
        f.fail(tp, "must be a tool object");
        break;
      }
      Fields tf(t, tp, err);
      // A namespace (Codex: multi_agent_v1, …) groups function tools: each is offered under its flat
      // name NAMESPACE__NAME, and the reply's function_call names it back (namespaced_tools).
      if (t.contains("type") && t["type"] == "namespace") {
        auto ns = tf.str("name");
        if (!err && !ns) tf.fail(tp + ".name", "is missing; send the namespace's name");
        const Json* inner = tf.array("tools");
        for (size_t k = 0; inner && !err && k < inner->size(); ++k) {
          const Json& it = (*inner)[k];
          const std::string ipath = fmt::format("{}.tools[{}]", tp, k);
          if (!it.is_object()) {
            tf.fail(ipath, "must be a tool object");
            break;
          }
          if (!it.contains("type") || it["type"] != "function") continue;
          Fields itf(it, ipath, err);
          auto name = itf.str("name");
          if (!err && !name) itf.fail(ipath + ".name", "is missing; send a string");
          if (err) break;
          const std::string flat = namespaced_tool_name(*ns, *name);
          Json fn = {{"name", flat}};
          if (auto d = itf.str("description")) fn["description"] = *d;
          fn["parameters"] = itf.object("parameters") ? *itf.object("parameters") : Json::object();
          out.push_back({{"type", "function"}, {"function", fn}});
          job.namespaced_tools[flat] = {*ns, *name};
        }
        continue;
      }
      // Only function tools are offered to the model; web_search and other built-ins are skipped.
      if (!t.contains("type") || t["type"] != "function") continue;
      auto name = tf.str("name");
      if (!err && !name) tf.fail(tp + ".name", "is missing; send a string");
      Json fn = {{"name", name.value_or("")}};
      if (auto d = tf.str("description")) fn["description"] = *d;
      fn["parameters"] = tf.object("parameters") ? *tf.object("parameters") : Json::object();
      out.push_back({{"type", "function"}, {"function", fn}});
    }
    if (!out.empty()) conv["tools"] = out;
  }
  if (const Json* r = f.object("reasoning")) {
    Fields rf(*r, "reasoning", err);
    if (auto effort = rf.str("effort")) conv["enable_thinking"] = !(*effort == "none" || *effort == "minimal");
  }
  if (const Json* tc = f.get("tool_choice")) {
    std::string choice;
    if (tc->is_string()) choice = tc->get<std::string>();
    else if (tc->is_object() && tc->contains("name") && (*tc)["name"].is_string()) choice = (*tc)["name"].get<std::string>();
    else f.fail("tool_choice", "must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"name\":...}");
    if (!err && !choice.empty()) {
      if (auto e = apply_tool_choice(conv, choice, job)) err = e;
    }
  }
  return finish_job(std::move(conv), std::move(job), f, err);
}

}  // namespace trove::server
