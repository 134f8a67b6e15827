// Makes docs/ui.png, the dashboard screenshot in docs/ui.md: an agent-loop-like run against `trove
// serve` on a tiny synthetic model (lavapipe), then the page in headless Chromium. Not a test (ctest
// does not run it); run it from the repository root after a build when the dashboard changes:
//   TROVE_EXE=build/trove TROVE_BINARY_DIR=/tmp node tests/ui/docs_screenshot.mjs /tmp/ui.png
//   pngquant --quality 70-95 --output docs/ui.png /tmp/ui.png    # ~270 KB → ~100 KB
//
// The run: three agent sessions in one namespace share a system prompt (instructions, tool schemas
// and a slice of the project's docs, as agents send them); each sends the whole history again on
// every turn. After two turns the server restarts on the same KV store, so the third turn's prefix
// comes from the SSD (store tier) and the fourth's from the GPU pool; a fifth turn is streaming when
// the picture is taken.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "../server/harness.mjs";

const out = process.argv[2] ?? "docs/ui.png";
const NS = "agents";
const ARGS = ["--parallel", "4", "--ctx", "4096"];

const docs = readFileSync("docs/architecture.md", "utf8").split("\n").slice(0, 40).join("\n");
const SYSTEM = `You are an autonomous coding agent in the user's repository. Read before you change, change the least ` +
  `that fixes the problem, build and test after every change, and report what you measured.\n\n# Project\n${docs}`;
const tool = (name, description) => ({ type: "function", function: { name, description, parameters: { type: "object",
  properties: { path: { type: "string" }, command: { type: "string" } } } } });
const TOOLS = [tool("read_file", "Read a file"), tool("grep", "Search the repository"), tool("bash", "Run a command"),
  tool("edit_file", "Replace text in a file")];
const TASKS = ["The scheduler test is flaky under load; find out why.", "Add a --max-nodes option to `trove kv tree`.",
  "Why does the KV store's compaction keep old segments?"];
const USER_AGENTS = ["claude-cli/1.0.71 (external, cli)", "opencode/0.5.2", "codex_cli_rs/0.20.0"];

function turn(history, i, n) {
  const call = { id: `call_${i}_${n}`, type: "function", function: { name: n % 2 ? "grep" : "read_file",
    arguments: JSON.stringify(n % 2 ? { command: `grep -rn "step" server/ | head -${20 + n}` } : { path: `server/scheduler.cpp` }) } };
  history.push({ role: "assistant", content: "", tool_calls: [call] });
  history.push({ role: "tool", tool_call_id: call.id, content: docs.slice(n * 300, n * 300 + 900) });
}

async function send(url, i, history, { stream = false, maxTokens = 6 } = {}) {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-trove-cache-namespace": NS, "user-agent": USER_AGENTS[i] },
    body: JSON.stringify({ model: "tiny", max_tokens: maxTokens, temperature: 0, stream, tools: TOOLS,
      messages: [{ role: "system", content: SYSTEM }, ...history] }),
  });
  if (!stream) {
    const j = await r.json();
    console.log(`session ${i}: ${j.usage.prompt_tokens} prompt tokens, ${j.usage.prompt_tokens_details.cached_tokens} cached`);
  }
  return r;
}

const histories = TASKS.map((t) => [{ role: "user", content: t }]);
const sessions = (url, n) => Promise.all(histories.map(async (h, i) => {
  if (n > 0) turn(h, i, n);
  await send(url, i, h);
}));

let server = await startServer({ modelArgs: ["--layers", "1", "--ctx", "4096"], args: ARGS });
await send(server.url, 0, histories[0]);  // the system prompt once, then everyone shares it
await sessions(server.url, 1);
await sessions(server.url, 2);
await server.stop({ keep: true });
server = await startServer({ work: server.work, args: ARGS });
await sessions(server.url, 3);  // restored from the KV store
await sessions(server.url, 4);  // from the GPU pool

const profile = mkdtempSync(join(tmpdir(), "trove-ui-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium", headless: true, viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await context.newPage();
await page.goto(`${server.url}/ui`);
await page.waitForSelector("body[data-ready='1']");
// One session streams its next turn while the picture is taken.
turn(histories[1], 1, 5);
const abort = new AbortController();
const live = fetch(`${server.url}/v1/chat/completions`, {
  method: "POST", signal: abort.signal,
  headers: { "content-type": "application/json", "x-trove-cache-namespace": NS, "user-agent": USER_AGENTS[1] },
  body: JSON.stringify({ model: "tiny", max_tokens: 400, stream: true, tools: TOOLS, messages: [{ role: "system", content: SYSTEM }, ...histories[1]] }),
}).catch(() => {});
await page.waitForSelector("#sequences tr[data-state='decoding']", { timeout: 120000 });
await page.waitForTimeout(4000);
await page.screenshot({ path: out, fullPage: true });
console.log(`wrote ${out}`);
abort.abort();
await live;
await context.close();
rmSync(profile, { recursive: true, force: true });
await server.stop();
