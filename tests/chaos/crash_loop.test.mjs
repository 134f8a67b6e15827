// Crash under load (issue 21, item 1): `trove serve` (tiny model, its own KV store) with 16 concurrent
// SDK clients — OpenAI and Anthropic, streamed and not, 4 namespaces — is SIGKILLed, restarted, and
// killed again, TROVE_CHAOS_CYCLES times (3 here, one per aim, to stay inside CI's time budget; the
// long run in docs/reliability.md uses 50). Kill moments rotate through three aims, each once at least
// one request of the cycle is acknowledged durable: mid-eviction/compaction (the server runs with a
// 300 KiB --store-size, ~4 blocks, so its writer evicts and compacts after every batch; the kill comes
// when trove_store_evictions_total moves), mid-prefill (0–1.5 s later, while the clients' next
// requests run) and mid-write-behind (when /metrics shows blocks queued that the writer has not
// finished). An aim that does not come within 5 s kills anyway; the summary counts the aimed kills.
// After each kill:
//  - `trove kv verify` is clean (no block fails its checksum);
//  - chaos_logits: a random stored chain restored from the store gives the logits of a cold recompute;
//  - the restarted server answers, and every request acknowledged durable before the kill (Acks in
//    chaos_harness.mjs) is a full cache hit (cycles with a --store-size are not checked: eviction may
//    rightly remove their blocks).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { setMaxListeners } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Acks, KINDS, ask, cacheable, chaosTool, makeModel, metrics, serve, trove, workDir } from "./chaos_harness.mjs";

const CYCLES = Number(process.env.TROVE_CHAOS_CYCLES ?? 3);
const CLIENTS = 16;
// Eviction first: its acknowledged requests are not checked, and the cycle after it needs no extra
// start of a server without --store-size to check them.
const MODES = ["eviction", "prefill", "write-behind"];
const work = workDir("chaos-crash");
const store = join(work, "store");
after(() => { if (!process.env.TROVE_CHAOS_KEEP) rmSync(work, { recursive: true, force: true }); });

const TENANTS = ["alpha", "bravo", "charlie", "delta"];
// A tenant's shared text and a client's own question: prompts of one whole block and a tail (~90
// tokens: every step on lavapipe counts), the first block shared by the clients of a tenant.
const prompt = (client, variant) =>
  `Project ${TENANTS[client % 4]} handbook: every service logs to stdout, every change needs a review, ` +
  "deploys happen on weekdays only and roll back automatically when the error rate doubles. ".repeat(2) +
  `Question ${client}.${variant}: which rule applies to change number ${variant * 7 + client}?`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Asks the acknowledged requests again, 8 at a time: a check, not a load test (60-90 requests at once,
// on the 2-core dev machine busy with other tests, failed with "Connection error" — the socket closed,
// UND_ERR_SOCKET — before their answers could be checked).
async function checkAcked(url, acked) {
  const results = [];
  for (let i = 0; i < acked.length; i += 8) {
    results.push(...await Promise.all(acked.slice(i, i + 8).map((a) =>
      ask(url, { kind: "openai", namespace: a.namespace, content: a.content, maxTokens: 1 }))));
  }
  let lost = 0;
  results.forEach((r, i) => {
    if (r.cached !== cacheable(r.prompt)) {
      lost += 1;
      console.error(`acknowledged request lost: namespace ${acked[i].namespace}, ${r.cached} of ${cacheable(r.prompt)} tokens cached`);
    }
  });
  return lost;
}

describe("crash under load", () => {
  it(`${CYCLES} SIGKILLs of trove serve under ${CLIENTS} SDK clients`, { timeout: 600000 + CYCLES * 60000 }, async () => {
    const t0 = Date.now();
    const model = makeModel(work);
    const sum = { cycles: 0, kills: {}, aimed: 0, requests: 0, errors_before_kill: 0, acked_checked: 0, lost: 0,
                  corrupt: 0, logit_samples: 0, logit_blocks: 0, logit_max_diff: 0, blocks_at_end: 0, ms: {} };
    let toCheck = [];
    // Every client's request in one step: lavapipe's steps are slow, their count is what costs.
    const plainArgs = ["--parallel", "16", "--max-batch-tokens", "2048", "--max-queue", "64"];
    for (let cycle = 0; cycle < CYCLES; ++cycle) {
      const mode = MODES[cycle % MODES.length];
      const args = mode === "eviction" ? [...plainArgs, "--store-size", "300K"] : plainArgs;
      if (toCheck.length && mode === "eviction") {
        const plain = await serve({ model, store, args: plainArgs });
        sum.lost += await checkAcked(plain.url, toCheck);
        await plain.kill();
      }
      let tp = Date.now();
      const phase = (name) => { sum.ms[name] = (sum.ms[name] ?? 0) + Date.now() - tp; tp = Date.now(); };
      const s = await serve({ model, store, args });
      phase("start");
      if (toCheck.length && mode !== "eviction") sum.lost += await checkAcked(s.url, toCheck);
      phase("check");
      sum.acked_checked += toCheck.length;
      toCheck = [];

      const acks = new Acks();
      let killed = false;
      const abort = new AbortController();
      setMaxListeners(CLIENTS * 2, abort.signal);
      // What each client is doing, for the report of clients an SDK leaves hanging after the kill.
      const doing = Array(CLIENTS).fill("starting");
      const clients = [...Array(CLIENTS).keys()].map(async (c) => {
        for (let v = 0; !killed; ++v) {
          const req = { namespace: `tenant-${TENANTS[c % 4]}`, content: prompt(c, (v + cycle) % 3) };
          try {
            // One token: it comes from the prefill's last step, so a request is one step.
            doing[c] = `${KINDS[(c + v) % 4]} request ${v}`;
            await ask(s.url, { ...req, kind: KINDS[(c + v) % 4], maxTokens: 1, signal: abort.signal });
            sum.requests += 1;
            doing[c] = `metrics after request ${v}`;
            if (!killed) await acks.responded(s.url, req);
          } catch (e) {
            if (killed) break;
            sum.errors_before_kill += 1;
            console.error(`cycle ${cycle} client ${c}: ${e.message}`);
            await sleep(200);
          }
        }
        doing[c] = "done";
      });
      // Aim the kill.
      // First at least one acknowledged request (so every checked cycle checks something), then the aim.
      const base = await metrics(s.url);
      for (const first = Date.now(); mode !== "eviction" && !acks.acked.length && Date.now() < first + 30000;) {
        await acks.poll(s.url);
        await sleep(50);
      }
      let aimed = false;
      const start = Date.now();
      const deadline = start + (mode === "prefill" ? Math.random() * 1500 : 5000);
      while (Date.now() < deadline) {
        const m = await metrics(s.url).catch(() => null);
        if (m && mode === "write-behind" && m.trove_store_write_enqueued_total > m.trove_store_write_processed_total) { aimed = true; break; }
        if (m && mode === "eviction" && m.trove_store_evictions_total > base.trove_store_evictions_total) { aimed = true; break; }
        if (mode !== "prefill") await acks.poll(s.url).catch(() => {});
        await sleep(mode === "prefill" ? 100 : 15);
      }
      if (mode === "prefill") aimed = (await metrics(s.url)).trove_active_sequences > 0;
      await acks.poll(s.url).catch(() => {});
      killed = true;
      await s.kill("SIGKILL");
      abort.abort();
      // Every client's promise settles once its request fails on the dead socket or the abort — except
      // that CI once saw one stay pending with nothing left to wake it (node:test: "Promise resolution
      // is still pending but the event loop has already resolved"): an SDK promise that neither the
      // abort nor the closed socket settles. The server is dead by now, so such a client says nothing
      // about trove: wait for the clients at most 30 s (a timer also keeps the event loop alive), then
      // name the ones still pending and go on with the checks of the store.
      let timer;
      const waited = new Promise((r) => { timer = setTimeout(r, 30000); });
      await Promise.race([Promise.all(clients), waited]);
      clearTimeout(timer);
      const hanging = doing.map((d, c) => d === "done" ? null : `client ${c}: ${d}`).filter(Boolean);
      if (hanging.length) {
        sum.clients_left_pending = (sum.clients_left_pending ?? 0) + hanging.length;
        console.error(`cycle ${cycle}: ${hanging.length} client(s) still pending 30 s after the kill and the abort:\n  ${hanging.join("\n  ")}`);
      }
      phase("load");
      sum.cycles += 1;
      sum.kills[mode] = (sum.kills[mode] ?? 0) + 1;
      sum.aimed += aimed ? 1 : 0;
      assert.equal(acks.bad, null, `cycle ${cycle}: ${acks.bad}`);
      // Distinct acknowledged requests; eviction cycles are not checked (see the header).
      const seen = new Set();
      if (mode !== "eviction") {
        toCheck = acks.acked.filter((a) => !seen.has(a.namespace + a.content) && seen.add(a.namespace + a.content));
      }

      // The store after the kill: every block verifies, restored logits equal cold ones.
      try {
        execFileSync(trove, ["kv", "--store", store, "verify"], { encoding: "utf8" });
      } catch (e) {
        sum.corrupt += 1;
        assert.fail(`cycle ${cycle} (${mode}): trove kv verify failed after the kill:\n${e.stdout}${e.stderr}`);
      }
      phase("verify");
      const lg = JSON.parse(execFileSync(chaosTool("chaos_logits"),
        ["--model", model, "--store", store, "--samples", "1", "--seed", String(cycle)], { encoding: "utf8" }));
      sum.logit_samples += lg.samples;
      sum.logit_blocks += lg.blocks;
      sum.logit_max_diff = Math.max(sum.logit_max_diff, lg.max_diff);
      assert.equal(lg.failures, 0, JSON.stringify(lg));
      phase("logits");
    }
    // The last cycle's acknowledged requests, on a final restart; the server answers.
    const s = await serve({ model, store, args: plainArgs });
    sum.lost += await checkAcked(s.url, toCheck);
    sum.acked_checked += toCheck.length;
    sum.blocks_at_end = (await metrics(s.url)).trove_store_blocks;
    await s.kill("SIGTERM");
    sum.seconds = Math.round((Date.now() - t0) / 1000);
    console.log(`crash loop: ${JSON.stringify(sum)}`);
    if (process.env.TROVE_CHAOS_REPORT) writeFileSync(process.env.TROVE_CHAOS_REPORT, JSON.stringify(sum, null, 1));
    assert.equal(sum.lost, 0, "acknowledged requests lost");
    assert.equal(sum.errors_before_kill, 0, "requests failed while the server ran");
    assert.ok(sum.acked_checked > 0, "no request was acknowledged durable: the check proved nothing");
    assert.ok(sum.logit_samples > 0, "no stored chain was compared with a cold recompute");
  });
});
