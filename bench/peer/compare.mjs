// trove against the peer, column by column: reads bench_engine's --json and bench_peer.mjs's --json
// (the same GGUF files, ideally the same machine and run) and prints one table with each engine's
// tok/s and trove / llama.cpp.
//
//   node bench/peer/compare.mjs TROVE.json PEER.json [--wall]
//
// Models are matched by file name, then by model name. The peer's rate is llama.cpp's own decode timer
// (what llama-bench and ../shared/docs/TARGETS.md report) unless --wall picks its wall-clock rate
// (through node-llama-cpp, sampling included, as bench_engine measures trove). A ratio above 1 means
// trove is faster. Plain Node, no packages.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { parseArgs } from "node:util";

function fail(message) {
  process.stderr.write(`compare: ${message}\n` +
    "usage: node bench/peer/compare.mjs TROVE.json PEER.json [--wall]\n");
  process.exit(2);
}

let args;
try {
  args = parseArgs({ options: { wall: { type: "boolean", default: false } }, allowPositionals: true });
} catch (e) {
  fail(e.message);
}
if (args.positionals.length !== 2) fail("give bench_engine's JSON and bench_peer's JSON");

function load(path, engine) {
  let doc;
  try {
    doc = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    fail(`${path}: ${e.message}`);
  }
  if (doc.engine !== engine || !Array.isArray(doc.results)) {
    fail(`${path} is not ${engine === "trove" ? "bench_engine --json" : "bench_peer.mjs --json"} output ` +
      `(its "engine" is ${JSON.stringify(doc.engine)})`);
  }
  return doc;
}
const trove = load(args.positionals[0], "trove");
const peer = load(args.positionals[1], "llama.cpp");
const peerKind = args.values.wall ? "wall" : "timer";

// The rate columns (pp512, tg128, tg64@16384, pp@16384, ...) either file has.
const columns = [];
const isRate = (k) => /^(pp\d+|tg\d+|tg\d+@\d+|pp@\d+)$/.test(k);
for (const r of trove.results) for (const k of Object.keys(r)) if (isRate(k) && !columns.includes(k)) columns.push(k);
for (const r of peer.results) {
  for (const k of Object.keys({ ...r.wall, ...r[peerKind] })) if (isRate(k) && !columns.includes(k)) columns.push(k);
}
// llama-bench's order: prompt sizes, generation lengths, generation at depth, the prefill to depth.
const rank = (k) => {
  const [, kind, n, d] = /^(pp|tg)(\d*)(?:@(\d+))?$/.exec(k);
  return [kind === "pp" ? (n ? 0 : 3) : d ? 2 : 1, Number(d ?? 0), Number(n || 0)];
};
columns.sort((a, b) => {
  const [x, y] = [rank(a), rank(b)];
  return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
});

function peerRate(r, k) {
  const v = r[peerKind]?.[k];
  return v ?? r.wall?.[k] ?? null;  // pp@depth has only a wall-clock rate
}
const fmtRate = (v) => (v == null ? "—" : v >= 100 ? v.toFixed(0) : v.toFixed(1));
const fmtRatio = (a, b) => (a == null || b == null || b === 0 ? "—" : `**${(a / b).toFixed(2)}**`);

const peerLabel = `llama.cpp ${peer.backend} (${peer.via}, ${peerKind === "timer" ? "llama.cpp timer" : "wall"})`;
console.log(`llama.cpp ${peer.llama_cpp} on ${(peer.devices ?? []).join(", ") || peer.backend}, measured ${peer.measured_at}`);
console.log();
console.log(`| model | engine | ${columns.join(" | ")} |`);
console.log(`|---|---|${columns.map(() => "---").join("|")}|`);
let matched = 0;
for (const t of trove.results) {
  const p = peer.results.find((r) => basename(r.file ?? "") === basename(t.file ?? "") && t.file) ??
    peer.results.find((r) => r.model === t.model);
  console.log(`| ${t.model} | trove (Vulkan) | ${columns.map((k) => fmtRate(t[k])).join(" | ")} |`);
  if (!p) {
    console.log(`| ${t.model} | (no peer row for ${basename(t.file ?? t.model)}) |${columns.map(() => "").join(" |")} |`);
    continue;
  }
  ++matched;
  console.log(`| ${t.model} | ${peerLabel} | ${columns.map((k) => fmtRate(peerRate(p, k))).join(" | ")} |`);
  console.log(`| ${t.model} | trove / llama.cpp | ${columns.map((k) => fmtRatio(t[k], peerRate(p, k))).join(" | ")} |`);
}
if (matched === 0) {
  process.stderr.write("compare: no model of the trove file matches one of the peer file (by file name or model name)\n");
  process.exit(1);
}
