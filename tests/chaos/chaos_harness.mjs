// Shared by the reliability campaign's server tests (tests/chaos/*.test.mjs): a tiny synthetic model
// (1 layer, Q8_0: the fastest steps on lavapipe; the campaign is about the store and the server, not
// the model), `trove serve` processes that the tests SIGKILL, /metrics, SDK clients, and the
// "acknowledged durable" bookkeeping (docs/reliability.md).
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

export const trove = process.env.TROVE_EXE ?? "build/trove";
const bin = process.env.TROVE_BINARY_DIR ?? "build";
export const chaosTool = (name) => join(bin, "tests/chaos", name);
export const faultShim = () => join(bin, "tests/chaos/libfault_shim.so");

export function workDir(name) {
  return mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), `${name}-`));
}

export function makeModel(work) {
  const model = join(work, "tiny.gguf");
  if (!existsSync(model)) {
    execFileSync(trove, ["mkmodel", "--preset", "tiny", "--type", "Q8_0", "--layers", "1", "--seed", "5", "--out", model],
                 { stdio: ["ignore", "ignore", "inherit"] });
  }
  return model;
}

// Starts `trove serve`; env: extra environment (e.g. LD_PRELOAD of the fault shim).
export async function serve({ model, store, args = [], env = {} }) {
  const proc = spawn(trove, ["serve", "--model", model, "--port", "0", "--store", store, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TROVE_API_KEY: "", ...env },
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
  const exited = new Promise((r) => proc.on("exit", r));
  return {
    url, proc, pid: proc.pid,
    stderr: () => stderr,
    async kill(signal = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
    rssKiB() {
      const m = readFileSync(`/proc/${proc.pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
      return m ? Number(m[1]) : 0;
    },
  };
}

// Prometheus text → { "name{labels}": value }.
export async function metrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

// One request through an official SDK; kind picks the dialect and streaming. Returns { text,
// prompt, cached } (cached: prompt tokens taken from the prefix cache).
export async function ask(url, { kind, namespace, content, maxTokens = 2, signal, cache = true }) {
  const headers = { "x-trove-cache-namespace": namespace };
  if (!cache) headers["x-trove-cache"] = "off";
  if (kind.startsWith("openai")) {
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0, timeout: 120000, defaultHeaders: headers });
    const body = { model: "tiny", max_tokens: maxTokens, temperature: 0, messages: [{ role: "user", content }] };
    if (kind === "openai") {
      const r = await c.chat.completions.create(body, { signal });
      return { text: r.choices[0].message.content, prompt: r.usage.prompt_tokens, cached: r.usage.prompt_tokens_details?.cached_tokens ?? 0 };
    }
    const s = await c.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }, { signal });
    let text = "", usage = null;
    for await (const ch of s) {
      text += ch.choices?.[0]?.delta?.content ?? "";
      if (ch.usage) usage = ch.usage;
    }
    return { text, prompt: usage.prompt_tokens, cached: usage.prompt_tokens_details?.cached_tokens ?? 0 };
  }
  const c = new Anthropic({ baseURL: url, apiKey: "none", maxRetries: 0, timeout: 120000, defaultHeaders: headers });
  const body = { model: "tiny", max_tokens: maxTokens, temperature: 0, messages: [{ role: "user", content }] };
  if (kind === "anthropic") {
    const r = await c.messages.create(body, { signal });
    const u = r.usage;
    return { text: r.content.map((b) => b.text ?? "").join(""), prompt: u.input_tokens + (u.cache_read_input_tokens ?? 0),
             cached: u.cache_read_input_tokens ?? 0 };
  }
  const s = c.messages.stream(body, { signal });
  const r = await s.finalMessage();
  const u = r.usage;
  return { text: r.content.map((b) => b.text ?? "").join(""), prompt: u.input_tokens + (u.cache_read_input_tokens ?? 0),
           cached: u.cache_read_input_tokens ?? 0 };
}
export const KINDS = ["openai", "openai-stream", "anthropic", "anthropic-stream"];

// Tokens a request's prefix cache can cover: whole 64-token blocks of the prompt less its last token.
export const cacheable = (prompt) => Math.floor((prompt - 1) / 64) * 64;

// "Acknowledged durable" (docs/reliability.md): after a request's response has ended, its completed
// blocks are queued in the store (the engine queues them at the end of the step that completed them,
// before that step's tokens go out). The store's write-behind queue is FIFO with tickets: /metrics
// trove_store_write_enqueued_total read after the response is the request's ticket; once
// trove_store_write_processed_total reaches it, with no write failure and no dropped block, every block
// of the request is durable (segment and index fsynced).
export class Acks {
  constructor() { this.pending = []; this.acked = []; this.bad = null; }
  async responded(url, req) {
    const m = await metrics(url);
    this.pending.push({ ...req, ticket: m.trove_store_write_enqueued_total });
  }
  async poll(url) {
    const m = await metrics(url);
    if (m.trove_store_write_failures_total || m.trove_store_blocks_dropped_total) {
      this.bad = `store write failures ${m.trove_store_write_failures_total}, dropped ${m.trove_store_blocks_dropped_total}`;
    }
    const done = m.trove_store_write_processed_total;
    this.acked.push(...this.pending.filter((p) => p.ticket <= done));
    this.pending = this.pending.filter((p) => p.ticket > done);
  }
}
