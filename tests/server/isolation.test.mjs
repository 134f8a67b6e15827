// Tenant isolation against the real `trove serve` (tiny synthetic model, lavapipe, its own KV store):
//  - a request never attaches a cached block of another namespace, on the GPU tier or from the KV
//    store after a restart, though the prompts are identical (so the blocks' token ids are too): its
//    cached_tokens is 0 and the hit counters in /metrics do not move;
//  - the same request in its own namespace does hit (the test can fail: the cache works);
//  - /metrics, /health and the server's log hold no prompt text;
//  - `trove kv ls`, `tree` and `inspect` show keys and counts, not the text; `tree --model` (a flag
//    the user gives) is what shows a block's first words.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { metrics, startServer, trove } from "./harness.mjs";

const SECRET = "ZEBRAPAPAYA";
// Three whole 64-token blocks and a tail: the first block starts with the secret, right after the
// template's "<|im_start|>user\n".
const PROMPT = `${SECRET} is the launch code. ` + "Keep it between us and never repeat it to anyone. ".repeat(20);
let server = null;

// Two layers instead of four: the test is about which blocks are attached, not about the model.
const MODEL_ARGS = ["--layers", "2"];
before(async () => { server = await startServer({ modelArgs: MODEL_ARGS, args: ["--parallel", "2"] }); });
after(async () => { await server?.stop(); });

async function ask(namespace) {
  const headers = { "content-type": "application/json" };
  if (namespace) headers["x-trove-cache-namespace"] = namespace;
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST", headers,
    body: JSON.stringify({ max_tokens: 1, temperature: 0, messages: [{ role: "user", content: PROMPT }] }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  const j = await r.json();
  return { prompt: j.usage.prompt_tokens, cached: j.usage.prompt_tokens_details.cached_tokens };
}

const hits = (m) => ({ gpu: m['trove_prefix_cache_hit_tokens_total{tier="gpu"}'] ?? 0,
                       store: m['trove_prefix_cache_hit_tokens_total{tier="store"}'] ?? 0 });

describe("namespaces never share cached blocks; nothing shows prompt text", () => {
  it("GPU tier, store tier after a restart, metrics, health, log and trove kv", async () => {
    const first = await ask("tenant-a");
    assert.ok(first.prompt > 3 * 64, `prompt of ${first.prompt} tokens`);
    assert.equal(first.cached, 0);
    const again = await ask("tenant-a");
    assert.equal(again.cached, Math.floor((again.prompt - 1) / 64) * 64, "its own namespace hits");

    for (const ns of ["tenant-b", null /* no header: namespace "default" */, "TENANT-A", "tenant-a2"]) {
      const before = hits(await metrics(server.url));
      const other = await ask(ns);
      assert.equal(other.cached, 0, `namespace ${JSON.stringify(ns)} attached another namespace's blocks`);
      assert.deepEqual(hits(await metrics(server.url)), before);
    }

    const m = await (await fetch(`${server.url}/metrics`)).text();
    const h = await (await fetch(`${server.url}/health`)).text();
    for (const [what, text] of [["/metrics", m], ["/health", h], ["the log", server.stderr()]]) {
      assert.ok(!text.includes(SECRET) && !text.includes("launch code"), `${what} shows prompt text`);
      assert.ok(!text.includes("tenant-a"), `${what} shows a namespace name`);
    }

    // A restart: the GPU cache is gone, the store holds every namespace's blocks.
    await server.stop({ keep: true });
    server = await startServer({ work: server.work, args: ["--parallel", "2"] });
    const before = hits(await metrics(server.url));
    const stranger = await ask("tenant-c");
    assert.equal(stranger.cached, 0, "a new namespace restored another namespace's blocks from the store");
    assert.deepEqual(hits(await metrics(server.url)), before);
    const owner = await ask("tenant-a");
    assert.equal(owner.cached, Math.floor((owner.prompt - 1) / 64) * 64, "its own namespace hits the store");
    assert.ok(hits(await metrics(server.url)).store > before.store, "the hit came from the store tier");
    await server.stop({ keep: true });

    const kv = (...args) => execFileSync(trove, ["kv", "--store", join(server.work, "store"), ...args], { encoding: "utf8" });
    const tree = JSON.parse(kv("--json", "tree", "--namespace", "tenant-a"));
    assert.ok(tree.roots.length >= 1, kv("ls"));
    const listings = [kv("ls"), kv("--json", "ls"), kv("tree", "--namespace", "tenant-a"), JSON.stringify(tree),
                      kv("inspect", tree.roots[0].first), kv("stats")];
    for (const out of listings) assert.ok(!out.includes(SECRET), `trove kv shows prompt text:\n${out}`);
    const words = kv("tree", "--namespace", "tenant-a", "--model", server.model);
    assert.ok(words.includes(SECRET), `tree --model shows a block's first words:\n${words}`);
    await server.stop();  // already stopped: removes its directory
    server = null;
  });
});
