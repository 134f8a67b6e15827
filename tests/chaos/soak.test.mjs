// Overload and soak (issue 21, item 4): 64 concurrent agent loops against one `trove serve` (tiny model,
// --parallel 8, --max-queue 24) for TROVE_SOAK_SECONDS (40 here; 600 in the long run of
// docs/reliability.md). Each loop is an agent conversation: a shared system prompt (cached prefix), a
// task, then turns of a 2-token reply and a tool result appended, restarting when it grows past ~10
// blocks; 8 namespaces. Requests beyond --parallel + --max-queue get 503 with Retry-After; the loop
// waits that long and retries. What must hold: no request fails otherwise, the server never dies, RSS
// grows less than 64 MiB after the first 15 s, the KV pool holds no block once idle (no leaked
// block), the queue drains; reported: requests, 503s, client TTFT p50/p99, queue wait p50/p99 (from
// /metrics).
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { makeModel, metrics, serve, workDir } from "./chaos_harness.mjs";

const SECONDS = Number(process.env.TROVE_SOAK_SECONDS ?? 40);
const LOOPS = 64;
const work = workDir("chaos-soak");
after(() => { if (!process.env.TROVE_CHAOS_KEEP) rmSync(work, { recursive: true, force: true }); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SYSTEM = "You are a coding agent. Use the tools to read files, run tests and edit code; answer briefly. " +
  "Tools: read_file(path), run(cmd), edit(path, old, new). Never guess file contents; read them first. ";
const pct = (xs, p) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] : 0);

// p-quantile of a Prometheus histogram's cumulative buckets, interpolated linearly inside the bucket
// that reaches it (as Prometheus' histogram_quantile does).
function histQuantile(m, name, p) {
  const b = Object.entries(m).filter(([k]) => k.startsWith(`${name}_bucket{`))
    .map(([k, v]) => [k.includes('"+Inf"') ? Infinity : Number(k.match(/le="([^"]+)"/)[1]), v]).sort((a, b) => a[0] - b[0]);
  const total = m[`${name}_count`] ?? 0;
  let lo = 0, below = 0;
  for (const [le, n] of b) {
    if (n >= p * total && total > 0) {
      if (le === Infinity) return lo;
      return Number((lo + ((le - lo) * (p * total - below)) / Math.max(1, n - below)).toFixed(3));
    }
    lo = le;
    below = n;
  }
  return 0;
}

describe("overload and soak", () => {
  it(`${LOOPS} agent loops for ${SECONDS} s`, { timeout: (SECONDS + 300) * 1000 }, async () => {
    const model = makeModel(work);
    const s = await serve({ model, store: join(work, "store"),
                            args: ["--parallel", "8", "--max-queue", "24", "--max-batch-tokens", "1024"] });
    const stats = { requests: 0, overloaded: 0, missing_retry_after: 0, errors: 0, ttft: [], cached_tokens: 0, prompt_tokens: 0 };
    let stop = false, rssWarm = 0, rssMax = 0;
    const end = Date.now() + SECONDS * 1000;
    async function turn(ns, messages) {
      const t0 = Date.now();
      const r = await fetch(`${s.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-trove-cache-namespace": ns },
        body: JSON.stringify({ max_tokens: 2, temperature: 0, stream: true, stream_options: { include_usage: true }, messages }),
      });
      if (r.status === 503) {
        stats.overloaded += 1;
        const ra = Number(r.headers.get("retry-after"));
        if (!(ra > 0)) stats.missing_retry_after += 1;
        await r.text();
        await sleep(Math.min(ra || 1, 2) * 1000 * (0.5 + Math.random()));
        return null;
      }
      if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
      let text = "", first = 0, usage = null, buf = "";
      for await (const chunk of r.body) {
        buf += Buffer.from(chunk).toString();
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const d = ev.split("\n").find((l) => l.startsWith("data: "))?.slice(6);
          if (!d || d === "[DONE]") continue;
          const j = JSON.parse(d);
          const c = j.choices?.[0]?.delta?.content;
          if (c && !first) first = Date.now();
          if (c) text += c;
          if (j.usage) usage = j.usage;
        }
      }
      stats.requests += 1;
      stats.ttft.push((first || Date.now()) - t0);
      if (usage) {
        stats.prompt_tokens += usage.prompt_tokens;
        stats.cached_tokens += usage.prompt_tokens_details?.cached_tokens ?? 0;
      }
      return text;
    }
    const loops = [...Array(LOOPS).keys()].map(async (a) => {
      const ns = `agent-${a % 8}`;
      let messages = null;
      for (let t = 0; Date.now() < end; ++t) {
        if (!messages || messages.length > 9) {
          messages = [{ role: "system", content: SYSTEM }, { role: "user", content: `Task ${a}: fix the failing test in module ${a % 5}.` }];
        }
        try {
          const reply = await turn(ns, messages);
          if (reply === null) continue;
          messages.push({ role: "assistant", content: reply || "ok" },
                        { role: "user", content: `Tool result ${t}: tests/module_${a % 5}.py line ${t * 3}: AssertionError` });
        } catch (e) {
          stats.errors += 1;
          console.error(`loop ${a}: ${e.message}`);
          await sleep(500);
        }
      }
    });
    const sampler = (async () => {
      const t0 = Date.now();
      while (!stop) {
        const kib = s.rssKiB();
        if (!rssWarm && Date.now() - t0 > 15000) rssWarm = kib;
        rssMax = Math.max(rssMax, kib);
        await sleep(1000);
      }
    })();
    await Promise.all(loops);
    // Idle: the queue drains and the pool holds no block (cached prefixes are not held).
    let m = await metrics(s.url);
    for (let i = 0; i < 100 && (m.trove_queue_depth || m.trove_active_sequences || m.trove_kv_pool_blocks_used); ++i) {
      await sleep(100);
      m = await metrics(s.url);
    }
    stop = true;
    await sampler;
    const rssEnd = s.rssKiB();
    await s.kill("SIGTERM");
    const report = {
      seconds: SECONDS, loops: LOOPS, requests: stats.requests, overloaded_503: stats.overloaded, errors: stats.errors,
      prompt_tokens: stats.prompt_tokens, cached_tokens: stats.cached_tokens,
      ttft_ms_p50: pct(stats.ttft, 0.5), ttft_ms_p99: pct(stats.ttft, 0.99),
      queue_wait_s_p50: histQuantile(m, "trove_queue_wait_seconds", 0.5), queue_wait_s_p99: histQuantile(m, "trove_queue_wait_seconds", 0.99),
      server_ttft_s_p50: histQuantile(m, "trove_time_to_first_token_seconds", 0.5),
      server_ttft_s_p99: histQuantile(m, "trove_time_to_first_token_seconds", 0.99),
      rss_mib_warm: Math.round(rssWarm / 1024), rss_mib_max: Math.round(rssMax / 1024), rss_mib_end: Math.round(rssEnd / 1024),
      pool_used_idle: m.trove_kv_pool_blocks_used, queue_idle: m.trove_queue_depth, active_idle: m.trove_active_sequences,
      metrics_503: m['trove_requests_total{endpoint="/v1/chat/completions",status="503"}'] ?? 0,
    };
    console.log(`soak: ${JSON.stringify(report)}`);
    if (process.env.TROVE_CHAOS_REPORT) writeFileSync(process.env.TROVE_CHAOS_REPORT, JSON.stringify(report, null, 1));
    assert.equal(stats.errors, 0, "requests failed other than with 503");
    assert.equal(stats.missing_retry_after, 0, "a 503 without Retry-After");
    assert.ok(stats.requests > 0);
    assert.ok(stats.overloaded > 0, "64 loops never exceeded --parallel 8 + --max-queue 24: the overload path was not exercised");
    assert.equal(report.metrics_503, stats.overloaded, "/metrics counts every 503");
    assert.equal(report.pool_used_idle, 0, "KV pool blocks still held when idle (a leaked block)");
    assert.equal(report.queue_idle, 0);
    assert.equal(report.active_idle, 0);
    assert.ok(rssMax - rssWarm < 64 * 1024, `RSS grew by ${Math.round((rssMax - rssWarm) / 1024)} MiB after warm-up`);
  });
});
