// The peer: llama.cpp on the same GGUF files as bench_engine, through the npm package node-llama-cpp
// and its prebuilt Vulkan build, in llama-bench's terms — flash attention on, every layer on the GPU,
// best of --reps. A tool for measuring, not a test.
//
//   bench/peer/install.sh                       # once, on the dev machine (npm)
//   node bench/peer/bench_peer.mjs --model M.gguf [--model M2.gguf ...] [--reps 3] [--depth 16384]
//        [--gpu vulkan|auto|false] [--batch 512] [--threads N] [--json FILE]
//        [--pp 512,4096] [--tg 128] [--tg-depth 64]     (smaller ones for a smoke run on a CPU)
//
//   pp512, pp4096  the prompt's tokens decoded in batches of --batch (node-llama-cpp sets n_ubatch =
//                  n_batch; 512 is llama-bench's default n_ubatch) into an empty sequence, no logits
//   tg128          128 decode steps of one token each, logits and a greedy sample every step
//   tg64@D         the same, 64 steps, after D = --depth prompt tokens (0: skipped); the prefill to
//                  depth is timed once per rep and reported as pp@D
// ggml's Vulkan backend skips CPU devices (lavapipe) unless GGML_VK_VISIBLE_DEVICES names them; with
// no Vulkan GPU it runs on the CPU with 0 layers offloaded, which --gpu vulkan refuses.
// Each rate is measured two ways, best rep of each:
//   wall   wall-clock around the node-llama-cpp calls: what a caller sees, including the sampling and
//          the JavaScript between steps (trove's bench_engine also samples every decoded token);
//   timer  llama.cpp's own decode timer (llama_perf_context: llama_decode to llama_synchronize, per
//          decode call), which is what llama-bench reports and what ../shared/docs/TARGETS.md quotes.
// Tokens are random ids (speed does not depend on them; nor on the weights: the synthetic models
// from `trove mkmodel` stand in for the real files).
//
// node-llama-cpp is imported from bench/peer/node_modules only (bench/peer/install.sh here; on the GPU
// machine scripts/device-run.sh links the carried copy there), never from the repository root, whose
// copy is the CPU-only oracle build. --gpu vulkan (the default) fails rather than fall back to the CPU.
// compare.mjs reads --json beside bench_engine's --json and prints trove / llama.cpp ratios.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));

function usage(message) {
  process.stderr.write(`bench_peer: ${message}\n` +
    "usage: node bench/peer/bench_peer.mjs --model M.gguf [--model M2.gguf ...] [--reps N] [--depth D]\n" +
    "       [--gpu vulkan|auto|false] [--batch 512] [--threads N] [--json FILE] [--verbose]\n" +
    "       [--pp 512,4096] [--tg 128] [--tg-depth 64]\n");
  process.exit(2);
}

const { values: opt } = (() => {
  try {
    return parseArgs({
      options: {
        model: { type: "string", multiple: true },
        reps: { type: "string", default: "3" },
        depth: { type: "string", default: "16384" },
        gpu: { type: "string", default: "vulkan" },
        batch: { type: "string", default: "512" },
        threads: { type: "string" },
        pp: { type: "string", default: "512,4096" },
        tg: { type: "string", default: "128" },
        "tg-depth": { type: "string", default: "64" },
        json: { type: "string" },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    usage(e.message);
  }
})();
if (opt.help) usage("help");
const models = opt.model ?? [];
if (models.length === 0) usage("--model is required");
const reps = Number(opt.reps), depth = Number(opt.depth), batch = Number(opt.batch);
const ppSizes = opt.pp.split(",").filter(Boolean).map(Number), tgSteps = Number(opt.tg);
const tgDepthSteps = Number(opt["tg-depth"]), threads = opt.threads == null ? undefined : Number(opt.threads);
const positive = (v) => Number.isInteger(v) && v >= 1;
if (![reps, batch, tgSteps, tgDepthSteps, ...ppSizes].every(positive) || !(Number.isInteger(depth) && depth >= 0) ||
    (threads !== undefined && !positive(threads))) {
  usage("--reps, --batch, --threads, --pp sizes, --tg and --tg-depth must be integers ≥ 1, --depth ≥ 0");
}
if (!["vulkan", "auto", "false"].includes(opt.gpu)) usage(`--gpu '${opt.gpu}': use vulkan, auto or false`);
for (const m of models) if (!existsSync(m)) usage(`model file '${m}' does not exist (make one with trove mkmodel)`);

const nlcEntry = join(here, "node_modules", "node-llama-cpp", "dist", "index.js");
if (!existsSync(nlcEntry)) {
  process.stderr.write(`bench_peer: ${nlcEntry} is missing: run bench/peer/install.sh (dev machine), or ` +
    "source scripts/device-run.sh with the peer bundle carried (GPU machine)\n");
  process.exit(1);
}
const nlcVersion = JSON.parse(readFileSync(join(here, "node_modules", "node-llama-cpp", "package.json"))).version;
const { getLlama } = await import(pathToFileURL(nlcEntry).href);

// llama.cpp's log: the perf lines are kept for the timer, warnings and errors go to stderr, the rest
// only with --verbose.
const logLines = [];
function logger(level, message) {
  const text = String(message);
  if (/eval time =/.test(text)) logLines.push(text);
  if (opt.verbose || level === "error" || level === "fatal" || level === "warn") {
    process.stderr.write(text.endsWith("\n") ? text : text + "\n");
  }
}

let llama;
try {
  llama = await getLlama({
    gpu: opt.gpu === "false" ? false : opt.gpu,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    logLevel: "info",
    logger,
  });
} catch (e) {
  process.stderr.write(`bench_peer: node-llama-cpp could not load llama.cpp (--gpu ${opt.gpu}): ${e.message}\n`);
  process.exit(1);
}
const devices = await llama.getGpuDeviceNames();
const backend = llama.gpu === false ? "cpu" : llama.gpu;
process.stderr.write(`bench_peer: node-llama-cpp ${nlcVersion}, llama.cpp ${llama.llamaCppRelease.release}, ` +
  `backend ${backend}${devices.length ? `: ${devices.join(", ")}` : ""}\n`);

const now = () => performance.now() / 1000;
const tick = () => new Promise((r) => setTimeout(r, 5));

// Reads (and resets) llama.cpp's decode timer: {prompt: {s, tokens}, eval: {s, runs}}, from the lines
//   llama_perf_context_print: prompt eval time =  12.34 ms /   512 tokens (...)
//   llama_perf_context_print:        eval time =  56.78 ms /   128 runs   (...)
// The log arrives through a thread-safe callback, so it is polled for briefly.
async function takeTimer(context) {
  logLines.length = 0;
  await context.printTimings();
  let prompt = null, evals = null;
  for (let i = 0; i < 200 && !(prompt && evals); ++i) {
    for (const line of logLines) {
      const p = /prompt eval time =\s*([\d.]+) ms \/\s*(\d+) tokens/.exec(line);
      const e = /(?<!prompt )eval time =\s*([\d.]+) ms \/\s*(\d+) runs/.exec(line);
      if (p) prompt = { s: Number(p[1]) / 1000, tokens: Number(p[2]) };
      if (e) evals = { s: Number(e[1]) / 1000, runs: Number(e[2]) };
    }
    if (!(prompt && evals)) await tick();
  }
  return { prompt, eval: evals };
}

function randomTokens(n, vocab) {
  const out = new Array(n);
  for (let i = 0; i < n; ++i) out[i] = Math.floor(Math.random() * vocab);
  return out;
}

// One pp measurement: {wall, timer} in tok/s.
async function pp(context, seq, vocab, n) {
  await seq.clearHistory();
  await takeTimer(context);
  const tokens = randomTokens(n, vocab);
  const t0 = now();
  await seq.evaluateWithoutGeneratingNewTokens(tokens);
  const wall = n / (now() - t0);
  const t = await takeTimer(context);
  return { wall, timer: t.prompt && t.prompt.tokens === n ? n / t.prompt.s : null };
}

// One tg measurement after `prefix` prompt tokens: {wall, timer, ppPrefix}.
async function tg(context, seq, vocab, n, prefix) {
  await seq.clearHistory();
  let ppPrefix = null;
  if (prefix > 0) {
    const t0 = now();
    await seq.evaluateWithoutGeneratingNewTokens(randomTokens(prefix, vocab));
    ppPrefix = prefix / (now() - t0);
  }
  await takeTimer(context);
  const it = seq.evaluate(randomTokens(1, vocab), { temperature: 0, yieldEogToken: true });
  const t0 = now();
  for (let i = 0; i < n; ++i) {
    const r = await it.next();
    if (r.done) throw new Error(`generation stopped after ${i} of ${n} tokens`);
  }
  const wall = n / (now() - t0);
  await it.return();
  const t = await takeTimer(context);
  return { wall, timer: t.eval && t.eval.runs === n ? n / t.eval.s : null, ppPrefix };
}

function best(list, key) {
  const v = list.map((x) => x[key]).filter((x) => x != null);
  return v.length ? Math.max(...v) : null;
}

async function benchModel(path) {
  const model = await llama.loadModel({
    modelPath: path,
    gpuLayers: llama.gpu === false ? 0 : "max",
    defaultContextFlashAttention: true,
    ignoreMemorySafetyChecks: true,
  });
  const meta = model.fileInfo?.metadata?.general ?? {};
  const name = meta.name ?? basename(path);
  const vocab = model.tokens?.vocabularySize ?? 150000;
  if (opt.gpu === "vulkan" && model.gpuLayers === 0) {
    throw new Error(`${path}: llama.cpp offloaded no layer to a Vulkan GPU (devices: ` +
      `${devices.join(", ") || "none"}); check the Vulkan driver (scripts/device-run.sh prints trove's view; ` +
      "ggml skips CPU devices such as lavapipe unless GGML_VK_VISIBLE_DEVICES=0 names them), or pass " +
      "--gpu auto|false to measure the CPU");
  }
  const needed = Math.max(...ppSizes, tgSteps + 1, depth > 0 ? depth + tgDepthSteps + 1 : 0);
  const contextSize = Math.ceil(needed / 256) * 256;
  const context = await model.createContext({
    contextSize,
    batchSize: batch,
    sequences: 1,
    threads,
    flashAttention: true,
    performanceTracking: true,
    ignoreMemorySafetyChecks: true,
  });
  if (context.contextSize < needed) {
    throw new Error(`${path}: llama.cpp made a context of ${context.contextSize} tokens, ${needed} needed ` +
      "(a smaller --depth, or a model with a longer context: trove mkmodel --ctx)");
  }
  const seq = context.getSequence();
  const row = {
    model: name, file: path, size_bytes: Number(model.size), layers_on_gpu: model.gpuLayers,
    flash_attention: context.flashAttention, context: context.contextSize,
  };
  process.stderr.write(`bench_peer: ${name}: ${model.gpuLayers} layers on the GPU, context ${context.contextSize}\n`);

  await pp(context, seq, vocab, Math.min(ppSizes[0], batch));       // warm-up: pipelines, allocations
  await tg(context, seq, vocab, 2, 0);

  const wall = {}, timer = {}, all = {};
  const record = (key, runs) => {
    wall[key] = best(runs, "wall");
    timer[key] = best(runs, "timer");
    all[key] = runs.map((r) => ({ wall: r.wall, timer: r.timer }));
    process.stderr.write(`bench_peer: ${name}: ${key} ${wall[key].toFixed(1)} tok/s wall, ` +
      `${timer[key] == null ? "—" : timer[key].toFixed(1)} tok/s llama.cpp timer\n`);
  };
  for (const n of ppSizes) {
    const runs = [];
    for (let r = 0; r < reps; ++r) runs.push(await pp(context, seq, vocab, n));
    record(`pp${n}`, runs);
  }
  {
    const runs = [];
    for (let r = 0; r < reps; ++r) runs.push(await tg(context, seq, vocab, tgSteps, 0));
    record(`tg${tgSteps}`, runs);
  }
  if (depth > 0) {
    const runs = [];
    for (let r = 0; r < reps; ++r) runs.push(await tg(context, seq, vocab, tgDepthSteps, depth));
    record(`tg${tgDepthSteps}@${depth}`, runs);
    wall[`pp@${depth}`] = best(runs, "ppPrefix");
  }
  await context.dispose();
  await model.dispose();
  return { ...row, wall, timer, runs: all };
}

// The JSON is rewritten after each model, so a run cut short (a device call's time limit) keeps the
// models it finished.
const results = [];
function writeJson() {
  if (!opt.json) return;
  const doc = {
    engine: "llama.cpp",
    via: `node-llama-cpp ${nlcVersion}`,
    llama_cpp: llama.llamaCppRelease.release,
    backend,
    devices,
    batch,
    threads: threads ?? null,
    reps,
    depth,
    measured_at: new Date().toISOString(),
    results,
  };
  writeFileSync(opt.json, JSON.stringify(doc, null, 2) + "\n");
}
try {
  for (const m of models) {
    results.push(await benchModel(m));
    writeJson();
  }
} catch (e) {
  process.stderr.write(`bench_peer: ${e.message}\n`);
  process.exit(1);
}
await llama.dispose();

const keys = [...ppSizes.map((n) => `pp${n}`), `tg${tgSteps}`, ...(depth > 0 ? [`tg${tgDepthSteps}@${depth}`] : [])];
const fmtRate = (v) => (v == null ? "—" : v >= 100 ? v.toFixed(0) : v.toFixed(1));
const label = `llama.cpp ${backend} (node-llama-cpp ${nlcVersion})`;
console.log(`| model | engine | ${keys.join(" | ")} |`);
console.log(`|---|---|${keys.map(() => "---").join("|")}|`);
for (const r of results) {
  console.log(`| ${r.model} | ${label}, wall | ${keys.map((k) => fmtRate(r.wall[k])).join(" | ")} |`);
  console.log(`| ${r.model} | ${label}, llama.cpp timer | ${keys.map((k) => fmtRate(r.timer[k])).join(" | ")} |`);
}
for (const r of results) {
  if (depth > 0) console.log(`\n${r.model}: prefill to depth ${depth} ran at ${fmtRate(r.wall[`pp@${depth}`])} tok/s`);
}

if (opt.json) process.stderr.write(`bench_peer: wrote ${opt.json}\n`);
