// The trained fixture model (build/fixtures/models/tiny-coder.gguf, docs/fixture-models.md) behind the
// real server and the official SDKs: with no forced output, the model itself answers a coding request
// with a tool call, which must stream through trove's parser as a well-formed call — a tool name and
// JSON arguments the SDK parses — in the OpenAI and Anthropic dialects. A random-weight model fails
// this (it writes noise, never a closed <tool_call>), so the test shows the training took.
import assert from "node:assert/strict";
import { symlinkSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { startServer } from "../server/harness.mjs";

const build = process.env.TROVE_BINARY_DIR ?? "build";
const fixture = resolve(build, "fixtures/models/tiny-coder.gguf");
let server, openai, anthropic;

before(async () => {
  const work = mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), "fixture-model-"));
  symlinkSync(fixture, join(work, "tiny.gguf"));  // the harness serves work/tiny.gguf as it is
  server = await startServer({ work, args: ["--parallel", "2", "--ctx", "2048"] });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0, timeout: 240000 });
  anthropic = new Anthropic({ baseURL: server.url, apiKey: "none", maxRetries: 0, timeout: 240000 });
});
after(async () => { await server?.stop(); });

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
const SYSTEM = "You are a coding agent working in a C project. Use the tools to inspect and change files.";
const ASK = "Read the file src/util.c and tell me what the function parse_args does.";

describe("the trained fixture model writes tool calls by itself", { concurrency: true }, () => {
  it("OpenAI streamed: a tool call with JSON arguments, finish_reason tool_calls", async () => {
    const stream = await openai.chat.completions.create({
      model: "tiny-coder", stream: true, temperature: 0, max_tokens: 120,
      messages: [{ role: "system", content: SYSTEM }, { role: "user", content: ASK }],
      tools: FNS.map((f) => ({ type: "function", function: f })),
    });
    const calls = [];
    let finish = null;
    for await (const c of stream) {
      for (const tc of c.choices[0]?.delta?.tool_calls ?? []) {
        if (tc.id) calls[tc.index] = { name: tc.function.name, args: "" };
        if (tc.function?.arguments) calls[tc.index].args += tc.function.arguments;
      }
      if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
    }
    assert.equal(finish, "tool_calls", `the model ended with ${finish}`);
    assert.ok(calls.length >= 1);
    for (const call of calls) {
      assert.match(call.name, /^[A-Za-z_][A-Za-z0-9_]*$/);
      const args = JSON.parse(call.args);
      assert.equal(typeof args, "object");
      console.log(`openai: ${call.name}(${call.args})`);
    }
  });

  it("Anthropic: a tool_use block with an input object, stop_reason tool_use", async () => {
    const r = await anthropic.messages.create({
      model: "tiny-coder", max_tokens: 120, temperature: 0, system: SYSTEM,
      messages: [{ role: "user", content: ASK }],
      tools: FNS.map((f) => ({ name: f.name, description: f.description, input_schema: f.parameters })),
    });
    assert.equal(r.stop_reason, "tool_use", JSON.stringify(r.content));
    const uses = r.content.filter((b) => b.type === "tool_use");
    assert.ok(uses.length >= 1);
    for (const u of uses) {
      assert.match(u.name, /^[A-Za-z_][A-Za-z0-9_]*$/);
      assert.equal(typeof u.input, "object");
      console.log(`anthropic: ${u.name}(${JSON.stringify(u.input)})`);
    }
  });
});
