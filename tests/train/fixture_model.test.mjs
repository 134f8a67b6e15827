// The trained fixture model (build/fixtures/models/tiny-coder.gguf, docs/fixture-models.md) behind the
// real server and the official SDKs, in an agent loop, in all three dialects — OpenAI Chat Completions
// (`openai`, streamed), Anthropic Messages (`@anthropic-ai/sdk`, streamed) and OpenAI Responses
// (`openai` responses.create, streamed):
//   1. with no forced output, the model itself answers a coding request with a tool call, which must
//      stream through trove's parser as a well-formed call: a tool name of the request and JSON
//      arguments the SDK parses, with the dialect's tool-call finish (tool_calls / tool_use /
//      a function_call item);
//   2. the test executes that call against a small in-memory workspace (read_file returns the file's
//      lines numbered as agents show them) and sends the result back in the dialect's own shape;
//   3. the model's next turn must again be well-formed: another parsed tool call, or a text answer
//      (ended by the model, or cut at TURN2_TOKENS with the dialect's length finish) with no tool-call
//      markup left in it. This checks the API contract, not what the model says. The cut keeps the
//      test's run time down: on lavapipe every decode step of the three loops costs a 151,936-row head
//      per sequence, and the model's full answer (it quotes the lines it read) is ~70 tokens.
// A random-weight model fails step 1 (it writes noise, never a closed <tool_call>), so the test shows
// the training took. The three loops run concurrently: a decode step serves every active sequence.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { metrics, startServer } from "../server/harness.mjs";

const build = process.env.TROVE_BINARY_DIR ?? "build";
const fixture = resolve(build, "fixtures/models/tiny-coder.gguf");
let server, openai, anthropic, t0;
const since = () => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

before(async () => {
  const started = Date.now();
  const work = mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), "fixture-model-"));
  symlinkSync(fixture, join(work, "tiny.gguf"));  // the harness serves work/tiny.gguf as it is
  server = await startServer({ work, args: ["--parallel", "3", "--ctx", "2048"] });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0, timeout: 240000 });
  anthropic = new Anthropic({ baseURL: server.url, apiKey: "none", maxRetries: 0, timeout: 240000 });
  t0 = Date.now();
  console.log(`server up in ${((t0 - started) / 1000).toFixed(1)} s`);
});
after(async () => {
  if (server) {  // what the run cost: decode steps dominate on lavapipe
    const m = await metrics(server.url);
    console.log(Object.entries(m).filter(([k]) => /^trove_(prompt|cached|generated)_tokens_total$|^trove_scheduler_steps_total$/.test(k))
      .map(([k, v]) => `${k} ${v}`).join(", "));
  }
  await server?.stop();
});

// One of the corpus' tool sets (tools/train/make_corpus.py), as an agent would send it.
const S = (d) => ({ type: "string", description: d });
const FNS = [
  { name: "read_file", description: "Read a text file. Returns its lines numbered from 1.",
    parameters: { type: "object", properties: { path: S("Path of the file") }, required: ["path"] } },
  { name: "edit_file", description: "Replace exactly one occurrence of old_text with new_text in a file.",
    parameters: { type: "object", properties: { path: S("Path of the file"), old_text: S("Text to find, copied exactly"),
                                                new_text: S("Replacement text") }, required: ["path", "old_text", "new_text"] } },
  { name: "bash", description: "Run a shell command in the workspace and return its output.",
    parameters: { type: "object", properties: { command: S("The command line") }, required: ["command"] } },
  { name: "list_dir", description: "List the entries of a directory.",
    parameters: { type: "object", properties: { path: S("Directory path") }, required: ["path"] } },
];
const NAMES = new Set(FNS.map((f) => f.name));
const SYSTEM = "You are a coding agent working in a C project. Use the tools to inspect and change files.";
const ASK = "Read the file src/util.c and tell me what the function parse_args does.";
const TURN1_TOKENS = 120, TURN2_TOKENS = 24;

// The workspace the agent loop's tools act on: one small C file, and — because the tiny model often
// asks for a file of its training data instead (a header it has seen, such as
// /usr/include/linux/posix_types.h) — the real files under the corpus' source roots, read-only. Its
// next turn then sees what it saw in training: the real lines of the file it named, numbered.
const FILES = {
  "src/util.c": [
    "#include <stdio.h>",
    "#include <string.h>",
    "",
    "/* Options of the command line. */",
    "struct options { int verbose; const char *out; };",
    "",
    "int parse_args(int argc, char **argv, struct options *o) {",
    "  for (int i = 1; i < argc; i++) {",
    "    if (strcmp(argv[i], \"-v\") == 0) o->verbose = 1;",
    "    else if (strcmp(argv[i], \"-o\") == 0 && i + 1 < argc) o->out = argv[++i];",
    "    else return -1;",
    "  }",
    "  return 0;",
    "}",
  ].join("\n"),
};
const ROOTS = ["/usr/include/", "/usr/lib/python3.11/", "node_modules/"];
function readWorkspace(path) {
  if (FILES[path] !== undefined) return FILES[path];
  if (path.includes("..") || !ROOTS.some((r) => path.startsWith(r))) return null;
  try { return readFileSync(path, "utf8"); } catch { return null; }
}
// Lines numbered as the corpus' tool results show them ("%6d\t"), from line `first` (1-based).
const numbered = (lines, first) => lines.map((l, i) => `${String(first + i).padStart(6)}\t${l}`).join("\n");
function execute(name, args) {
  const path = String(args.path ?? args.file_path ?? "");
  if (name === "read_file") {
    const text = readWorkspace(path);
    if (text === null) return `error: ${path}: no such file`;
    const lines = text.replace(/\n$/, "").split("\n");
    const first = Math.max(1, Number(args.start_line ?? args.offset ?? 1) || 1);
    const last = Math.min(lines.length, Number(args.end_line) || first + 69);
    return numbered(lines.slice(first - 1, last), first);
  }
  if (name === "list_dir") return Object.keys(FILES).filter((p) => p.startsWith(path.replace(/\/?$/, "/"))).join("\n");
  if (name === "edit_file") return readWorkspace(path)?.includes(args.old_text) ? "ok" : `error: old_text not found in ${path}`;
  if (name === "bash") return "";
  return `error: unknown tool ${name}`;
}

// A call the model wrote, as the SDK handed it over: a name the request offered, an arguments object.
function checkCall(dialect, turn, name, args) {
  assert.ok(NAMES.has(name), `${dialect} turn ${turn}: the model called ${name}, not one of the request's tools`);
  assert.equal(typeof args, "object", `${dialect} turn ${turn}: arguments ${JSON.stringify(args)} are not an object`);
  assert.ok(args !== null && !Array.isArray(args));
  console.log(`${dialect} turn ${turn} (${since()}): ${name}(${JSON.stringify(args)})`);
}
// A text answer: ended by the model or cut at the token limit (`ends`: the dialect's two finishes),
// non-empty, with no tool-call markup the parser should have turned into a call.
function checkText(dialect, turn, text, end, ends) {
  assert.ok(ends.includes(end), `${dialect} turn ${turn}: ended with ${end}: ${JSON.stringify(text)}`);
  assert.equal(typeof text, "string");
  assert.ok(text.trim().length > 0, `${dialect} turn ${turn}: an empty answer`);
  assert.doesNotMatch(text, /<tool_call>|<function=|<parameter=/, `${dialect} turn ${turn}: tool-call markup in the text`);
  console.log(`${dialect} turn ${turn} (${since()}): text ${JSON.stringify(text.slice(0, 200))}`);
}

// --- OpenAI Chat Completions, streamed -------------------------------------------------------------
async function chatTurn(messages, maxTokens) {
  const stream = await openai.chat.completions.create({
    model: "tiny-coder", stream: true, temperature: 0, max_tokens: maxTokens, messages,
    tools: FNS.map((f) => ({ type: "function", function: f })),
  });
  const calls = [];
  let text = "", finish = null, argDeltas = 0;
  for await (const c of stream) {
    const d = c.choices[0]?.delta ?? {};
    if (d.content) text += d.content;
    for (const tc of d.tool_calls ?? []) {
      if (tc.id) calls[tc.index] = { id: tc.id, name: tc.function.name, args: "" };
      if (tc.function?.arguments) { calls[tc.index].args += tc.function.arguments; argDeltas++; }
    }
    if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
  }
  return { calls, text, finish, argDeltas };
}

// --- Anthropic Messages, streamed -------------------------------------------------------------------
async function messagesTurn(messages, maxTokens) {
  const stream = anthropic.messages.stream({
    model: "tiny-coder", max_tokens: maxTokens, temperature: 0, system: SYSTEM, messages,
    tools: FNS.map((f) => ({ name: f.name, description: f.description, input_schema: f.parameters })),
  });
  let jsonDeltas = 0;
  stream.on("streamEvent", (ev) => { if (ev.type === "content_block_delta" && ev.delta.type === "input_json_delta") jsonDeltas++; });
  const message = await stream.finalMessage();
  return { message, jsonDeltas };
}

// --- OpenAI Responses, streamed ---------------------------------------------------------------------
async function responsesTurn(input, maxTokens) {
  const stream = await openai.responses.create({
    model: "tiny-coder", stream: true, temperature: 0, max_output_tokens: maxTokens, instructions: SYSTEM, input,
    tools: FNS.map((f) => ({ type: "function", name: f.name, description: f.description, parameters: f.parameters })),
  });
  const argsDone = new Map();
  let completed = null, argDeltas = 0;
  for await (const ev of stream) {
    if (ev.type === "response.function_call_arguments.delta") argDeltas++;
    if (ev.type === "response.function_call_arguments.done") argsDone.set(ev.item_id, ev.arguments);
    if (ev.type === "response.completed" || ev.type === "response.incomplete") completed = ev.response;
  }
  assert.ok(completed, "the stream ended without response.completed / response.incomplete");
  return { response: completed, argsDone, argDeltas };
}

describe("the trained fixture model's own tool calls in an agent loop, in all three dialects", { concurrency: true }, () => {
  it("OpenAI Chat Completions (streamed): tool call, result, next turn well-formed", async () => {
    const messages = [{ role: "system", content: SYSTEM }, { role: "user", content: ASK }];
    const t1 = await chatTurn(messages, TURN1_TOKENS);
    assert.equal(t1.finish, "tool_calls", `turn 1 ended with ${t1.finish}: ${JSON.stringify(t1.text)}`);
    assert.ok(t1.calls.length >= 1 && t1.argDeltas >= 1);
    messages.push({ role: "assistant", content: t1.text || null,
                    tool_calls: t1.calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.args } })) });
    for (const c of t1.calls) {
      const args = JSON.parse(c.args);
      checkCall("openai-chat", 1, c.name, args);
      messages.push({ role: "tool", tool_call_id: c.id, content: execute(c.name, args) });
    }
    const t2 = await chatTurn(messages, TURN2_TOKENS);
    if (t2.finish === "tool_calls") {
      assert.ok(t2.calls.length >= 1);
      for (const c of t2.calls) checkCall("openai-chat", 2, c.name, JSON.parse(c.args));
    } else {
      checkText("openai-chat", 2, t2.text, t2.finish, ["stop", "length"]);
    }
  });

  it("Anthropic Messages (streamed): tool_use, tool_result, next turn well-formed", async () => {
    const messages = [{ role: "user", content: ASK }];
    const t1 = await messagesTurn(messages, TURN1_TOKENS);
    assert.equal(t1.message.stop_reason, "tool_use", JSON.stringify(t1.message.content));
    const uses = t1.message.content.filter((b) => b.type === "tool_use");
    assert.ok(uses.length >= 1 && t1.jsonDeltas >= 1);
    messages.push({ role: "assistant", content: t1.message.content });
    const results = [];
    for (const u of uses) {
      checkCall("anthropic", 1, u.name, u.input);
      assert.match(u.id, /\S/);
      results.push({ type: "tool_result", tool_use_id: u.id, content: execute(u.name, u.input) });
    }
    messages.push({ role: "user", content: results });
    const t2 = await messagesTurn(messages, TURN2_TOKENS);
    if (t2.message.stop_reason === "tool_use") {
      const more = t2.message.content.filter((b) => b.type === "tool_use");
      assert.ok(more.length >= 1);
      for (const u of more) checkCall("anthropic", 2, u.name, u.input);
    } else {
      const text = t2.message.content.filter((b) => b.type === "text").map((b) => b.text).join("");
      checkText("anthropic", 2, text, t2.message.stop_reason, ["end_turn", "max_tokens"]);
    }
  });

  it("OpenAI Responses (streamed): function_call, function_call_output, next turn well-formed", async () => {
    const input = [{ role: "user", content: ASK }];
    const t1 = await responsesTurn(input, TURN1_TOKENS);
    const calls = t1.response.output.filter((o) => o.type === "function_call");
    assert.equal(t1.response.status, "completed", JSON.stringify(t1.response.output));
    assert.ok(calls.length >= 1 && t1.argDeltas >= 1, `no function_call: ${JSON.stringify(t1.response.output)}`);
    input.push(...t1.response.output.filter((o) => o.type !== "reasoning"));
    for (const c of calls) {
      assert.equal(t1.argsDone.get(c.id), c.arguments, "function_call_arguments.done differs from the item");
      const args = JSON.parse(c.arguments);
      checkCall("responses", 1, c.name, args);
      input.push({ type: "function_call_output", call_id: c.call_id, output: execute(c.name, args) });
    }
    const t2 = await responsesTurn(input, TURN2_TOKENS);
    const more = t2.response.output.filter((o) => o.type === "function_call");
    if (more.length) {
      assert.equal(t2.response.status, "completed");
      for (const c of more) checkCall("responses", 2, c.name, JSON.parse(c.arguments));
    } else {
      const text = t2.response.output.filter((o) => o.type === "message")
        .flatMap((o) => o.content).filter((p) => p.type === "output_text").map((p) => p.text).join("");
      const end = t2.response.status === "incomplete" ? t2.response.incomplete_details?.reason : t2.response.status;
      checkText("responses", 2, text, end, ["completed", "max_output_tokens"]);
    }
  });
});
