// `trove launch` and `trove config` with a stand-in client (tests/clients/fake_client.mjs run through
// --program, with the settings of the `qwen` profile): the first launch starts `trove serve` in the
// background, a second one reuses it, each holds a lease while its client runs, the server stops
// --idle-exit seconds after the last one left, a server killed mid-session is restarted on the same
// URL by the launcher's watchdog, and no file in the user's HOME is written. Tiny synthetic model.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort } from "./free_port.mjs";
import { after, before, describe, it } from "node:test";

const trove = process.env.TROVE_EXE ?? "build/trove";
const work = fs.mkdtempSync(path.join(process.env.TROVE_BINARY_DIR ?? os.tmpdir(), "launch-test-"));
const home = path.join(work, "home");
const troveHome = path.join(work, "trove");
const env = { ...process.env, HOME: home, TROVE_HOME: troveHome, TROVE_API_KEY: "" };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const port = await freePort();
const url = `http://127.0.0.1:${port}`;

function launch(client, clientArgs, extra = []) {
  const r = spawnSync(trove, ["launch", client, "--port", String(port), "--idle-exit", "5", "--program", "node",
                              "--serve-args=--ctx 512 --parallel 2 --no-store", ...extra, "--",
                              "tests/clients/fake_client.mjs", ...clientArgs],
                      { env, encoding: "utf8", timeout: 240000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
async function up() {
  try { return (await fetch(`${url}/health`)).ok; } catch { return false; }
}

before(() => {
  fs.mkdirSync(home, { recursive: true });
  fs.mkdirSync(path.join(troveHome, "models"), { recursive: true });
  execFileSync(trove, ["mkmodel", "--preset", "tiny", "--type", "F32", "--seed", "5", "--out",
                       path.join(troveHome, "models", "tiny.gguf")], { stdio: ["ignore", "ignore", "inherit"] });
});
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
  await serverGone(troveHome);
  fs.rmSync(work, { recursive: true, force: true });
});

describe("trove launch", () => {
  it("starts a background server, a second launch reuses it, and it stops after the last client", async () => {
    let r = launch("qwen", []);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /starting trove serve on port \d+/);
    assert.match(r.err, new RegExp(`OPENAI_BASE_URL=${url}/v1`));
    assert.match(r.out, /fake client: status 200 model tiny tokens 2/);
    r = launch("qwen", []);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /using the trove server at/);
    assert.deepEqual(fs.readdirSync(path.join(troveHome, "run", "leases")), [], "leases are released");
    // --idle-exit 5: the server goes a few seconds after the last client.
    let gone = false;
    for (let i = 0; i < 100 && !gone; i++) { await sleep(200); gone = !(await up()); }
    assert.ok(gone, "the server is still up long after the last client left");
    assert.match(fs.readFileSync(path.join(troveHome, "run", "serve.log"), "utf8"), /no launched client for 5 s/);
    assert.deepEqual(fs.readdirSync(home), [], "nothing was written in HOME");
  });

  it("the watchdog restarts a server that died while the client runs, on the same URL", () => {
    const r = launch("qwen", ["--kill-server"]);
    assert.equal(r.code, 0, r.err + r.out);
    assert.match(r.out, /server killed/);
    assert.match(r.err, /stopped answering; starting it again/);
    assert.match(r.out, /fake client: status 200/);
  });

  it("the client's exit code is the launch's; a missing client says how to install it", () => {
    const r = spawnSync(trove, ["launch", "pi", "--port", String(port), "--idle-exit", "3",
                                "--serve-args=--ctx 512 --no-store"], { env: { ...env, PATH: "/nonexistent" }, encoding: "utf8" });
    assert.equal(r.status, 127, r.stderr);
    assert.match(r.stderr, /cannot run pi: .*npm install -g @mariozechner\/pi-coding-agent/);
    // Pi is pointed at trove's own agent directory: the user's ~/.pi is not touched.
    const models = JSON.parse(fs.readFileSync(path.join(troveHome, "clients", "pi", "models.json"), "utf8"));
    assert.equal(models.providers.trove.models[0].contextWindow, 512);
    assert.equal(models.providers.trove.api, "openai-completions");
    assert.ok(!fs.existsSync(path.join(home, ".pi")));
  });
});

describe("trove config", () => {
  it("prints each client's settings with the model's real context window", () => {
    const cfg = (c) => spawnSync(trove, ["config", c, "--url", "http://127.0.0.1:1"], { env, encoding: "utf8" });
    let r = cfg("codex");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /model_context_window=512|model_context_window=\d+/);
    assert.match(r.stdout, /wire_api=\\?"responses\\?"/);
    assert.match(r.stdout, /not running/);
    r = cfg("claude");
    assert.match(r.stdout, /export ANTHROPIC_BASE_URL=http:\/\/127\.0\.0\.1:1\n/);
    assert.match(r.stdout, /export ANTHROPIC_DEFAULT_HAIKU_MODEL=tiny/);
    r = cfg("opencode");
    assert.match(r.stdout, /"context": \d+/);
    r = cfg("nope");
    assert.equal(r.status, 1);
    assert.match(r.stderr, /unknown client "nope"; trove knows: pi, claude, codex, opencode, qwen/);
  });
});
