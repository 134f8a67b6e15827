// Qwen3-Coder's XML tool-call format end to end: a tiny synthetic model carrying the official
// Qwen3-Coder chat template (fixtures), `trove serve --test-force-output`, and the official SDKs in all
// three dialects. The forced output runs through the real engine, scheduler, output parser and stream
// writers; argument deltas must arrive before the call ends and concatenate to the intended arguments
// (typed by the tool's schema: "2" becomes the integer 2).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { CODER_CALL, startServer, WEATHER_ARGS, WEATHER_SCHEMA } from "./harness.mjs";

let server, openai, anthropic;
const template = `${process.env.TROVE_SOURCE_DIR ?? "."}/tests/fixtures/qwen3-coder/chat_template.jinja`;

before(async () => {
  server = await startServer({ template, args: ["--parallel", "8", "--ctx", "1024", "--test-force-output"] });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: server.url, apiKey: "none", maxRetries: 0 });
});
after(async () => { await server?.stop(); });

const user = (content) => [{ role: "user", content }];
const TOOLS = [{ type: "function", function: { name: "get_weather", description: "Weather", parameters: WEATHER_SCHEMA } }];
const FORCED = `Checking.\n${CODER_CALL}`;
// Two short calls of a one-parameter tool: the longest forced output here, kept small (a decode step
// takes about a second on lavapipe).
const F_TOOL = { type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "integer" } } } } };
const xmlCall = (a) => `<tool_call>\n<function=f>\n<parameter=a>\n${a}\n</parameter>\n</function>\n</tool_call>`;
const TWO_CALLS = `${xmlCall(1)}\n${xmlCall(2)}`;

describe("trove serve, Qwen3-Coder XML tool calls in every dialect", { concurrency: true }, () => {
  it("OpenAI streamed: two calls, unique ids, argument deltas before the finish", async () => {
    const stream = await openai.chat.completions.create({
      model: "x", stream: true, messages: user("call f twice"), tools: [F_TOOL], trove_force_output: TWO_CALLS,
    });
    const calls = [];
    let finish = null, deltasBeforeFinish = 0;
    for await (const c of stream) {
      for (const tc of c.choices[0]?.delta?.tool_calls ?? []) {
        if (tc.id) calls[tc.index] = { id: tc.id, name: tc.function.name, args: "", deltas: 0 };
        if (tc.function?.arguments) {
          calls[tc.index].args += tc.function.arguments;
          calls[tc.index].deltas++;
          deltasBeforeFinish++;
        }
      }
      if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
    }
    assert.equal(finish, "tool_calls");
    assert.equal(calls.length, 2);
    assert.notEqual(calls[0].id, calls[1].id);
    assert.equal(calls[0].name, "f");
    assert.deepEqual(JSON.parse(calls[0].args), { a: 1 });
    assert.deepEqual(JSON.parse(calls[1].args), { a: 2 });
    assert.ok(calls[0].deltas >= 2 && calls[1].deltas >= 2, "arguments arrive in pieces");
    assert.ok(deltasBeforeFinish >= 4);
  });

  it("OpenAI not streamed: content and the parsed call", async () => {
    const r = await openai.chat.completions.create({ model: "x", messages: user("weather?"), tools: TOOLS, trove_force_output: FORCED });
    const m = r.choices[0].message;
    assert.equal(m.content, "Checking.");
    assert.equal(m.tool_calls[0].function.name, "get_weather");
    assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), WEATHER_ARGS);
  });

  it("Anthropic streamed: text block then tool_use with input_json_delta pieces", async () => {
    const stream = await anthropic.messages.create({
      model: "x", max_tokens: 200, stream: true, messages: user("weather?"), trove_force_output: FORCED,
      tools: [{ name: "get_weather", input_schema: WEATHER_SCHEMA }],
    });
    const seq = [];
    let text = "", json = "", pieces = 0, stop = null;
    for await (const ev of stream) {
      const tag = ev.type === "content_block_start" ? `start:${ev.content_block.type}`
        : ev.type === "content_block_delta" ? `delta:${ev.delta.type}` : ev.type;
      if (tag !== seq[seq.length - 1]) seq.push(tag);
      if (ev.type === "content_block_delta" && ev.delta.type === "text_delta") text += ev.delta.text;
      if (ev.type === "content_block_delta" && ev.delta.type === "input_json_delta") { json += ev.delta.partial_json; pieces++; }
      if (ev.type === "message_delta") stop = ev.delta.stop_reason;
    }
    assert.deepEqual(seq, ["message_start", "start:text", "delta:text_delta", "content_block_stop",
      "start:tool_use", "delta:input_json_delta", "content_block_stop", "message_delta", "message_stop"]);
    assert.equal(text, "Checking.");
    assert.ok(pieces >= 2);
    assert.deepEqual(JSON.parse(json), WEATHER_ARGS);
    assert.equal(stop, "tool_use");
  });

  it("Anthropic not streamed: tool_use block with the input object", async () => {
    const r = await anthropic.messages.create({
      model: "x", max_tokens: 200, messages: user("weather?"), trove_force_output: CODER_CALL,
      tools: [{ name: "get_weather", input_schema: WEATHER_SCHEMA }],
    });
    const tu = r.content.find((b) => b.type === "tool_use");
    assert.equal(r.stop_reason, "tool_use");
    assert.match(tu.id, /^toolu_/);
    assert.deepEqual(tu.input, WEATHER_ARGS);
  });

  it("Responses streamed: function_call_arguments deltas, then done, then completed", async () => {
    const stream = await openai.responses.create({
      model: "x", stream: true, input: "weather?", trove_force_output: FORCED,
      tools: [{ type: "function", name: "get_weather", parameters: WEATHER_SCHEMA }],
    });
    let args = "", deltas = 0, doneArgs = null, completed = null, itemDone = null;
    for await (const ev of stream) {
      if (ev.type === "response.function_call_arguments.delta") {
        assert.equal(doneArgs, null, "no delta after done");
        args += ev.delta;
        deltas++;
      }
      if (ev.type === "response.function_call_arguments.done") doneArgs = ev.arguments;
      if (ev.type === "response.output_item.done" && ev.item.type === "function_call") itemDone = ev.item;
      if (ev.type === "response.completed") completed = ev.response;
    }
    assert.ok(deltas >= 2);
    assert.equal(doneArgs, args);
    assert.deepEqual(JSON.parse(args), WEATHER_ARGS);
    assert.equal(itemDone.name, "get_weather");
    assert.equal(completed.status, "completed");
    assert.equal(completed.output_text ?? completed.output.find((o) => o.type === "message").content[0].text, "Checking.");
  });

  it("Anthropic tool_choice naming a tool: the call is opened by the server, the model writes the parameters", async () => {
    const r = await anthropic.messages.create({
      model: "x", max_tokens: 200, messages: user("weather?"), tool_choice: { type: "tool", name: "get_weather" },
      tools: [{ name: "get_weather", input_schema: WEATHER_SCHEMA }, { name: "other", input_schema: { type: "object" } }],
      trove_force_output: "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
    });
    const tu = r.content.find((b) => b.type === "tool_use");
    assert.equal(tu.name, "get_weather");
    assert.deepEqual(tu.input, WEATHER_ARGS);
  });

  it("Responses not streamed: function_call item in output", async () => {
    const r = await openai.responses.create({
      model: "x", input: [{ role: "user", content: "weather?" }], trove_force_output: CODER_CALL,
      tools: [{ type: "function", name: "get_weather", parameters: WEATHER_SCHEMA }],
    });
    const call = r.output.find((o) => o.type === "function_call");
    assert.equal(call.name, "get_weather");
    assert.deepEqual(JSON.parse(call.arguments), WEATHER_ARGS);
  });
});
