// Command-line access to the llama.cpp oracle (tests/oracle/llama.mjs), for people and later issues.
//
//   node tests/oracle/llama_cli.mjs info     --model M [--load-seconds]
//   node tests/oracle/llama_cli.mjs tokenize --model M --text T [--special]
//   node tests/oracle/llama_cli.mjs probs    --model M (--tokens 1,2,3 | --text T [--special])
//                                            [--top 20] [--positions all|last|0,5,7] [--context N]
//
// Every command prints one JSON object on stdout (llama.cpp's logs go to stderr). `probs` prints, for
// each chosen position i, llama.cpp's top next-token probabilities after tokens[0..i]:
//   {"tokens": [...], "distributions": [{"position": i, "top": [[id, p], ...]}, ...]}
// Bad arguments exit with status 2 and a message naming the argument and what to pass instead.
import { existsSync } from "node:fs";
import { openModel } from "./llama.mjs";

const usage = `usage:
  node tests/oracle/llama_cli.mjs info     --model FILE.gguf
  node tests/oracle/llama_cli.mjs tokenize --model FILE.gguf --text TEXT [--special]
  node tests/oracle/llama_cli.mjs probs    --model FILE.gguf (--tokens 1,2,3 | --text TEXT [--special])
                                           [--top 20] [--positions all|last|0,5,7] [--context N]`;

function fail(message) {
  console.error(`llama_cli: ${message}\n${usage}`);
  process.exit(2);
}

function parseArgs(argv) {
  const flags = new Set(["--special"]);
  const valued = new Set(["--model", "--text", "--tokens", "--top", "--positions", "--context"]);
  const out = { command: argv[0] };
  for (let i = 1; i < argv.length; ++i) {
    const a = argv[i];
    if (flags.has(a)) out[a.slice(2)] = true;
    else if (valued.has(a)) {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      out[a.slice(2)] = argv[++i];
    } else fail(`unknown argument '${a}'`);
  }
  return out;
}

function parseInteger(name, text, min) {
  if (!/^-?\d+$/.test(text)) fail(`--${name} '${text}' is not an integer`);
  const v = Number(text);
  if (v < min) fail(`--${name} ${v} must be at least ${min}`);
  return v;
}

const args = parseArgs(process.argv.slice(2));
if (!["info", "tokenize", "probs"].includes(args.command)) {
  fail(args.command ? `unknown command '${args.command}'` : "missing command");
}
if (!args.model) fail("--model FILE.gguf is required");
if (!existsSync(args.model)) fail(`--model '${args.model}' does not exist`);

let tokens = null;
let top = 20, positionsSpec = "all", contextSize = 512;
if (args.command === "tokenize" && args.text === undefined) fail("tokenize needs --text TEXT");
if (args.command === "probs") {
  if ((args.tokens === undefined) === (args.text === undefined)) fail("probs needs exactly one of --tokens or --text");
  if (args.tokens !== undefined) {
    tokens = args.tokens.split(",").filter((s) => s.trim() !== "").map((s) => parseInteger("tokens", s.trim(), 0));
    if (tokens.length === 0) fail("--tokens is empty; pass comma-separated token ids like 1,2,3");
  }
  if (args.top !== undefined) top = parseInteger("top", args.top, 1);
  if (args.positions !== undefined) positionsSpec = args.positions;
  if (args.context !== undefined) contextSize = parseInteger("context", args.context, 8);
}

const t0 = performance.now();
const o = await openModel(args.model, { contextSize });
const loadSeconds = (performance.now() - t0) / 1000;
try {
  if (args.command === "info") {
    console.log(JSON.stringify({ model: args.model, ...o.info, loadSeconds: Number(loadSeconds.toFixed(3)) }, null, 2));
  } else if (args.command === "tokenize") {
    const ids = o.tokenize(args.text, { special: !!args.special });
    console.log(JSON.stringify({ tokens: ids, pieces: ids.map((id) => o.detokenize([id], { special: true })) }));
  } else {
    if (tokens === null) tokens = o.tokenize(args.text, { special: !!args.special });
    if (tokens.length === 0) fail("--text gave no tokens");
    if (tokens.length > contextSize) fail(`${tokens.length} tokens exceed --context ${contextSize}; pass a larger --context`);
    // llama.mjs's vocabSize can be null; the GGUF's token list length is the vocabulary.
    const vocab = o.info.vocabSize ?? o.model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length ?? null;
    const bad = vocab ? tokens.find((t) => t >= vocab) : undefined;
    if (bad !== undefined) fail(`--tokens: id ${bad} is outside the vocabulary (size ${vocab})`);
    let positions;
    if (positionsSpec === "all") positions = tokens.map((_, i) => i);
    else if (positionsSpec === "last") positions = [tokens.length - 1];
    else {
      positions = positionsSpec.split(",").map((s) => parseInteger("positions", s.trim(), 0));
      const out = positions.find((p) => p >= tokens.length);
      if (out !== undefined) fail(`--positions ${out} is past the last token (index ${tokens.length - 1})`);
    }
    const t1 = performance.now();
    let distributions;
    try {
      distributions = await o.nextTokenProbs(tokens, { positions, top });
    } catch (e) {
      console.error(`llama_cli: llama.cpp could not evaluate tokens ${tokens} (${e.message}); check the ids are ` +
                    `inside the model's vocabulary`);
      process.exit(1);
    }
    const evalSeconds = (performance.now() - t1) / 1000;
    console.log(JSON.stringify({ tokens, distributions, loadSeconds: Number(loadSeconds.toFixed(3)),
                                 evalSeconds: Number(evalSeconds.toFixed(3)) }));
  }
} finally {
  await o.close();
}
