// The real `trove serve` (tiny synthetic Qwen3 model, lavapipe) driven by the official `openai` and
// `@anthropic-ai/sdk` clients on loopback: every endpoint streaming and not, usage, errors, auth,
// Qwen3 JSON tool calls through the force-output test hook, 16 parallel streaming clients and a client
// that leaves mid-stream. One server for the file; the tests run concurrently (a decode step serves all
// active sequences), so the file takes about as long as its longest request.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { metrics, QWEN3_CALL, startServer, WEATHER_ARGS, WEATHER_SCHEMA } from "./harness.mjs";

const KEY = "test-key-123";
const CTX = 512;
let server, openai, anthropic;

before(async () => {
  server = await startServer({
    args: ["--api-key", KEY, "--parallel", "16", "--ctx", String(CTX), "--max-body", "200000",
           "--test-force-output", "--keepalive-ms", "1000"],
  });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: server.url, apiKey: KEY, maxRetries: 0 });
});
after(async () => { await server?.stop(); });

const user = (content) => [{ role: "user", content }];
const OPENAI_TOOLS = [{ type: "function", function: { name: "get_weather", description: "Weather", parameters: WEATHER_SCHEMA } }];
const FORCED = `<think>\nhm\n</think>\n\nOK${QWEN3_CALL}`;

describe("trove serve with the official SDKs (Qwen3)", { concurrency: true }, () => {
  it("GET /v1/models and /health describe the synthetic model", async () => {
    const list = await openai.models.list();
    assert.equal(list.data.length, 1);
    assert.equal(list.data[0].synthetic, true);
    assert.equal(list.data[0].context_length, CTX);
    const health = await (await fetch(`${server.url}/health`)).json();
    assert.equal(health.status, "ok");
  });

  it("chat completion, not streamed: finish_reason length and usage", async () => {
    const r = await openai.chat.completions.create({ model: "x", messages: user("hello"), max_tokens: 3, temperature: 0 });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.choices[0].finish_reason, "length");
    assert.equal(typeof r.choices[0].message.content, "string");
    assert.equal(r.usage.completion_tokens, 3);
    assert.ok(r.usage.prompt_tokens > 5);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 3);
    assert.equal(r.usage.prompt_tokens_details.cached_tokens, 0);
  });

  it("chat completion streamed as Pi sends it (developer role, text parts, include_usage)", async () => {
    const stream = await openai.chat.completions.create({
      model: "x", stream: true, stream_options: { include_usage: true }, max_completion_tokens: 3,
      reasoning_effort: "medium", store: false, tools: OPENAI_TOOLS,
      messages: [{ role: "developer", content: "You are terse." }, { role: "user", content: [{ type: "text", text: "hi" }] }],
    });
    let finish = null, usage = null, text = "";
    for await (const c of stream) {
      if (c.usage) usage = c.usage;
      for (const ch of c.choices) {
        text += ch.delta.content ?? "";
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    }
    assert.equal(finish, "length");
    assert.ok(usage, "the usage chunk is sent with include_usage");
    assert.equal(usage.completion_tokens, 3);
    assert.equal(usage.prompt_tokens_details.cached_tokens, 0);
  });

  it("OpenAI streamed tool call (Qwen3 JSON): reasoning, content, argument deltas before the end", async () => {
    const stream = await openai.chat.completions.create({
      model: "x", stream: true, messages: user("weather?"), tools: OPENAI_TOOLS, trove_force_output: FORCED,
    });
    let reasoning = "", content = "", args = "", id = null, name = null, argChunks = 0, finish = null, argsBeforeEnd = 0;
    for await (const c of stream) {
      const d = c.choices[0]?.delta ?? {};
      reasoning += d.reasoning_content ?? "";
      content += d.content ?? "";
      for (const tc of d.tool_calls ?? []) {
        if (tc.id) { assert.equal(id, null, "one call, one id"); id = tc.id; name = tc.function.name; }
        if (tc.function?.arguments) { args += tc.function.arguments; argChunks++; }
      }
      if (c.choices[0]?.finish_reason) { finish = c.choices[0].finish_reason; argsBeforeEnd = argChunks; }
    }
    assert.equal(reasoning, "hm");
    assert.equal(content, "OK");
    assert.equal(name, "get_weather");
    assert.match(id, /^call_/);
    assert.ok(argsBeforeEnd >= 3, `arguments streamed in ${argsBeforeEnd} deltas before the finish chunk`);
    assert.deepEqual(JSON.parse(args), WEATHER_ARGS);
    assert.equal(finish, "tool_calls");
  });

  it("OpenAI tool call, not streamed", async () => {
    const r = await openai.chat.completions.create({
      model: "x", messages: user("weather?"), tools: OPENAI_TOOLS, trove_force_output: QWEN3_CALL,
    });
    const m = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, "tool_calls");
    assert.equal(m.tool_calls.length, 1);
    assert.equal(m.tool_calls[0].function.name, "get_weather");
    assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), WEATHER_ARGS);
  });

  it("auth: a wrong or missing key gets 401; Bearer and x-api-key both work", async () => {
    const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e) => e.status === 401 && /API key/.test(e.message));
    assert.equal((await fetch(`${server.url}/v1/models`)).status, 401);
    assert.equal((await fetch(`${server.url}/v1/models`, { headers: { "x-api-key": KEY } })).status, 200);
    const badA = new Anthropic({ baseURL: server.url, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(badA.messages.create({ model: "x", max_tokens: 1, messages: user("x") }),
      (e) => e.status === 401 && e.error?.error?.type === "authentication_error");
  });

  it("errors: malformed JSON, wrong types with their JSON path, huge bodies, context overflow", async () => {
    const post = (path, body) => fetch(`${server.url}${path}`, {
      method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body,
    });
    let r = await post("/v1/chat/completions", '{"messages": [');
    assert.equal(r.status, 400);
    assert.match((await r.json()).error.message, /not valid JSON/);

    await assert.rejects(openai.chat.completions.create({ model: "x", messages: user("hi"), max_tokens: "ten" }),
      (e) => e.status === 400 && e.param === "max_tokens" && /integer/.test(e.message));
    await assert.rejects(openai.chat.completions.create({ model: "x", messages: [{ role: "user", content: 42 }] }),
      (e) => e.status === 400 && /messages\[0\]\.content/.test(e.message));
    await assert.rejects(anthropic.messages.create({ model: "x", max_tokens: 5, messages: [{ role: "user", content: [{ type: "text", text: 7 }] }] }),
      (e) => e.status === 400 && e.error?.error?.type === "invalid_request_error" && /messages\[0\]\.content\[0\]\.text/.test(e.message));

    r = await post("/v1/chat/completions", JSON.stringify({ messages: user("x".repeat(300000)) }));
    assert.equal(r.status, 413);
    assert.match((await r.json()).error.message, /200000 bytes/);

    const long = "lorem ipsum dolor sit amet ".repeat(200);
    await assert.rejects(openai.chat.completions.create({ model: "x", messages: user(long) }), (e) => {
      // OpenAI's own words and code, which clients act on.
      const m = e.message.match(/maximum context length is (\d+) tokens, but the prompt has (\d+) tokens/);
      return e.status === 400 && e.code === "context_length_exceeded" && m && Number(m[1]) === CTX - 1 &&
             Number(m[2]) > CTX && /context holds 512/.test(e.message);
    });
    // Anthropic's words, on which Claude Code compacts.
    await assert.rejects(anthropic.messages.create({ model: "x", max_tokens: 4, messages: user(long) }),
      (e) => e.status === 400 && /^.*prompt is too long: \d+ tokens > 511 maximum/.test(e.message) &&
             e.error?.error?.type === "invalid_request_error");

    r = await post("/v1/chat/completions", JSON.stringify({ messages: user("x"), trove_force_output: 5 }));
    assert.equal(r.status, 400);
  });

  it("16 parallel streaming clients all finish", async () => {
    const one = async (i) => {
      const s = await openai.chat.completions.create({
        model: "x", stream: true, stream_options: { include_usage: true }, max_tokens: 3, messages: user(`client ${i}`),
      });
      let finish = null, usage = null, chunks = 0;
      for await (const c of s) {
        chunks++;
        if (c.usage) usage = c.usage;
        if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
      }
      return { finish, usage, chunks };
    };
    const results = await Promise.all(Array.from({ length: 16 }, (_, i) => one(i)));
    for (const r of results) {
      assert.equal(r.finish, "length");
      assert.equal(r.usage.completion_tokens, 3);
    }
  });

  it("a client that disconnects mid-stream has its sequence cancelled", async () => {
    const before = await metrics(server.url, { "x-api-key": KEY });
    const controller = new AbortController();
    const s = await openai.chat.completions.create(
      { model: "x", stream: true, max_tokens: 400, messages: user("go on forever") }, { signal: controller.signal });
    let n = 0;
    for await (const _ of s) {
      if (++n === 2) { controller.abort(); break; }
    }
    assert.equal(n, 2);
    let m;
    for (let i = 0; i < 60; i++) {
      m = await metrics(server.url, { "x-api-key": KEY });
      if (m.trove_requests_cancelled_total > before.trove_requests_cancelled_total) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(m.trove_requests_cancelled_total > before.trove_requests_cancelled_total, "the request was cancelled");
  });

  it("Anthropic message, not streamed, Claude Code's shape (?beta=true, system blocks, mid system, adaptive thinking)", async () => {
    const body = {
      model: "claude-x", max_tokens: 3,
      system: [{ type: "text", text: "You are Claude Code." }, { type: "text", text: "Be brief.", cache_control: { type: "ephemeral" } }],
      messages: [{ role: "user", content: "list files" }, { role: "system", content: "reminder" }, { role: "user", content: [{ type: "text", text: "now" }] }],
      thinking: { type: "adaptive" }, output_config: { effort: "high" }, metadata: { user_id: "u" },
      context_management: { edits: [] },
    };
    const r = await anthropic.messages.create(body, { query: { beta: "true" } });
    assert.equal(r.type, "message");
    assert.equal(r.stop_reason, "max_tokens");
    assert.equal(r.usage.output_tokens, 3);
    assert.equal(r.usage.cache_read_input_tokens, 0);
    assert.equal(r.usage.cache_creation_input_tokens, 0);
    const { max_tokens, ...countBody } = body;
    const count = await anthropic.messages.countTokens(countBody);
    assert.equal(count.input_tokens, r.usage.input_tokens);
  });

  it("Anthropic streamed thinking, text and tool_use: the exact event sequence", async () => {
    const stream = await anthropic.messages.create({
      model: "x", max_tokens: 100, stream: true, messages: user("weather?"), trove_force_output: FORCED,
      tools: [{ name: "get_weather", description: "Weather", input_schema: WEATHER_SCHEMA }],
    });
    const seq = [];
    let thinking = "", text = "", json = "", sig = "", jsonDeltas = 0, toolName = null;
    for await (const ev of stream) {
      const last = seq[seq.length - 1];
      const tag = ev.type === "content_block_start" ? `start:${ev.content_block.type}`
        : ev.type === "content_block_delta" ? `delta:${ev.delta.type}` : ev.type;
      if (tag !== last) seq.push(tag);
      if (ev.type === "content_block_start" && ev.content_block.type === "tool_use") toolName = ev.content_block.name;
      if (ev.type === "content_block_delta") {
        if (ev.delta.type === "thinking_delta") thinking += ev.delta.thinking;
        if (ev.delta.type === "signature_delta") sig += ev.delta.signature;
        if (ev.delta.type === "text_delta") text += ev.delta.text;
        if (ev.delta.type === "input_json_delta") { json += ev.delta.partial_json; jsonDeltas++; }
      }
      if (ev.type === "message_delta") {
        assert.equal(ev.delta.stop_reason, "tool_use");
        assert.ok(ev.usage.output_tokens > 10);
      }
    }
    assert.deepEqual(seq, [
      "message_start",
      "start:thinking", "delta:thinking_delta", "delta:signature_delta", "content_block_stop",
      "start:text", "delta:text_delta", "content_block_stop",
      "start:tool_use", "delta:input_json_delta", "content_block_stop",
      "message_delta", "message_stop",
    ]);
    assert.equal(thinking, "hm");
    assert.ok(sig.length > 0);
    assert.equal(text, "OK");
    assert.equal(toolName, "get_weather");
    assert.ok(jsonDeltas >= 3, `input_json_delta came in ${jsonDeltas} pieces`);
    assert.deepEqual(JSON.parse(json), WEATHER_ARGS);
  });

  it("stop strings end generation and are not returned (Anthropic stop_sequences, OpenAI stop)", async () => {
    const a = await anthropic.messages.create({
      model: "x", max_tokens: 20, messages: user("x"), stop_sequences: ["END"], trove_force_output: "abc END xyz",
    });
    assert.equal(a.content[0].text, "abc");  // the parser trims whitespace at the end of content
    assert.equal(a.stop_reason, "stop_sequence");
    assert.equal(a.stop_sequence, "END");
    const o = await openai.chat.completions.create({ model: "x", messages: user("x"), stop: ["END"], trove_force_output: "abc END xyz" });
    assert.equal(o.choices[0].message.content, "abc");
    assert.equal(o.choices[0].finish_reason, "stop");
  });

  // Claude Code's first system block changes with every prompt; trove leaves it out of the prompt, so a
  // new session with another first prompt takes the system prompt and tools from the cache, and
  // message_start already reports those cached tokens.
  it("Claude Code sessions share the cached system prompt and tools (billing header kept out)", async () => {
    const words = Array.from({ length: 60 }, (_, i) => `rule${i}`).join(" ");
    const session = (hex, prompt) => ({
      model: "claude-test-session", max_tokens: 1, temperature: 0,
      system: [{ type: "text", text: `x-anthropic-billing-header: cc_version=2.1.332.${hex}; cc_entrypoint=cli;` },
               { type: "text", text: `You are a careful coding agent. Follow these: ${words}.`, cache_control: { type: "ephemeral" } }],
      tools: [{ name: "Read", description: "Read a file from disk", input_schema: WEATHER_SCHEMA },
              { name: "Later", description: "loaded on demand", input_schema: WEATHER_SCHEMA, defer_loading: true }],
      messages: user(prompt),
    });
    const first = await anthropic.messages.create(session("a1f", "list the files here"));
    assert.equal(first.usage.cache_read_input_tokens, 0);
    const { max_tokens, ...countBody } = session("9c2", "what does main.cpp do?");
    const total = (await anthropic.messages.countTokens(countBody)).input_tokens;
    const stream = await anthropic.messages.create({ ...session("9c2", "what does main.cpp do?"), stream: true });
    let startUsage = null, endUsage = null;
    for await (const ev of stream) {
      if (ev.type === "message_start") startUsage = ev.message.usage;
      if (ev.type === "message_delta") endUsage = ev.usage;
    }
    // Everything but the user turn (under 20 tokens) is shared, in whole blocks of 64 tokens.
    assert.ok(total > 192, `prompt of ${total} tokens`);
    assert.ok(endUsage.cache_read_input_tokens >= Math.floor((total - 20) / 64) * 64,
      `cached ${endUsage.cache_read_input_tokens} of ${total}`);
    assert.equal(startUsage.cache_read_input_tokens, endUsage.cache_read_input_tokens);
    assert.equal(startUsage.input_tokens + startUsage.cache_read_input_tokens, total);
  });

  it("Anthropic stream starts with message_start then ping on the wire", async () => {
    const r = await fetch(`${server.url}/v1/messages`, {
      method: "POST", headers: { "x-api-key": KEY, "content-type": "application/json" },
      body: JSON.stringify({ model: "x", max_tokens: 2, stream: true, messages: user("hi") }),
    });
    const body = await r.text();
    const events = [...body.matchAll(/^event: (\S+)$/gm)].map((m) => m[1]);
    assert.deepEqual(events.slice(0, 2), ["message_start", "ping"]);
    assert.equal(events[events.length - 1], "message_stop");
  });

  it("Responses API, not streamed, Codex's shape (developer items, web_search tool, reasoning summary)", async () => {
    const r = await openai.responses.create({
      model: "x", max_output_tokens: 3, instructions: "Be brief.", store: false, prompt_cache_key: "thread-1",
      include: ["reasoning.encrypted_content"], reasoning: { summary: "auto" }, parallel_tool_calls: true, tool_choice: "auto",
      tools: [{ type: "function", name: "get_weather", description: "w", parameters: WEATHER_SCHEMA, strict: false }, { type: "web_search" }],
      input: [{ type: "message", role: "developer", content: [{ type: "input_text", text: "rules" }] },
              { type: "message", role: "user", content: [{ type: "input_text", text: "hi" }] }],
    }, { headers: { originator: "codex_exec" } });
    assert.equal(r.object, "response");
    assert.equal(r.status, "incomplete");
    assert.equal(r.usage.output_tokens, 3);
    assert.equal(r.usage.input_tokens_details.cached_tokens, 0);
  });

  it("Responses API streamed reasoning, text and a function call", async () => {
    const stream = await openai.responses.create({
      model: "x", stream: true, input: "weather?", trove_force_output: FORCED,
      tools: [{ type: "function", name: "get_weather", parameters: WEATHER_SCHEMA }],
    });
    const types = [];
    let reasoning = "", text = "", args = "", argDeltas = 0, done = null, completed = null;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === "response.reasoning_text.delta") reasoning += ev.delta;
      if (ev.type === "response.output_text.delta") text += ev.delta;
      if (ev.type === "response.function_call_arguments.delta") { args += ev.delta; argDeltas++; }
      if (ev.type === "response.function_call_arguments.done") done = ev.arguments;
      if (ev.type === "response.completed") completed = ev.response;
    }
    assert.equal(types[0], "response.created");
    assert.equal(reasoning, "hm");
    assert.equal(text, "OK");
    assert.ok(argDeltas >= 3);
    assert.ok(types.indexOf("response.function_call_arguments.delta") < types.indexOf("response.function_call_arguments.done"));
    assert.equal(done, args);
    assert.deepEqual(JSON.parse(args), WEATHER_ARGS);
    assert.ok(completed);
    const call = completed.output.find((o) => o.type === "function_call");
    assert.equal(call.name, "get_weather");
    assert.deepEqual(JSON.parse(call.arguments), WEATHER_ARGS);
    assert.ok(completed.usage.output_tokens > 10);
  });

  it("logs carry counts and timings but no prompt or output text (no --log-prompts)", async () => {
    const secret = "zebra-umbrella-7781";
    await openai.chat.completions.create({ model: "x", messages: user(secret), max_tokens: 2, trove_force_output: "qqq-output-token" });
    assert.ok(/\/v1\/chat\/completions 200: \d+ prompt tokens/.test(server.stderr()), "a per-request log line");
    assert.ok(!server.stderr().includes(secret), "the prompt is not logged");
    assert.ok(!server.stderr().includes("qqq-output"), "the output is not logged");
  });

  it("GET /metrics is Prometheus text with requests, tokens, latencies and gauges", async () => {
    await openai.models.list();
    const m = await metrics(server.url, { "x-api-key": KEY });
    for (const name of ["trove_prompt_tokens_total", "trove_cached_tokens_total", "trove_generated_tokens_total",
                        "trove_queue_depth", "trove_active_sequences", "trove_kv_pool_blocks_total",
                        "trove_time_to_first_token_seconds_count", "trove_inter_token_latency_seconds_count"]) {
      assert.ok(name in m, `${name} is exported`);
    }
    assert.ok(Object.keys(m).some((k) => k.startsWith('trove_requests_total{endpoint="/v1/models",status="200"}')));
  });
});
