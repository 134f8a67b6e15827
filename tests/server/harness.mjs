// Shared by the server's SDK tests: writes a tiny synthetic model with `trove mkmodel`, starts ONE
// `trove serve` on a random loopback port for the whole test file, and stops it at the end.
// The tiny model decodes at about one step per second on lavapipe, but a step serves every active
// sequence at once: test files therefore run their requests concurrently and keep generated lengths
// to a few tokens.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const trove = process.env.TROVE_EXE ?? "build/trove";

// template: chat template file for the model; modelArgs: more `trove mkmodel` options; args: `trove
// serve` options. work: the directory of a server stopped with stop({ keep: true }) — the same model
// and the same TROVE_HOME (so the same KV store), as after a restart.
export async function startServer({ template = null, args = [], modelArgs = [], work = null } = {}) {
  work ??= mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), "server-test-"));
  const model = join(work, "tiny.gguf");
  if (!existsSync(model)) {
    const mk = ["mkmodel", "--preset", "tiny", "--type", "F32", "--seed", "5", "--out", model, ...modelArgs];
    if (template) mk.push("--template", template);
    execFileSync(trove, mk, { stdio: ["ignore", "ignore", "inherit"] });
  }
  const proc = spawn(trove, ["serve", "--model", model, "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    // TROVE_HOME: the default KV store lives under it, so each test file gets its own store.
    env: { ...process.env, TROVE_API_KEY: "", TROVE_HOME: work },
  });
  let stderr = "";
  proc.stderr.on("data", (d) => { stderr += d; });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`trove serve did not start in 60 s:\n${stderr}`)), 60000);
    proc.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`trove serve exited (${code}):\n${stderr}`)); });
  });
  return {
    url,
    work,
    model,
    stderr: () => stderr,
    // keep: leave the work directory (model, KV store) for a restart; returns the exit code.
    async stop({ keep = false } = {}) {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.on("exit", r));
        proc.kill("SIGTERM");
        let timer;  // cleared once the server exits: a pending 30 s timer keeps the test process alive
        await Promise.race([exited, new Promise((r) => { timer = setTimeout(r, 30000); })]);
        clearTimeout(timer);
        if (proc.exitCode === null) proc.kill("SIGKILL");
      }
      if (!keep) rmSync(work, { recursive: true, force: true });
      return proc.exitCode;
    },
  };
}

// Prometheus text → { "name{labels}": value }.
export async function metrics(url, headers = {}) {
  const text = await (await fetch(`${url}/metrics`, { headers })).text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

// What a forced tool call looks like in each model's format.
export const QWEN3_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>';
export const CODER_CALL =
  "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>";
export const WEATHER_ARGS = { city: "Paris", days: 2 };
export const WEATHER_SCHEMA = {
  type: "object",
  properties: { city: { type: "string" }, days: { type: "integer" } },
  required: ["city"],
};
