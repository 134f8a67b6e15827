// llama.cpp (through node-llama-cpp's CPU build) as an oracle for trove's tests.
//
//   const o = await openModel(path);          // loads a GGUF with llama.cpp on the CPU
//   o.info                                    // llama.cpp's view: parameters, size, context, vocab
//   o.tokenize(text, {special})               // llama.cpp's token ids
//   await o.nextTokenProbs(ids, {positions, top})  // next-token probabilities at chosen positions
//   await o.logProbs(ids, targets)           // log p(targets[i] | ids[0..i]) for every i (perplexity)
//   await o.close()
//
// Nothing here knows trove's code: this is llama.cpp's answer, to compare trove's against.
import { getLlama } from "node-llama-cpp";

let llamaPromise = null;
export function llama() {
  if (!llamaPromise) llamaPromise = getLlama({ gpu: false, build: "never", logLevel: "error" });
  return llamaPromise;
}

// The `k` largest [id, p] of a Map, sorted by p descending (one pass; the vocabulary is 152k ids).
function topEntries(map, k) {
  const best = [];
  for (const e of map) {
    if (best.length === k && e[1] <= best[k - 1][1]) continue;
    let i = best.length < k ? best.length : k - 1;
    while (i > 0 && best[i - 1][1] < e[1]) i--;
    best.splice(i, 0, e);
    if (best.length > k) best.pop();
  }
  return best;
}

export async function openModel(path, { contextSize = 512 } = {}) {
  const l = await llama();
  const model = await l.loadModel({ modelPath: path, gpuLayers: 0 });
  let context = null;
  const info = {
    parameters: Number(model.fileInsights.totalParameters ?? NaN),
    size: Number(model.size),
    trainContextSize: model.trainContextSize,
    vocabSize: model.tokens?.vocabularySize ?? null,
    description: model.typeDescription,
    fileType: model.fileInfo?.metadata?.general?.file_type ?? null,
    architecture: model.fileInfo?.metadata?.general?.architecture ?? null,
  };
  return {
    model,
    info,
    tokenize(text, { special = false } = {}) {
      return Array.from(model.tokenize(text, special));
    },
    detokenize(ids, { special = false } = {}) {
      return model.detokenize(ids, special);
    },
    // Next-token probability distributions after each of `positions` (indices into ids); each entry
    // {position, top: [[id, p], ...] sorted by p descending}.
    async nextTokenProbs(ids, { positions = null, top = 10 } = {}) {
      if (!context) context = await model.createContext({ contextSize, batchSize: contextSize, sequences: 1 });
      const seq = context.getSequence();
      const want = new Set(positions ?? ids.map((_, i) => i));
      // The sampler keeps the `top` most likely tokens (topK; temperature 1, no top-p / min-p cut), so
      // each position returns `top` probabilities instead of a Map of the whole 152k vocabulary, which
      // took ~120 ms a position to build. They are llama.cpp's probabilities of those tokens over the
      // whole vocabulary, as before: on the tiny F16 model every position's top 5 equalled the full
      // Map's exactly, and engine_oracle's printed maxima did not change.
      const next = { probabilities: true, options: { topK: top, topP: 1, minP: 0, temperature: 1 } };
      const input = ids.map((id, i) => (want.has(i) ? [id, { generateNext: next }] : id));
      const res = await seq.controlledEvaluate(input);
      const out = [];
      res.forEach((r, i) => {
        if (!r || !r.next || !r.next.probabilities) return;
        const entries = topEntries(r.next.probabilities, top);
        out.push({ position: i, top: entries });
      });
      await seq.clearHistory();
      seq.dispose();
      return out;
    },
    // Natural-log probability of targets[i] after ids[0..i], for every i, from an empty sequence (one
    // perplexity window: targets = ids shifted by one). Evaluated in pieces of `piece` tokens, because
    // each position's distribution comes back as a Map of the whole vocabulary (~6 MB at 152k ids).
    async logProbs(ids, targets, { piece = 32 } = {}) {
      if (targets.length !== ids.length) throw new Error(`logProbs: ${ids.length} ids but ${targets.length} targets`);
      if (!context) context = await model.createContext({ contextSize, batchSize: contextSize, sequences: 1 });
      const seq = context.getSequence();
      const out = [];
      for (let at = 0; at < ids.length; at += piece) {
        const part = ids.slice(at, at + piece).map((id) => [id, { generateNext: { probabilities: true } }]);
        const res = await seq.controlledEvaluate(part);
        res.forEach((r, j) => {
          const p = r?.next?.probabilities?.get(targets[at + j]);
          out.push(p > 0 ? Math.log(p) : -Infinity);
        });
      }
      await seq.clearHistory();
      seq.dispose();
      return out;
    },
    async close() {
      if (context) await context.dispose();
      await model.dispose();
    },
  };
}
