// The Pi package (integrations/pi) loaded with a stand-in for Pi's extension API: with a pulled model
// it starts the shared trove server, holds a lease named by this process's pid, registers the provider
// "trove" with the model's real context window, answers /trove, and releases the lease at shutdown;
// with no model it offers /trove-pull. Tiny synthetic model; the server is the one `trove launch` uses.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";

const work = fs.mkdtempSync(path.join(process.env.TROVE_BINARY_DIR ?? os.tmpdir(), "pi-package-test-"));
process.env.TROVE_EXE = path.resolve(process.env.TROVE_EXE ?? "build/trove");
process.env.TROVE_API_KEY = "";
process.env.TROVE_SERVE_ARGS = "--ctx 512 --parallel 2 --no-store";
process.env.TROVE_IDLE_EXIT = "2";

function fakePi() {
  const pi = { providers: {}, commands: {}, handlers: {}, notes: [] };
  pi.registerProvider = (name, cfg) => { pi.providers[name] = cfg; };
  pi.registerCommand = (name, opt) => { pi.commands[name] = opt; };
  pi.on = (ev, h) => { (pi.handlers[ev] ??= []).push(h); };
  pi.ctx = { ui: { notify: (text, level) => pi.notes.push({ text, level }), setStatus: () => {} } };
  return pi;
}
const load = async () => (await import(`../../integrations/pi/index.js?${Math.random()}`)).default;

// The server writes its pipeline cache under TROVE_HOME as it exits: wait for it to be gone before the
// work directory is removed, or the directory comes back.
async function serverGone(troveHome) {
  let pid = 0;
  try { pid = JSON.parse(fs.readFileSync(path.join(troveHome, "run", "server.json"), "utf8")).pid; } catch { return; }
  for (let i = 0; i < 300; i++) {
    try { process.kill(pid, 0); } catch { return; }
    await new Promise((r) => setTimeout(r, 100));
  }
}
after(async () => {
  // Leave no server behind: the lease is gone, so it stops after TROVE_IDLE_EXIT=2 s.
  await serverGone(path.join(work, "home"));
  fs.rmSync(work, { recursive: true, force: true });
});

describe("the Pi package", () => {
  it("with no model it offers /trove-pull and starts nothing", async () => {
    process.env.TROVE_HOME = path.join(work, "empty");
    const pi = fakePi();
    await (await load())(pi);
    assert.deepEqual(pi.providers, {});
    assert.ok(pi.commands["trove-pull"]);
    for (const h of pi.handlers.session_start ?? []) await h({}, pi.ctx);
    assert.match(pi.notes[0].text, /no model yet — run \/trove-pull/);
  });

  it("with a model it registers the provider, holds a lease while it runs and releases it", async () => {
    process.env.TROVE_HOME = path.join(work, "home");
    fs.mkdirSync(path.join(process.env.TROVE_HOME, "models"), { recursive: true });
    execFileSync(process.env.TROVE_EXE, ["mkmodel", "--preset", "tiny", "--type", "F32", "--seed", "5", "--out",
      path.join(process.env.TROVE_HOME, "models", "tiny.gguf")], { stdio: ["ignore", "ignore", "inherit"] });
    const pi = fakePi();
    await (await load())(pi);
    const p = pi.providers.trove;
    assert.ok(p, "the provider is registered");
    assert.equal(p.api, "openai-completions");
    assert.equal(p.models[0].id, "tiny");
    assert.equal(p.models[0].contextWindow, 512);
    const lease = path.join(process.env.TROVE_HOME, "run", "leases", String(process.pid));
    assert.ok(fs.existsSync(lease), "a lease named by this pid");
    const r = await fetch(`${p.baseUrl}/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", max_tokens: 1, messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(r.status, 200);
    await pi.commands.trove.handler("", pi.ctx);
    assert.match(pi.notes.at(-1).text, /trove up at http:\/\/127\.0\.0\.1:\d+, model tiny/);
    for (const h of pi.handlers.session_shutdown) h();
    assert.ok(!fs.existsSync(lease), "the lease is released at shutdown");
    // The server stops by itself once no lease is held (TROVE_IDLE_EXIT=2).
    let up = true;
    for (let i = 0; i < 100 && up; i++) {
      await new Promise((res) => setTimeout(res, 200));
      up = await fetch(`${p.baseUrl.replace(/\/v1$/, "")}/health`).then((x) => x.ok, () => false);
    }
    assert.ok(!up, "the server stopped after the last lease");
  });
});
