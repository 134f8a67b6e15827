// By hand: does llama.cpp load this GGUF and run it? Prints llama.cpp's view of the model, the time to
// load it, and the top next token after a short prompt.
//   node tests/oracle/check_load.mjs MODEL.gguf
import { openModel } from "./llama.mjs";

const path = process.argv[2];
if (!path) {
  console.error("usage: node tests/oracle/check_load.mjs MODEL.gguf");
  process.exit(2);
}
const t0 = performance.now();
const o = await openModel(path, { contextSize: 64 });
const t1 = performance.now();
const ids = o.tokenize("def main():\n    print(");
const probs = await o.nextTokenProbs(ids, { positions: [ids.length - 1], top: 3 });
const t2 = performance.now();
console.log(JSON.stringify({ ...o.info, load_seconds: +((t1 - t0) / 1000).toFixed(1),
  eval_seconds: +((t2 - t1) / 1000).toFixed(1), prompt_tokens: ids.length, top_next: probs[0].top }, null, 1));
await o.close();
