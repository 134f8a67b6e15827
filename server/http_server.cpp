#include "server/http_server.h"

#include <httplib.h>

#include <chrono>
#include <ctime>
#include <optional>

#include <fmt/format.h>

#include "common/log.h"
#include "engine/chat/output_parser.h"
#include "server/auth.h"
#include "server/dialects.h"
#include "server/metrics.h"
#include "server/peer.h"
#include "server/request.h"
#include "server/request_body.h"
#include "server/scheduler.h"
#include "server/sse.h"
#include "server/ui.h"

namespace trove::server {

using chat::Json;

namespace {

enum class Dialect { kOpenAiChat, kAnthropic, kAnthropicCount, kResponses };

bool anthropic_path(const std::string& path) { return path.rfind("/v1/messages", 0) == 0; }

// The metrics label for a request path: the known routes, everything else as "other" (a label per
// arbitrary path would let any client grow /metrics without bound).
std::string endpoint_label(const std::string& path) {
  static const char* const kRoutes[] = {"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens",
                                        "/v1/responses", "/v1/models", "/health", "/metrics", "/ui",
                                        "/v1/trove/status", "/v1/trove/tree", "/v1/trove/events"};
  for (const char* r : kRoutes) {
    if (path == r) return path;
  }
  return "other";
}

void send_error(httplib::Response& res, bool anthropic, const ApiError& e) {
  res.status = e.status;
  res.set_content(json_text(anthropic ? anthropic_error_body(e) : openai_error_body(e)), "application/json");
}

}  // namespace

// The error a request gets when its generation ended without a reply (engine failure or shutdown).
static ApiError generation_error(const GenerationResult& r) {
  ApiError e;
  e.status = 500;
  e.type = "api_error";
  e.message = r.finish == FinishReason::kCancelled ? std::string("the request was cancelled: the server is stopping")
                                                   : "generation failed: " + r.error;
  return e;
}

struct HttpServer::Impl {
  engine::Engine& engine;
  ServerOptions opt;
  Metrics metrics;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<Dashboard> dashboard;  // reads the scheduler: declared after it, destroyed before it
  httplib::Server http;

  Impl(engine::Engine& e, ServerOptions o) : engine(e), opt(std::move(o)) {
    SchedulerObserver obs;
    obs.time_to_first_token = [this](double s) {
      metrics.observe_ttft(s);
      if (dashboard) dashboard->observe_ttft(s);
    };
    obs.inter_token = [this](double s) { metrics.observe_inter_token(s); };
    SchedulerOptions so;
    so.speculative = opt.speculative;
    so.draft = opt.draft;
    scheduler = std::make_unique<Scheduler>(engine, obs, so);
    dashboard = std::make_unique<Dashboard>(engine, *scheduler, opt);
    const int threads = opt.http_threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http.set_payload_max_length(opt.max_body_bytes);
    http.set_keep_alive_max_count(1000);
    http.set_read_timeout(opt.read_timeout_s, 0);
    http.set_write_timeout(600, 0);
    routes();
  }

  void routes() {
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (opt.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      if (api_key_matches(opt.api_key, req.get_header_value("Authorization"), req.get_header_value("x-api-key"))) {
        return httplib::Server::HandlerResponse::Unhandled;
      }
      // The dashboard's session cookie and login form (a browser cannot send the key as a header).
      if (dashboard->admits(req)) return httplib::Server::HandlerResponse::Unhandled;
      if (dashboard->refuse(req, res)) {
        metrics.count_request(endpoint_label(req.path), 401);
        return httplib::Server::HandlerResponse::Handled;
      }
      ApiError e;
      e.status = 401;
      e.type = "authentication_error";
      e.message = "missing or wrong API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY` "
                  "(the key the server was started with, --api-key or TROVE_API_KEY)";
      send_error(res, anthropic_path(req.path), e);
      metrics.count_request(endpoint_label(req.path), 401);
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                       httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiError e;
      e.status = res.status;
      if (res.status == 413) {
        e.type = "request_too_large";
        e.message = fmt::format("the request body is larger than the server's limit of {} bytes; send a smaller "
                                "request or restart trove serve with a larger --max-body",
                                opt.max_body_bytes);
      } else if (res.status == 404) {
        e.type = "not_found_error";
        e.message = fmt::format("no route {} {}; see docs/api.md for the endpoints", req.method, req.path);
      } else if (res.status == 400) {
        // httplib refused the request before any route ran.
        e.message = "the request is not valid HTTP/1.1 (a malformed request line or header, an unsupported method, "
                    "a missing or invalid Content-Length, a broken chunked body, a body shorter than its "
                    "Content-Length, or a client that stalled longer than the read timeout while sending); send a "
                    "well-formed request";
      } else if (res.status == 414) {
        e.message = "the request URI is longer than 8192 bytes; the API's paths are short (docs/api.md)";
      } else {
        e.message = fmt::format("the server could not handle the request (HTTP {}); see docs/api.md", res.status);
      }
      send_error(res, anthropic_path(req.path), e);
      metrics.count_request(endpoint_label(req.path), res.status);
      return httplib::Server::HandlerResponse::Handled;
    }));
    // A request handler that throws is a bug in trove, not the client's fault: the client still gets its
    // dialect's error shape (500, api_error) with what went wrong, and the server goes on.
    http.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      log::error("serve", "{} {}: the handler failed: {}", req.method, endpoint_label(req.path), what);
      ApiError e;
      e.status = 500;
      e.type = "api_error";
      e.message = "internal error while handling the request (" + what +
                  "); this is a bug in trove: please report it with the request that caused it";
      send_error(res, anthropic_path(req.path), e);
      metrics.count_request(endpoint_label(req.path), 500);
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) {
      generate(Dialect::kOpenAiChat, q, r);
    });
    http.Post("/v1/messages", [this](const httplib::Request& q, httplib::Response& r) {
      generate(Dialect::kAnthropic, q, r);
    });
    http.Post("/v1/messages/count_tokens", [this](const httplib::Request& q, httplib::Response& r) {
      generate(Dialect::kAnthropicCount, q, r);
    });
    http.Post("/v1/responses", [this](const httplib::Request& q, httplib::Response& r) {
      generate(Dialect::kResponses, q, r);
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      Json m = model_json(opt.model_id);
      res.set_content(json_text(Json({{"object", "list"}, {"data", Json::array({m})}, {"has_more", false},
                                      {"first_id", opt.model_id}, {"last_id", opt.model_id}})),
                      "application/json");
      metrics.count_request("/v1/models", 200);
    });
    // Any id: clients that look their configured model up (whatever they call it) find the one model.
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      res.set_content(json_text(model_json(req.matches[1].str())), "application/json");
      metrics.count_request("/v1/models", 200);
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(json_text(Json({{"status", "ok"}, {"model", opt.model_id}, {"synthetic", engine.config().synthetic}})),
                      "application/json");
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      std::optional<kv::Stats> st;
      if (opt.store) st = opt.store->stats();
      res.set_content(metrics.render(scheduler->stats(), st ? &*st : nullptr), "text/plain; version=0.0.4");
    });
    dashboard->install(http);
  }

  // The model as /v1/models describes it, under `id`: OpenAI's fields, Anthropic's (type,
  // display_name, created_at) and the context window under the names clients and proxies read
  // (context_length: OpenRouter; max_model_len: vLLM; context_window; max_input_tokens: Anthropic).
  Json model_json(const std::string& id) const {
    auto renderer = engine.renderer();
    const bool reasoning = renderer.ok() && (*renderer)->name() == "qwen3";
    const uint32_t ctx = engine.n_ctx();
    return {{"id", id},
            {"object", "model"},
            {"type", "model"},
            {"created", 0},
            {"created_at", "1970-01-01T00:00:00Z"},
            {"owned_by", "trove"},
            {"display_name", opt.model_id},
            {"context_length", ctx},
            {"context_window", ctx},
            {"max_model_len", ctx},
            {"max_input_tokens", ctx - 1},
            {"max_output_tokens", std::min(ctx, opt.default_max_tokens)},
            {"reasoning", reasoning},
            {"tool_call_streaming", true},
            {"synthetic", engine.config().synthetic}};
  }

  void generate(Dialect d, const httplib::Request& req, httplib::Response& res) {
    const bool anthropic = d == Dialect::kAnthropic || d == Dialect::kAnthropicCount;
    const std::string endpoint = endpoint_label(req.path);
    auto fail = [&](const ApiError& e) {
      send_error(res, anthropic, e);
      metrics.count_request(endpoint, e.status);
      log::warn("serve", "{} {}: request rejected: {}", endpoint, e.status, e.message);
    };
    ParsedBody parsed_body = parse_request_body(req.body);
    if (!parsed_body.ok()) return fail(parsed_body.error);
    if (parsed_body.repairs.invalid_utf8 || parsed_body.repairs.lone_surrogates) {
      log::info("serve", "{}: {} invalid UTF-8 sequences and {} lone surrogate escapes in the body became U+FFFD",
                endpoint, parsed_body.repairs.invalid_utf8, parsed_body.repairs.lone_surrogates);
    }
    const Json& body = *parsed_body.json;
    ParsedRequest p = d == Dialect::kOpenAiChat ? parse_openai_chat(body)
                      : d == Dialect::kAnthropic ? parse_anthropic_messages(body)
                      : d == Dialect::kAnthropicCount ? parse_anthropic_count_tokens(body)
                                                      : parse_responses(body);
    if (!p.ok()) return fail(p.error);
    ChatJob& job = *p.job;
    if (job.force_output && !opt.test_force_output) {
      ApiError e;
      e.param = "trove_force_output";
      e.message = "trove_force_output: is a test hook; start trove serve with --test-force-output to use it";
      return fail(e);
    }
    if (!job.force_output && !opt.force_script.empty()) job.force_output = pick_forced_output(opt.force_script, job.conversation);
    // Speculative decoding (docs/api.md): `x-trove-speculative: off|lookup|draft|auto`.
    std::optional<engine::SpecMethod> speculative;
    if (req.has_header("x-trove-speculative")) {
      const std::string v = req.get_header_value("x-trove-speculative");
      speculative = engine::parse_spec_method(v);
      if (!speculative) {
        ApiError e;
        e.param = "x-trove-speculative";
        e.message = fmt::format("x-trove-speculative: '{}' is not one of off, lookup, draft, auto", v.substr(0, 40));
        return fail(e);
      }
    }
    auto renderer = engine.renderer();
    if (!renderer.ok()) {
      ApiError e;
      e.status = 500;
      e.type = "api_error";
      e.message = renderer.status().message();
      return fail(e);
    }
    auto rendered = (*renderer)->render(job.conversation);
    if (!rendered.ok()) {
      ApiError e;
      e.message = rendered.status().message();
      return fail(e);
    }
    const bool coder = (*renderer)->name() == "qwen3-coder";
    // The reply starts inside reasoning only when the generation prompt itself opened <think>.
    const bool starts_in_reasoning = rendered->size() >= 8 && rendered->compare(rendered->size() - 8, 8, "<think>\n") == 0;
    // tool_choice required / named: the prompt ends with the opening of a tool call (closing an opened
    // think block first), so the model can only continue it; the output parser is fed the same text.
    std::string reply_prefix;
    if (job.require_tool_call && !job.conversation.tools.empty()) {
      if (starts_in_reasoning) reply_prefix += "\n</think>\n\n";
      reply_prefix += "<tool_call>\n";
      if (!job.required_tool.empty()) {
        reply_prefix += coder ? "<function=" + job.required_tool + ">\n"
                              : "{\"name\": " + Json(job.required_tool).dump() + ", \"arguments\": ";
      }
    }
    std::vector<int32_t> prompt = engine.tokenizer().encode(*rendered + reply_prefix, /*parse_special=*/true);
    if (d == Dialect::kAnthropicCount) {
      res.set_content(json_text(Json({{"input_tokens", prompt.size()}})), "application/json");
      metrics.count_request(endpoint, 200);
      return;
    }
    // A prompt that does not fit: in the words each client acts on (Claude Code compacts on Anthropic's
    // "prompt is too long: N tokens > M maximum"; OpenAI clients look for code context_length_exceeded).
    auto overflow = [&](uint64_t limit, const std::string& what, const std::string& todo) {
      ApiError e;
      e.param = d == Dialect::kResponses ? "input" : "messages";
      e.code = "context_length_exceeded";
      e.message = anthropic ? fmt::format("prompt is too long: {} tokens > {} maximum ({}; {})", prompt.size(),
                                          limit, what, todo)
                            : fmt::format("This model's maximum context length is {} tokens, but the prompt has {} "
                                          "tokens ({}; {})",
                                          limit, prompt.size(), what, todo);
      fail(e);
    };
    if (prompt.size() >= engine.n_ctx()) {
      return overflow(engine.n_ctx() - 1, fmt::format("the context holds {} tokens and at least one must be left "
                                                      "to generate", engine.n_ctx()),
                      "shorten the conversation or restart trove serve with a larger --ctx");
    }
    if (const auto pool = scheduler->stats().pool; pool.block_tokens > 0) {
      const uint64_t pool_tokens = uint64_t{pool.total_blocks} * pool.block_tokens;
      if (prompt.size() + 1 > pool_tokens) {
        return overflow(pool_tokens - 1, fmt::format("the GPU KV pool holds {} tokens", pool_tokens),
                        "shorten the conversation or run trove serve on a device with more memory");
      }
    }
    if (opt.log_prompts) log::info("serve", "prompt ({} tokens):\n{}", prompt.size(), *rendered);

    GenerationRequest g;
    g.prompt = prompt;
    // Not capped at the room left: the scheduler stops at the context end itself and says so
    // (result.context_end), which the dialects report differently from a max_tokens stop.
    g.max_tokens = job.max_tokens.value_or(opt.default_max_tokens);
    g.sampling = job.sampling;
    g.stop = job.stop;
    // Prefix cache (docs/api.md): `x-trove-cache-namespace` separates tenants (requests share cached
    // prefixes only within one namespace; without the header every request of this server shares
    // one); `x-trove-cache: off` opts a request out.
    g.cache_namespace = req.has_header("x-trove-cache-namespace") ? req.get_header_value("x-trove-cache-namespace")
                                                                   : std::string("default");
    if (const std::string c = req.get_header_value("x-trove-cache"); c == "off" || c == "0" || c == "false") {
      g.use_cache = false;
    }
    g.speculative = speculative;
    if (job.force_output) {
      g.force_output = true;
      g.forced_tokens = engine.tokenizer().encode(*job.force_output, /*parse_special=*/true);
    }
    chat::OutputParserOptions po;
    po.format = coder ? chat::OutputFormat::kQwen3Coder : chat::OutputFormat::kQwen3;
    po.starts_in_reasoning = starts_in_reasoning;
    po.tools = tools_for_parser(job.conversation);

    ResponseContext ctx;
    ctx.id = random_id(d == Dialect::kOpenAiChat ? "chatcmpl-" : d == Dialect::kAnthropic ? "msg_" : "resp_");
    ctx.model = job.model.empty() ? opt.model_id : job.model;
    ctx.created = static_cast<int64_t>(std::time(nullptr));
    ctx.prompt_tokens = static_cast<uint32_t>(prompt.size());
    ctx.n_ctx = engine.n_ctx();
    ctx.namespaced_tools = job.namespaced_tools;
    g.label.id = ctx.id;
    g.label.dialect = d == Dialect::kOpenAiChat ? "chat.completions" : d == Dialect::kAnthropic ? "messages" : "responses";
    g.label.user_agent = req.get_header_value("User-Agent").substr(0, 200);
    std::shared_ptr<DialectWriter> writer = d == Dialect::kOpenAiChat ? make_openai_chat_writer(ctx, job.include_usage)
                                            : d == Dialect::kAnthropic ? make_anthropic_writer(ctx)
                                                                       : make_responses_writer(ctx);
    auto parser = std::make_shared<chat::OutputParser>(po);
    auto prefix_events = std::make_shared<std::vector<chat::OutputEvent>>(parser->feed(reply_prefix));
    auto stream = scheduler->try_submit(std::move(g), opt.max_queue);
    if (!stream) {
      ApiError e;
      e.status = 503;
      e.type = "server_error";
      e.message = fmt::format("the server is busy: {} requests are generating and {} are waiting, the most it "
                              "queues (--max-queue); retry after {} s",
                              engine.max_sequences(), opt.max_queue, opt.retry_after_s);
      res.set_header("Retry-After", std::to_string(opt.retry_after_s));
      send_error(res, anthropic, e);
      metrics.count_request(endpoint, 503);
      return;
    }

    auto record = [this, endpoint](const GenerationResult& r, int status) {
      metrics.count_request(endpoint, status);
      metrics.observe_queue_wait(r.queue_seconds);
      metrics.add_tokens(r.prompt_tokens, r.cached_tokens, r.generated_tokens);
      log::info("serve", "{} {}: {} prompt tokens ({} cached), {} generated, finish {}, ttft {:.2f} s, total {:.2f} s",
                endpoint, status, r.prompt_tokens, r.cached_tokens, r.generated_tokens, finish_reason_name(r.finish),
                r.ttft_seconds, r.total_seconds);
    };

    if (!job.stream) {
      // Nothing is written until the reply is complete, so a departed client is noticed on its socket.
      const int peer = find_peer_socket(req.remote_addr, req.remote_port);
      auto next_peer_check = std::chrono::steady_clock::now();
      std::string generated;
      while (true) {
        std::vector<GenerationEvent> evs;
        stream->wait(evs, std::chrono::milliseconds(250));
        // Every 250 ms, events or not (a decoding request has events every step).
        const auto now = std::chrono::steady_clock::now();
        const bool check = now >= next_peer_check;
        if (check) next_peer_check = now + std::chrono::milliseconds(250);
        if (check && peer_closed(peer)) {
          stream->cancel();  // frees its sequence within one step
          metrics.count_request(endpoint, 499);
          log::info("serve", "{}: the client left before the reply; request cancelled", endpoint);
          return;
        }
        for (auto& ev : evs) {
          if (ev.kind == GenerationEvent::Kind::kCached) continue;
          if (ev.kind == GenerationEvent::Kind::kText) {
            if (opt.log_prompts) generated += ev.text;
            parser->feed(ev.text);
            continue;
          }
          parser->finish();
          if (opt.log_prompts) log::info("serve", "output:\n{}", generated);
          if (ev.result.finish == FinishReason::kError || ev.result.finish == FinishReason::kCancelled) {
            send_error(res, anthropic, generation_error(ev.result));
            record(ev.result, 500);
            return;
          }
          res.set_content(json_text(writer->complete(ev.result, parser->message())), "application/json");
          record(ev.result, 200);
          return;
        }
      }
    }

    // A client that left mid-stream is counted under status 499 ("client closed request").
    auto record_gone = [this, endpoint] {
      metrics.count_request(endpoint, 499);
      log::info("serve", "{}: the client left mid-stream; request cancelled", endpoint);
    };
    res.set_header("Cache-Control", "no-cache");
    const int keepalive_ms = opt.keepalive_ms;
    const bool log_prompts = opt.log_prompts;
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream, writer, parser, prefix_events, keepalive_ms, log_prompts, record, record_gone](
            size_t, httplib::DataSink& sink) -> bool {
          // httplib calls this outside its handler's try block: an exception here would end the process.
          try {
            auto write = [&](const std::string& s) {
              if (s.empty()) return true;
              if (!sink.write(s.data(), s.size())) {
                stream->cancel();  // the client left: free its sequence
                record_gone();
                return false;
              }
              return true;
            };
            // The reply starts once the scheduler says how much of the prompt came from the cache
            // (kCached: Anthropic's message_start carries it); a request that ends before that (an
            // error at admission) starts with 0.
            bool started = false;
            auto start = [&](uint32_t cached) {
              if (started) return true;
              started = true;
              return write(writer->start(cached) + writer->on_events(*prefix_events));
            };
            std::string generated;
            while (true) {
              std::vector<GenerationEvent> evs;
              if (!stream->wait(evs, std::chrono::milliseconds(keepalive_ms))) {
                // Nothing for a while (queued, or a long prefill): a comment keeps idle timeouts away
                // and tells us whether the client is still there.
                if (!write(sse_comment("keepalive"))) return false;
                continue;
              }
              for (auto& ev : evs) {
                if (!start(ev.result.cached_tokens)) return false;
                if (ev.kind == GenerationEvent::Kind::kCached) continue;
                if (ev.kind == GenerationEvent::Kind::kText) {
                  if (log_prompts) generated += ev.text;
                  if (!write(writer->on_events(parser->feed(ev.text)))) return false;
                  continue;
                }
                if (log_prompts) log::info("serve", "output:\n{}", generated);
                std::string tail = writer->on_events(parser->finish());
                if (ev.result.finish == FinishReason::kError || ev.result.finish == FinishReason::kCancelled) {
                  tail += writer->error_event(generation_error(ev.result));
                  record(ev.result, 500);
                } else {
                  tail += writer->finish(ev.result, parser->message());
                  record(ev.result, 200);
                }
                write(tail);
                sink.done();
                return true;
              }
            }
          } catch (const std::exception& e) {
            log::error("serve", "streaming a reply failed: {}; the request is cancelled", e.what());
            stream->cancel();
            return false;
          }
        },
        [stream](bool success) {
          if (!success) stream->cancel();
        });
  }
};

HttpServer::HttpServer(engine::Engine& engine, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(options))) {}

HttpServer::~HttpServer() {
  stop();
  // The scheduler goes before the engine; httplib's threads are joined by its destructor first.
}

Result<int> HttpServer::bind() {
  int port = impl_->opt.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(impl_->opt.host);
  } else if (!impl_->http.bind_to_port(impl_->opt.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return Status::IoError(fmt::format("cannot listen on {}:{} (in use, or not an address of this machine); "
                                       "pick another --host/--port",
                                       impl_->opt.host, impl_->opt.port));
  }
  return port;
}

void HttpServer::run() { impl_->http.listen_after_bind(); }

void HttpServer::stop() {
  // Running requests would keep their connections (and run()) alive until they finish: end them.
  impl_->scheduler->cancel_all();
  impl_->dashboard->stop();  // ends the dashboards' event streams
  if (impl_->http.is_running()) impl_->http.stop();
}

}  // namespace trove::server
