// A stand-in coding agent for the launch test: reads the settings `trove launch qwen` gives a client
// (OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL), asks the server for two tokens and prints the
// reply. `--kill-server` first kills the server (as a crash would) and waits for the launcher's
// watchdog to bring it back on the same URL.
import fs from "node:fs";
import path from "node:path";

const base = process.env.OPENAI_BASE_URL, model = process.env.OPENAI_MODEL;
if (!base || !model) { console.error("fake client: OPENAI_BASE_URL / OPENAI_MODEL not set"); process.exit(3); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function health() {
  try { return (await fetch(base.replace(/\/v1$/, "") + "/health")).ok; } catch { return false; }
}
if (process.argv.includes("--kill-server")) {
  const state = JSON.parse(fs.readFileSync(path.join(process.env.TROVE_HOME, "run", "server.json"), "utf8"));
  process.kill(state.pid, "SIGKILL");
  while (await health()) await sleep(100);
  console.log("fake client: server killed");
  let up = false;
  for (let i = 0; i < 600 && !up; i++) { await sleep(250); up = await health(); }
  if (!up) { console.error("fake client: the server did not come back"); process.exit(4); }
}
const r = await fetch(`${base}/chat/completions`, {
  method: "POST",
  headers: { "content-type": "application/json", authorization: `Bearer ${process.env.OPENAI_API_KEY}` },
  body: JSON.stringify({ model, max_tokens: 2, messages: [{ role: "user", content: "hi" }] }),
});
const j = await r.json();
console.log(`fake client: status ${r.status} model ${j.model} tokens ${j.usage?.completion_tokens}`);
process.exit(r.ok ? 0 : 5);
