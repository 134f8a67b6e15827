// `trove run`: load a model and generate on the terminal.
//   trove run -m MODEL -p "prompt"        chat template applied, reply streamed, reasoning dimmed
//   trove run -m MODEL -p "text" --raw    text tokenized as is, continuation printed
//   trove run -m MODEL                    interactive chat (one line per turn, history kept; only the
//                                         new part of each turn is prefilled)
// Ends with prefill and decode speeds on stderr.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "engine/chat/conversation.h"
#include "engine/chat/output_parser.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/generate.h"
#include "tools/command.h"
#include "tools/paths.h"

namespace {

using namespace trove;

struct RunArgs {
  std::string model;
  std::string prompt;
  bool raw = false;
  float temp = 0.7f;
  uint64_t seed = 0;
  uint32_t max_tokens = 512;
  bool no_think = false;
  uint32_t ctx = 0;
  bool json = false;
  std::string speculative;  // empty: engine::default_spec_method()
  std::string draft_model;
};

// The speculation the flags ask for, and the draft engine (--draft-model) the Speculator drives.
struct Speculation {
  engine::SpecMethod method = engine::SpecMethod::kOff;
  std::unique_ptr<engine::Engine> draft;
  std::unique_ptr<engine::Speculator> speculator;
};

Speculation load_speculation(const RunArgs& a, engine::Engine& e) {
  Speculation sp;
  const auto m = a.speculative.empty() ? (a.draft_model.empty() ? engine::default_spec_method(e) : engine::SpecMethod::kAuto) : engine::parse_spec_method(a.speculative);
  if (!m) cli::fail(fmt::format("--speculative {}: write off, lookup, draft or auto", a.speculative));
  sp.method = *m;
  if (!a.draft_model.empty()) {
    engine::EngineOptions d;
    d.model_path = a.draft_model;
    d.n_ctx = e.n_ctx();
    d.max_sequences = e.max_sequences();
    auto loaded = engine::Engine::load(d);
    if (!loaded.ok()) cli::fail(fmt::format("--draft-model {}: {}", a.draft_model, loaded.status().message()));
    if (Status st = engine::Speculator::check_draft_model(e, **loaded); !st.ok()) cli::fail(st.message());
    sp.draft = std::move(*loaded);
  } else if (sp.method == engine::SpecMethod::kDraft) {
    cli::fail("--speculative draft needs --draft-model PATH (a smaller model with the same tokenizer)");
  }
  sp.speculator = std::make_unique<engine::Speculator>(e, sp.draft.get());
  return sp;
}

void print_speed(const engine::GenerateResult& r) {
  const uint32_t prefilled = r.prompt_tokens - r.reused_tokens;
  std::fprintf(stderr, "\n[prefill %u tokens (%u reused) in %.2f s: %.1f tok/s | decode %u tokens in %.2f s: %.1f tok/s",
               prefilled, r.reused_tokens, r.prefill_seconds, r.prefill_seconds > 0 ? prefilled / r.prefill_seconds : 0.0,
               r.generated_tokens, r.decode_seconds,
               r.decode_seconds > 0 ? r.generated_tokens / r.decode_seconds : 0.0);
  const auto& l = r.spec.lookup;
  const auto& d = r.spec.draft;
  if (l.drafted + d.drafted > 0) {
    std::fprintf(stderr, ", %u steps | speculative: lookup %llu/%llu accepted, draft model %llu/%llu", r.decode_steps,
                 static_cast<unsigned long long>(l.accepted), static_cast<unsigned long long>(l.drafted),
                 static_cast<unsigned long long>(d.accepted), static_cast<unsigned long long>(d.drafted));
  }
  std::fputs("]\n", stderr);
}

// Streams one assistant turn, reasoning dimmed on a terminal; returns the parsed message.
Result<chat::ParsedMessage> chat_turn(engine::Engine& e, engine::SeqId seq, const std::string& rendered,
                                      const RunArgs& a, bool starts_in_reasoning, Speculation& spec) {
  const bool tty = isatty(1);
  chat::OutputParserOptions po;
  const auto* r = *e.renderer();
  po.format = r->name() == "qwen3-coder" ? chat::OutputFormat::kQwen3Coder : chat::OutputFormat::kQwen3;
  po.starts_in_reasoning = starts_in_reasoning;
  chat::OutputParser parser(po);
  bool in_reasoning = false;
  auto show = [&](const std::vector<chat::OutputEvent>& events) {
    for (const auto& ev : events) {
      using K = chat::OutputEvent::Kind;
      if (ev.kind == K::kReasoningDelta) {
        if (!in_reasoning && tty) std::fputs("\x1b[2m", stdout);
        in_reasoning = true;
        std::fputs(ev.text.c_str(), stdout);
      } else {
        if (in_reasoning) {
          std::fputs(tty ? "\x1b[0m\n" : "\n", stdout);
          in_reasoning = false;
        }
        if (ev.kind == K::kContentDelta) std::fputs(ev.text.c_str(), stdout);
        if (ev.kind == K::kToolCallBegin) std::printf("[tool call %s ", ev.name.c_str());
        if (ev.kind == K::kToolCallArgumentsDelta) std::fputs(ev.text.c_str(), stdout);
        if (ev.kind == K::kToolCallEnd) std::fputs("]\n", stdout);
        if (ev.kind == K::kToolCallError) std::printf("[malformed tool call: %s]\n", ev.text.c_str());
      }
    }
    std::fflush(stdout);
  };
  auto ids = e.tokenizer().encode(rendered, /*parse_special=*/true);
  engine::GenerateOptions go;
  go.max_tokens = a.max_tokens;
  go.sampling.temperature = a.temp;
  go.sampling.seed = a.seed;
  go.sampling.top_k = 20;
  go.sampling.top_p = 0.95f;
  go.speculative = spec.method;
  go.speculator = spec.speculator.get();
  auto res = engine::generate(e, seq, ids, go, [&](std::string_view text) {
    show(parser.feed(text));
    return true;
  });
  if (!res.ok()) return res.status();
  show(parser.finish());
  if (in_reasoning && tty) std::fputs("\x1b[0m", stdout);
  std::fputs("\n", stdout);
  print_speed(*res);
  return parser.message();
}

void run(const RunArgs& a) {
  std::string model = a.model.empty() ? cli::default_model_path() : a.model;
  if (model.empty()) cli::fail(cli::no_model_message());
  engine::EngineOptions eo;
  eo.model_path = model;
  eo.n_ctx = a.ctx;
  eo.max_sequences = 1;
  eo.progress = true;
  auto loaded = engine::Engine::load(eo);
  if (!loaded.ok()) cli::fail(loaded.status().message());
  engine::Engine& e = **loaded;
  if (e.config().synthetic) {
    std::fprintf(stderr, "*** SYNTHETIC MODEL: random weights — its output is noise ***\n");
  }
  auto seq = e.open_sequence();
  if (!seq.ok()) cli::fail(seq.status().message());
  Speculation spec = load_speculation(a, e);

  if (a.raw) {
    if (a.prompt.empty()) cli::fail("--raw needs a prompt (-p TEXT)");
    auto ids = e.tokenizer().encode(a.prompt, /*parse_special=*/true);
    engine::GenerateOptions go;
    go.max_tokens = a.max_tokens;
    go.sampling.temperature = a.temp;
    go.sampling.seed = a.seed;
    go.speculative = spec.method;
    go.speculator = spec.speculator.get();
    if (!a.json) std::fputs(a.prompt.c_str(), stdout);
    auto res = engine::generate(e, *seq, ids, go, [&](std::string_view text) {
      if (!a.json) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
    if (!res.ok()) cli::fail(res.status().message());
    if (a.json) {
      nlohmann::json j;
      j["prompt_tokens"] = ids;
      j["tokens"] = res->tokens;
      j["text"] = res->text;
      j["finish"] = res->finish == engine::FinishReason::kStop ? "stop" : "length";
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::fputs("\n", stdout);
    print_speed(*res);
    return;
  }

  auto renderer = e.renderer();
  if (!renderer.ok()) cli::fail(renderer.status().message() + " (use --raw to skip the chat template)");
  chat::Conversation conv;
  conv.options.enable_thinking = !a.no_think;
  conv.options.enable_thinking_given = a.no_think;
  auto turn = [&](const std::string& user) {
    chat::Message m;
    m.role = chat::Role::kUser;
    m.content = user;
    conv.messages.push_back(std::move(m));
    auto rendered = (*renderer)->render(conv);
    if (!rendered.ok()) cli::fail(rendered.status().message());
    // The Qwen3 generation prompt is "<|im_start|>assistant\n" (plus an empty think block when thinking
    // is off); the reply starts inside reasoning only if the prompt itself opened <think>.
    const bool opened_think = rendered->size() >= 8 && rendered->rfind("<think>\n") == rendered->size() - 8;
    auto msg = chat_turn(e, *seq, *rendered, a, opened_think, spec);
    if (!msg.ok()) cli::fail(msg.status().message());
    chat::Message reply;
    reply.role = chat::Role::kAssistant;
    reply.content = msg->content;
    if (!msg->reasoning.empty()) reply.reasoning_content = msg->reasoning;
    for (const auto& c : msg->tool_calls) reply.tool_calls.push_back({c.id, c.name, c.arguments_json, std::nullopt});
    conv.messages.push_back(std::move(reply));
  };
  if (!a.prompt.empty()) {
    turn(a.prompt);
    return;
  }
  std::fprintf(stderr, "trove chat with %s — one line per message, Ctrl-D to quit\n", e.config().name.c_str());
  std::string line;
  while (true) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    turn(line);
  }
  std::fputs("\n", stdout);
}

void add_run(CLI::App& sub) {
  auto a = std::make_shared<RunArgs>();
  sub.add_option("-m,--model", a->model, "GGUF model (default: the newest in the model directory)");
  sub.add_option("-p,--prompt", a->prompt, "Prompt (without it: interactive chat)");
  sub.add_flag("--raw", a->raw, "Tokenize the prompt as is (no chat template) and print the continuation");
  sub.add_option("--temp", a->temp, "Sampling temperature (0: greedy)")->capture_default_str();
  sub.add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  sub.add_option("-n,--max-tokens", a->max_tokens, "Most tokens to generate per reply")->capture_default_str();
  sub.add_flag("--no-think", a->no_think, "Turn Qwen3's thinking off (enable_thinking=false)");
  sub.add_option("--ctx", a->ctx, "Context length (default: the model's, at most 32768)");
  sub.add_flag("--json", a->json, "With --raw: print prompt and generated token ids as JSON");
  sub.add_option("--speculative", a->speculative,
                 "Speculative decoding: off, lookup (prompt lookup), draft (--draft-model), auto (lookup, and the "
                 "draft model where lookup finds nothing); default: auto on a GPU or with --draft-model, off on a CPU Vulkan device");
  sub.add_option("--draft-model", a->draft_model, "Draft model for speculative decoding (same tokenizer, smaller)");
  sub.callback([a] { run(*a); });
}

cli::CommandRegistration reg{"run", "Generate with a model on the terminal (chat or raw)", add_run};

}  // namespace
