// The agent-loop conversation of tests/server (tests/server/agent_conversation.mjs) as token ids for
// bench_spec --docs: document n is request n + 1's history followed by the assistant's reply to it
// (Qwen3's template through real Jinja2, the reference tokenizer), so its last assistant turn is what
// the agent wrote at that point — with the tool results and file contents it copies from in context.
//
//   node bench/spec/agent_loop.mjs OUT.json      (run from the repository root)
//   build/bench/spec/bench_spec --model M.gguf [--draft D.gguf] --docs OUT.json
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { TOOLS, history, requests, tok } from "../../tests/server/agent_conversation.mjs";

const out = process.argv[2];
if (!out) {
  console.error("usage: node bench/spec/agent_loop.mjs OUT.json");
  process.exit(2);
}
// requests[n] is the history before the assistant's n-th reply; history holds every message.
const docs = requests.map((r) => ({
  messages: history.slice(0, r.length + 1), tools: TOOLS, enable_thinking: true, add_generation_prompt: false,
}));
const texts = JSON.parse(execFileSync("/usr/bin/python3", ["tests/server/render_oracle.py"], {
  input: JSON.stringify(docs), maxBuffer: 64 << 20,
}).toString());
const ids = texts.map((t) => Array.from(tok.encode(t)));
writeFileSync(out, JSON.stringify({ source: "tests/server/agent_conversation.mjs", last_turn_only: true, docs: ids }));
console.log(`${ids.length} requests with their replies: ${ids.map((d) => d.length).join(", ")} tokens`);
