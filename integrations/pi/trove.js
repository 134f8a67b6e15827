// The trove side of the Pi package, free of Pi's API so it can be tested on its own: find the trove
// binary, list pulled models, start or find the shared server (`trove launch --server-only`), hold a
// lease while this Pi process lives, and describe the served model as a Pi provider.
import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export function troveBinary(env = process.env) {
  return env.TROVE_EXE || "trove";
}

// `trove models --json`: [{name, path, bytes, pulled, repo?, quant?}]
export async function listModels(env = process.env) {
  const { stdout } = await run(troveBinary(env), ["models", "--json"], { env });
  return JSON.parse(stdout);
}

// Finds or starts the shared server; returns {url, model, context_window, max_output_tokens, reasoning,
// leases, log}. Slow the first time (the model loads).
// TROVE_SERVE_ARGS: more `trove serve` options for a server started here (e.g. "--ctx 16384").
// The lease for this process (the file named by its pid) is taken by trove launch itself, before a
// server it starts could see an empty lease directory.
export async function ensureServer(env = process.env, serveArgs = env.TROVE_SERVE_ARGS || "") {
  const args = ["launch", "--server-only", "--lease-pid", String(process.pid)];
  if (serveArgs) args.push(`--serve-args=${serveArgs}`);
  if (env.TROVE_IDLE_EXIT) args.push("--idle-exit", env.TROVE_IDLE_EXIT);  // seconds after the last lease
  const { stdout } = await run(troveBinary(env), args, { env, timeout: 10 * 60 * 1000, maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split("\n").pop());
}

// A lease is a file named after a live process's pid in the server's lease directory: the server
// stops some minutes after the last one is gone (or its process died). Returns a release function.
export function holdLease(leasesDir, pid = process.pid) {
  fs.mkdirSync(leasesDir, { recursive: true });
  const file = path.join(leasesDir, String(pid));
  fs.writeFileSync(file, "pi\n");  // already there when trove launch took it for us; harmless again
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    try { fs.unlinkSync(file); } catch { /* already gone */ }
  };
  process.once("exit", release);
  return release;
}

// The Pi provider config (the models.json shape) for the served model.
export function providerConfig(server, apiKey = process.env.TROVE_API_KEY || "trove") {
  return {
    baseUrl: `${server.url}/v1`,
    api: "openai-completions",
    apiKey,
    models: [{
      id: server.model,
      name: `${server.model} (trove)`,
      reasoning: Boolean(server.reasoning),
      input: ["text"],
      cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
      contextWindow: server.context_window,
      maxTokens: Math.min(server.max_output_tokens, server.context_window),
    }],
  };
}

// `trove pull NAME`, its progress lines passed to onLine.
export function pull(name, onLine, env = process.env) {
  return new Promise((resolve, reject) => {
    const p = spawn(troveBinary(env), ["pull", ...(name ? [name] : [])], { env });
    const feed = (d) => String(d).split(/\r|\n/).filter(Boolean).forEach(onLine);
    p.stdout.on("data", feed);
    p.stderr.on("data", feed);
    p.on("error", reject);
    p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`trove pull exited with ${code}`))));
  });
}

// The server's state for /trove: health, the /metrics lines that matter, the log's tail.
export async function status(server) {
  const out = { url: server.url, model: server.model, healthy: false, metrics: {}, log: "" };
  try {
    out.healthy = (await fetch(`${server.url}/health`)).ok;
    const text = await (await fetch(`${server.url}/metrics`)).text();
    for (const line of text.split("\n")) {
      const m = /^(trove_(?:prompt_tokens_total|cached_tokens_total|generated_tokens_total|active_sequences|queue_depth)) (\S+)$/.exec(line);
      if (m) out.metrics[m[1]] = Number(m[2]);
    }
  } catch { /* not answering */ }
  try {
    const log = fs.readFileSync(server.log, "utf8").split("\n");
    out.log = log.slice(-20).join("\n");
  } catch { /* no log */ }
  return out;
}
