// How often a fixture model's own tool calls parse, on held-out conversations (issue 19's quality check).
//
// For each of the first --n held-out conversations (tools/train/data/heldout.jsonl.xz) whose first
// assistant turn calls a tool, the rendered text up to that turn's "<|im_start|>assistant\n" is the
// prompt; trove generates greedily (`trove run --raw --temp 0 --json`) until <|im_end|> or --max tokens,
// and the reply is parsed in the conversation's dialect:
//   qwen3        (<think>...</think>)? then <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
//   qwen3-coder  <tool_call>\n<function=NAME>\n(<parameter=P>\nVALUE\n</parameter>\n)*</function>\n</tool_call>
// Reported per dialect: replies that parse, whose tool name is one of the conversation's tools, whose
// call equals the held-out one (name and arguments).
//   node tools/train/heldout_toolcalls.mjs MODEL.gguf [--n 40] [--max 160]   (TROVE_EXE: trove binary)
//   node tools/train/heldout_toolcalls.mjs --self-check   the parsers on the held-out replies themselves
//                                                          (all must parse and equal the held-out call)
// On lavapipe a conversation takes about a minute (prefill of ~1,500 tokens): use a small --n here.
import { execFileSync } from "node:child_process";

const argv = process.argv.slice(2);
const model = argv[0];
const selfCheck = model === "--self-check";
if (!model || (model.startsWith("--") && !selfCheck)) {
  console.error("usage: node tools/train/heldout_toolcalls.mjs MODEL.gguf [--n 40] [--max 160]");
  process.exit(2);
}
const opt = (name, def) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : def);
const N = opt("--n", 40), MAX = opt("--max", 160);
const trove = process.env.TROVE_EXE ?? "build/trove";
const held = execFileSync("xz", ["-dc", "tools/train/data/heldout.jsonl.xz"], { maxBuffer: 1 << 28 })
  .toString().split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));

function parseQwen3(text) {
  const body = text.replace(/^<think>[\s\S]*?<\/think>\s*/, "");
  const m = body.match(/^<tool_call>\n([\s\S]*?)\n<\/tool_call>/);
  if (!m) return null;
  try {
    const j = JSON.parse(m[1]);
    if (typeof j.name !== "string" || typeof j.arguments !== "object" || j.arguments === null) return null;
    return { name: j.name, arguments: j.arguments };
  } catch { return null; }
}

function parseCoder(text) {
  // Optional reasoning in prose before the first call (the template allows it), then the call.
  const at = text.indexOf("<tool_call>\n");
  if (at < 0 || (at > 0 && text[at - 1] !== "\n")) return null;
  const m = text.slice(at).match(/^<tool_call>\n<function=([^>\n]+)>\n([\s\S]*?)<\/function>\n<\/tool_call>/);
  if (!m) return null;
  const args = {};
  const re = /<parameter=([^>\n]+)>\n([\s\S]*?)\n<\/parameter>\n/g;
  let rest = m[2], p, used = 0;
  while ((p = re.exec(m[2])) !== null) {
    args[p[1]] = p[2];
    used = re.lastIndex;
  }
  rest = m[2].slice(used);
  if (rest.trim() !== "") return null;
  return { name: m[1], arguments: args };
}

const norm = (args) => JSON.stringify(Object.fromEntries(Object.entries(args).map(([k, v]) => [k, String(v)]).sort()));
const stats = {};
let done = 0;
for (const c of held) {
  if (done >= N) break;
  const first = c.messages.find((m) => m.role === "assistant");
  if (!first || !first.tool_calls) continue;
  const at = c.text.indexOf("<|im_start|>assistant\n");
  if (at < 0) continue;
  const prompt = c.text.slice(0, at + "<|im_start|>assistant\n".length);
  const truth = c.text.slice(prompt.length).replace(/<\|im_end\|>[\s\S]*$/, "");
  const out = selfCheck ? { text: truth } : JSON.parse(execFileSync(trove, ["run", "-m", model, "-p", prompt, "--raw", "--temp", "0", "-n", String(MAX),
                                              "--json", "--ctx", "4096"],
                                      { stdio: ["ignore", "pipe", "ignore"], maxBuffer: 1 << 26 }).toString());
  const text = out.text.replace(/<\|im_end\|>[\s\S]*$/, "");
  const call = c.dialect === "qwen3" ? parseQwen3(text) : parseCoder(text);
  const want = first.tool_calls[0].function;
  const names = new Set(c.tools.map((t) => t.function.name));
  const s = (stats[c.dialect] ??= { n: 0, parsed: 0, known: 0, exact: 0 });
  s.n++;
  if (call) {
    s.parsed++;
    if (names.has(call.name)) s.known++;
    if (call.name === want.name && norm(call.arguments) === norm(want.arguments)) s.exact++;
  }
  done++;
  if (selfCheck && !(call && call.name === want.name && norm(call.arguments) === norm(want.arguments)))
    console.log(JSON.stringify({ want: want.arguments, got: call?.arguments, text }));
  if (process.env.VERBOSE) console.log(`--- ${c.dialect} ${c.scenario}: ${call ? "parsed" : "NOT parsed"}\n${text}`);
}
let bad = 0;
for (const [d, s] of Object.entries(stats)) {
  const pct = (k) => `${k} ${s[k]}/${s.n} (${((100 * s[k]) / s.n).toFixed(0)}%)`;
  console.log(`${d.padEnd(12)} ${pct("parsed")}  ${pct("known")}  ${pct("exact")}`);
  bad += s.n - s.exact;
}
if (selfCheck && (bad || done === 0)) {
  console.error(`self-check: ${bad} held-out replies do not parse back to their own call`);
  process.exit(1);
}
