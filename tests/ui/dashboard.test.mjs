// The dashboard (/ui) in headless Chromium against the real `trove serve` on a tiny synthetic model
// (lavapipe): requests that share a system prompt, then the page must show what they did — the
// sequences table (tokens by tier per request, a live decoding row), the prompt-tokens-by-tier chart
// (totals of the span) and the prefix tree of the namespace (one shared root, one branch per request)
// — with the expected numbers read from the DOM, no request to any other origin, and a first load
// under a second. A second server with an API key must refuse /ui and its endpoints without the key,
// and open them after the login form. Screenshots go to the build directory (ui-*.png).
//
// Chromium is Debian's (/usr/bin/chromium, installed by `make test`'s setup), driven by the npm
// package playwright-core; the machine may have no network, so the browser is told not to use it.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os, { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import { startServer } from "../server/harness.mjs";

const OUT = process.env.TROVE_BINARY_DIR ?? tmpdir();
const NS = "ui-test";
const KEY = "ui-secret-key";
const BLOCK = 64;

const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function browser() {
  if (!existsSync("/usr/bin/chromium")) {
    throw new Error("/usr/bin/chromium is missing: install Debian's chromium (scripts/setup.sh test, or apt-get install chromium)");
  }
  const profile = mkdtempSync(join(tmpdir(), "trove-ui-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium", headless: true, args: CHROMIUM_ARGS, viewport: { width: 1400, height: 1000 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// Polls `fn` (async, returns a value or throws) until it stops throwing; the last error otherwise.
async function eventually(fn, { timeout = 20000, interval = 200 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, interval));
    }
  }
}

// A system prompt of a few hundred tokens that every request shares, then a user message that
// differs from its first word on.
const SYSTEM = ("You are a careful coding agent. Read files before you change them, make the smallest change " +
  "that fixes the problem, run the tests after every change and report what you measured. " +
  "The repository is a C++20 inference server with a KV store on SSD; its documentation explains the " +
  "modules, the file formats and the HTTP API. Prefer the project's conventions over your habits. ").repeat(2);
const USER = (first) => `${first} — please look at the scheduler and tell me why the queue grows when the ` +
  "pool is full, which requests wait, and what the metrics say about it; list the files you would read " +
  "first, in order, and the one test you would add. Then check whether the store's write queue drops blocks " +
  "under load, how the eviction score is computed, and whether compaction ever runs while a restore reads " +
  "the same segment. Keep the answer short.";

async function chat(url, first, { stream = false, maxTokens = 2, signal, headers = {} } = {}) {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    signal,
    headers: { "content-type": "application/json", "x-trove-cache-namespace": NS, "user-agent": "ui-test-agent/1.0", ...headers },
    body: JSON.stringify({
      model: "tiny", max_tokens: maxTokens, temperature: 0, stream, ...(stream ? { stream_options: { include_usage: true } } : {}),
      messages: [{ role: "system", content: SYSTEM }, { role: "user", content: USER(first) }],
    }),
  });
  assert.equal(r.status, 200, await (stream ? "" : r.clone().text()));
  return stream ? r : r.json();
}

const cellValue = (page, id, col) =>
  page.$eval(`#sequences tr[data-id="${id}"] td[data-col="${col}"]`, (td) => Number(td.dataset.value));

describe("the dashboard in headless Chromium", { concurrency: true }, () => {
  let server, locked, b;
  // Both servers and the browser start at once (each takes seconds on 2 cores).
  before(async () => {
    [server, locked, b] = await Promise.all([
      startServer({ modelArgs: ["--layers", "1"], args: ["--parallel", "4", "--ctx", "1024"] }),
      startServer({ modelArgs: ["--layers", "1"], args: ["--api-key", KEY, "--ctx", "256"] }),
      browser(),
    ]);
  });
  after(async () => {
    await b?.close();
    await server?.stop();
    await locked?.stop();
  });

  it("shows the sequences, the prompt tokens by tier and the prefix tree of requests that share a prefix", async () => {
    // One request first: its blocks are cached when the others come, so they attach the shared part.
    const first = await chat(server.url, "Alpha");
    assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
    const rest = await Promise.all(["Bravo", "Charlie"].map((w) => chat(server.url, w)));
    const shared = rest[0].usage.prompt_tokens_details.cached_tokens;
    assert.ok(shared >= 2 * BLOCK, `the shared prefix is ${shared} tokens`);
    for (const r of rest) assert.equal(r.usage.prompt_tokens_details.cached_tokens, shared);
    const done = [first, ...rest];

    // The first load: from navigation start to the first complete render (the page stamps it), on
    // this cold server, must take under 1 s. Timing on a shared 2-core machine is noisy: the best of up
    // to three loads counts, and when the machine runs more than two runnable threads per core (load
    // average; other tests, other builds) the bound grows in proportion — Chromium's processes wait
    // for CPU like everything else (measured: 0.8 s at load 12, 1.0–1.3 s at load 17 on 2 cores).
    const slack = Math.max(1, os.loadavg()[0] / (2 * os.cpus().length));
    const limitMs = 1000 * slack;
    const loads = [];
    let page;
    const foreign = [];
    for (let i = 0; i < 3 && !(loads.length && Math.min(...loads) < limitMs); i++) {
      await page?.close();
      page = await b.context.newPage();
      page.on("request", (r) => { if (!r.url().startsWith(server.url) && !r.url().startsWith("data:")) foreign.push(r.url()); });
      const response = await page.goto(`${server.url}/ui`);
      assert.equal(response.status(), 200);
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      loads.push(Number(await page.$eval("body", (e) => e.dataset.readyMs)));
    }
    console.log(`# /ui loads (navigation start to first complete render): ${loads.join(", ")} ms; ` +
      `bound ${Math.round(limitMs)} ms (load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} cores)`);
    assert.ok(Math.min(...loads) < limitMs, `the page took ${loads.join(", ")} ms to load and show its data`);

    // The sequences table: one finished row per request, its numbers from the usage each reply gave.
    for (const r of done) {
      await eventually(async () => {
        assert.equal(await page.$eval(`#sequences tr[data-id="${r.id}"]`, (tr) => tr.dataset.state), "finished");
      });
      const cached = r.usage.prompt_tokens_details.cached_tokens;
      assert.equal(await cellValue(page, r.id, "prompt"), r.usage.prompt_tokens);
      assert.equal(await cellValue(page, r.id, "gpu"), cached);
      assert.equal(await cellValue(page, r.id, "store"), 0);
      assert.equal(await cellValue(page, r.id, "computed"), r.usage.prompt_tokens - cached);
      assert.equal(await cellValue(page, r.id, "generated"), r.usage.completion_tokens);
      assert.match(await page.$eval(`#sequences tr[data-id="${r.id}"] td[data-col="client"]`, (td) => td.textContent), /ui-test-agent\/1\.0/);
      assert.equal(await page.$eval(`#sequences tr[data-id="${r.id}"] td[data-col="namespace"]`, (td) => td.textContent), NS);
    }

    // A live row: a streamed request shows up decoding while it generates (pushed by the events).
    const abort = new AbortController();
    const streamed = await chat(server.url, "Delta", { stream: true, maxTokens: 200, signal: abort.signal });
    const reader = streamed.body.getReader();
    let text = "";
    while (!text.includes("chatcmpl-")) text += new TextDecoder().decode((await reader.read()).value);
    const liveId = text.match(/"id":"(chatcmpl-[^"]+)"/)[1];
    await eventually(async () => {
      assert.equal(await page.$eval(`#sequences tr[data-id="${liveId}"]`, (tr) => tr.dataset.state), "decoding");
      assert.ok((await cellValue(page, liveId, "generated")) >= 1);
    });
    const liveCached = await cellValue(page, liveId, "gpu");
    const livePrompt = await cellValue(page, liveId, "prompt");
    assert.equal(liveCached, shared);
    await page.screenshot({ path: join(OUT, "ui-dashboard-live.png") });
    abort.abort();
    await eventually(async () => {
      assert.equal(await page.$eval(`#sequences tr[data-id="${liveId}"] td[data-col="state"]`, (td) => td.textContent), "cancelled");
    });

    // The tier chart's totals over its span: GPU = every cached token, computed = every other prompt token.
    const expectGpu = done.reduce((a, r) => a + r.usage.prompt_tokens_details.cached_tokens, 0) + liveCached;
    const expectComputed = done.reduce((a, r) => a + r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens, 0) +
      (livePrompt - liveCached);
    await eventually(async () => {
      const tiers = await page.$$eval("#hit-summary [data-tier]", (els) => Object.fromEntries(els.map((e) => [e.dataset.tier, Number(e.dataset.tokens)])));
      assert.deepEqual(tiers, { gpu: expectGpu, store: 0, computed: expectComputed });
    });
    const gpuShare = (100 * expectGpu) / (expectGpu + expectComputed);
    assert.equal(await page.$eval("#hit-summary [data-tier='gpu'] b", (e) => e.textContent), `${gpuShare.toFixed(1)}%`);
    assert.ok(await page.$$eval("#chart-hits rect.f-gpu", (r) => r.length) > 0, "GPU bars are drawn");
    assert.ok(await page.$$eval("#chart-hits rect.f-computed", (r) => r.length) > 0, "computed bars are drawn");

    // The prefix tree of the namespace: one root of the shared blocks, one branch per request, each as
    // long as the full blocks of its KV (prompt + generated tokens but the last, which is never fed).
    await page.selectOption("#tree-namespace", NS);
    const kvBlocks = (r) => Math.floor((r.prompt + r.generated - 1) / BLOCK) * BLOCK;
    const branches = [...done.map((r) => ({ prompt: r.usage.prompt_tokens, generated: r.usage.completion_tokens })),
      { prompt: livePrompt, generated: await cellValue(page, liveId, "generated") }];
    const expectBranchTokens = branches.map((r) => kvBlocks(r) - shared).filter((t) => t > 0).sort((a, b) => a - b);
    assert.ok(expectBranchTokens.length >= 3, `requests with a full block past the shared prefix: ${expectBranchTokens}`);
    const tree = await eventually(async () => {
      const nodes = await page.$$eval("#tree-svg g.node", (gs) => gs.map((g) => ({ ...g.dataset })));
      const roots = nodes.filter((n) => n.level === "0");
      assert.equal(roots.length, 1, JSON.stringify(nodes));
      assert.equal(Number(roots[0].tokens), shared);
      assert.equal(Number(roots[0].branches), expectBranchTokens.length);
      assert.equal(Number(roots[0].leaves), expectBranchTokens.length);
      const kids = nodes.filter((n) => n.level === "1").map((n) => Number(n.tokens)).sort((a, b) => a - b);
      assert.deepEqual(kids, expectBranchTokens);
      for (const n of nodes.filter((n) => n.level === "1")) assert.equal(Number(n.start), shared);
      return nodes;
    });
    assert.match(await page.textContent("#tree-summary"), new RegExp(`namespace "${NS}": ${shared / BLOCK + expectBranchTokens.reduce((a, t) => a + t, 0) / BLOCK} blocks`));
    // Zooming into the root's first branch leaves that branch alone in the picture.
    const branch = tree.find((n) => n.level === "1");
    await page.click(`#tree-svg g.node[data-first="${branch.first}"]`);
    assert.equal(await page.$$eval("#tree-svg g.node", (gs) => gs.length), 1);
    await page.click("#tree-crumbs a");

    // The "drafts accepted" card shows what /v1/trove/status says about speculation: none here (the
    // server's default is off on lavapipe, and the synthetic model's text gives prompt lookup nothing
    // to copy) and no draft model.
    const sp = (await (await fetch(`${server.url}/v1/trove/status?series=0`)).json()).speculative;
    assert.equal(sp.draft_model, false);
    assert.equal(sp.auto_draft_tokens, -1);
    const rate = (m) => (m.drafted ? `${((100 * m.accepted) / m.drafted).toFixed(m.accepted === m.drafted ? 0 : 1)}% of ${m.drafted}` : "none");
    await eventually(async () => {
      assert.equal(await page.$eval("#card-spec", (e) => e.dataset.drafted), String(sp.lookup.drafted + sp.draft.drafted));
      assert.equal(await page.$eval("#card-spec", (e) => e.dataset.accepted), String(sp.lookup.accepted + sp.draft.accepted));
      assert.equal(await page.textContent("#card-spec .s"), `lookup ${rate(sp.lookup)} · draft model ${rate(sp.draft)} · no draft model`);
    });

    // Store health: the namespace is listed, nothing is corrupt.
    await eventually(async () => {
      assert.ok(await page.$(`#store-namespaces tr[data-namespace="${NS}"]`));
    });
    assert.equal(await page.$eval("#store-health [data-key='corrupt blocks'] span:last-child", (e) => e.textContent), "0");

    assert.deepEqual(foreign, [], "the page fetched nothing from another origin");
    await page.screenshot({ path: join(OUT, "ui-dashboard.png"), fullPage: true });
    await page.close();
  });

  describe("with an API key", () => {
    it("refuses /ui and its endpoints without the key and opens them after the login form", async () => {
      for (const path of ["/ui", "/ui/dashboard.js", "/ui/dashboard.css", "/v1/trove/status", "/v1/trove/tree?namespace=x", "/v1/trove/events"]) {
        const r = await fetch(`${locked.url}${path}`);
        assert.equal(r.status, 401, path);
        const body = await r.text();
        assert.ok(!body.includes("dashboard.js") || path !== "/ui", "the login page does not load the dashboard");
      }
      const withKey = await fetch(`${locked.url}/v1/trove/status`, { headers: { authorization: `Bearer ${KEY}` } });
      assert.equal(withKey.status, 200);
      assert.equal((await withKey.json()).server.auth, true);

      const page = await b.context.newPage();
      const first = await page.goto(`${locked.url}/ui`);
      assert.equal(first.status(), 401);
      assert.equal(await page.$("#sequences"), null, "no dashboard before the login");
      await page.fill("#key", "wrong-key");
      await Promise.all([page.waitForLoadState(), page.click("#login")]);
      assert.match(await page.textContent("body"), /not the server's API key/);
      assert.equal(await page.$("#sequences"), null);
      await page.fill("#key", KEY);
      await Promise.all([page.waitForURL(`${locked.url}/ui`), page.click("#login")]);
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      assert.ok(await page.$("#sequences tbody"));
      await eventually(async () => assert.equal(await page.textContent("#live"), "live"));
      await page.screenshot({ path: join(OUT, "ui-dashboard-login.png") });
      await page.close();
    });
  });
});
