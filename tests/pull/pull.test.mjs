// `trove pull`, `trove models`, `trove rm` against a fake Hugging Face Hub on loopback: the Hub's API
// shapes (tree listing with LFS SHA-256s, /resolve/ with a 302 to a CDN on another port, X-Error-Code
// headers) serving small synthetic GGUF files, with injected failures — a connection cut mid-file
// (then resumed with a Range request), a wrong checksum, 404, 401 for a gated repo, a full disk — each
// a clear error and never a model left as if complete. Also: the quantization choice, the token
// sent to the Hub but not to the CDN, and a split GGUF joined into one file. No GPU; a few seconds.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

const trove = process.env.TROVE_EXE ?? "build/trove";

// ---- a minimal GGUF v3 writer/reader (F32 tensors; u16/i32/u32/string metadata)
const TYPE = { u16: 2, u32: 4, i32: 5, string: 8 };
function u32(n) { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; }
function u64(n) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; }
function str(s) { return Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)]); }
function value(type, v) {
  if (type === "u16") { const b = Buffer.alloc(2); b.writeUInt16LE(v); return b; }
  if (type === "u32") return u32(v);
  if (type === "i32") { const b = Buffer.alloc(4); b.writeInt32LE(v); return b; }
  return str(v);
}
const pad = (n) => (32 - (n % 32)) % 32;
function makeGguf(kv, tensors) {
  const head = [Buffer.from("GGUF"), u32(3), u64(tensors.length), u64(kv.length)];
  for (const [k, t, v] of kv) head.push(str(k), u32(TYPE[t]), value(t, v));
  let offset = 0;
  for (const t of tensors) {
    head.push(str(t.name), u32(t.ne.length), ...t.ne.map(u64), u32(0), u64(offset));
    offset += t.data.length + pad(t.data.length);
  }
  let buf = Buffer.concat(head);
  buf = Buffer.concat([buf, Buffer.alloc(pad(buf.length))]);
  const data = [];
  for (const t of tensors) data.push(t.data, Buffer.alloc(pad(t.data.length)));
  return Buffer.concat([buf, ...data]);
}
function readGguf(buf) {
  let p = 8;
  const n_tensors = Number(buf.readBigUInt64LE(p)); p += 8;
  const n_kv = Number(buf.readBigUInt64LE(p)); p += 8;
  const rstr = () => { const n = Number(buf.readBigUInt64LE(p)); p += 8; const s = buf.subarray(p, p + n).toString(); p += n; return s; };
  const keys = [];
  for (let i = 0; i < n_kv; i++) {
    keys.push(rstr());
    const t = buf.readUInt32LE(p); p += 4;
    if (t === 2) p += 2; else if (t === 4 || t === 5) p += 4; else if (t === 8) rstr(); else throw new Error(`type ${t}`);
  }
  const names = [];
  for (let i = 0; i < n_tensors; i++) {
    names.push(rstr());
    const nd = buf.readUInt32LE(p); p += 4 + nd * 8 + 4 + 8;
  }
  return { keys, names };
}
function tensor(name, n, seed) {
  const data = Buffer.alloc(n * 4);
  for (let i = 0; i < n; i++) data.writeFloatLE(Math.sin(seed * 1000 + i), i * 4);
  return { name, ne: [n], data };
}
const sha = (b) => createHash("sha256").update(b).digest("hex");
const META = [["general.architecture", "string", "qwen3"], ["general.name", "string", "Tiny"]];

// ---- the fake Hub: repos → files; the CDN serves blobs on another port
const repos = new Map();
function addRepo(id, files, extra = {}) { repos.set(id, { files, ...extra }); }
const inject = { cutAfter: new Map(), ranges: [], hubAuth: [], cdnAuth: [] };
let hub, cdn, hubUrl, cdnUrl;

function listen(server) {
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r(`http://127.0.0.1:${server.address().port}`)));
}

before(async () => {
  cdn = http.createServer((req, res) => {
    inject.cdnAuth.push(req.headers.authorization ?? "");
    const key = decodeURIComponent(new URL(req.url, "http://x").pathname.slice("/blob/".length));
    const [repoId, file] = [key.slice(0, key.lastIndexOf("::")), key.slice(key.lastIndexOf("::") + 2)];
    const body = repos.get(repoId)?.files[file]?.bytes;
    if (!body) { res.writeHead(404); return res.end(); }
    let start = 0;
    const range = req.headers.range;
    if (range) {
      inject.ranges.push(`${file} ${range}`);
      start = Number(/bytes=(\d+)-/.exec(range)[1]);
      res.writeHead(206, { "Content-Length": body.length - start, "Content-Range": `bytes ${start}-${body.length - 1}/${body.length}` });
    } else {
      res.writeHead(200, { "Content-Length": body.length });
    }
    const cut = inject.cutAfter.get(file);
    if (cut !== undefined) {  // send `cut` bytes, then drop the connection mid-file (once)
      inject.cutAfter.delete(file);
      res.write(body.subarray(start, start + cut), () => setTimeout(() => res.socket.destroy(), 50));
      return;
    }
    res.end(body.subarray(start));
  });
  cdnUrl = await listen(cdn);
  hub = http.createServer((req, res) => {
    inject.hubAuth.push(req.headers.authorization ?? "");
    const url = new URL(req.url, "http://x");
    let m = /^\/api\/models\/(.+)\/tree\/([^/]+)$/.exec(decodeURIComponent(url.pathname));
    const fail = (status, code, msg) => { res.writeHead(status, { "X-Error-Code": code, "Content-Type": "application/json" }); res.end(JSON.stringify({ error: msg })); };
    if (m) {
      const repo = repos.get(m[1]);
      if (!repo) return fail(401, "RepoNotFound", "Repository not found");
      if (repo.gated && req.headers.authorization !== "Bearer good-token") return fail(401, "GatedRepo", "Access to model is restricted");
      const list = [{ type: "file", oid: "x", size: 12, path: "README.md" }];
      for (const [p, f] of Object.entries(repo.files)) {
        list.push({ type: "file", oid: "gitsha", size: f.bytes.length, path: p,
                    lfs: { oid: f.listedSha ?? sha(f.bytes), size: f.bytes.length, pointerSize: 134 } });
      }
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify(list));
    }
    m = /^\/(.+)\/resolve\/([^/]+)\/(.+)$/.exec(decodeURIComponent(url.pathname));
    if (m && repos.get(m[1])?.files[m[3]]) {
      res.writeHead(302, { Location: `${cdnUrl}/blob/${encodeURIComponent(`${m[1]}::${m[3]}`)}?X-Amz-Signature=abc` });
      return res.end();
    }
    fail(404, "EntryNotFound", "not found");
  });
  hubUrl = await listen(hub);
});
after(() => { hub?.close(); cdn?.close(); });

// Runs trove without blocking the event loop (the fake Hub answers from this process).
function run(home, args, { env = {}, shell = null } = {}) {
  const e = { ...process.env, TROVE_HOME: home, HF_ENDPOINT: hubUrl, HF_TOKEN: "", HF_HOME: path.join(home, "hf"), ...env };
  const p = shell ? spawn("bash", ["-c", `${shell}; exec "$0" "$@"`, trove, ...args], { env: e })
                  : spawn(trove, args, { env: e });
  let out = "", err = "";
  p.stdout.on("data", (d) => { out += d; });
  p.stderr.on("data", (d) => { err += d; });
  return new Promise((resolve) => p.on("close", (code) => resolve({ code, out, err })));
}
const home = () => fs.mkdtempSync(path.join(process.env.TROVE_BINARY_DIR ?? os.tmpdir(), "pull-test-"));
const modelsIn = (h) => (fs.existsSync(path.join(h, "models")) ? fs.readdirSync(path.join(h, "models")).filter((f) => !f.startsWith(".")) : []);

const q8 = makeGguf(META, [tensor("a", 300000, 1), tensor("b", 200000, 2)]);   // ~2 MB
const q4 = makeGguf(META, [tensor("a", 150000, 3)]);
const splitKv = (no) => [["split.no", "u16", no], ["split.count", "u16", 2], ["split.tensors.count", "i32", 3]];
const part1 = makeGguf([...META, ...splitKv(0)], [tensor("x", 100000, 4), tensor("y", 1000, 5)]);
const part2 = makeGguf(splitKv(1), [tensor("z", 100000, 6)]);

addRepo("test/Tiny-GGUF", {
  "Tiny-Q4_K_M.gguf": { bytes: q4 }, "Tiny-Q8_0.gguf": { bytes: q8 }, "Tiny-IQ2_XXS.gguf": { bytes: q4 },
});
addRepo("test/Bad-GGUF", { "Bad-Q8_0.gguf": { bytes: q8, listedSha: sha(Buffer.from("something else")) } });
addRepo("test/Gated-GGUF", { "Gated-Q8_0.gguf": { bytes: q8 } }, { gated: true });
addRepo("test/Split-GGUF", { "Q8_0/Split-Q8_0-00001-of-00002.gguf": { bytes: part1 }, "Q8_0/Split-Q8_0-00002-of-00002.gguf": { bytes: part2 } });
addRepo("test/Cut-GGUF", { "Cut-Q8_0.gguf": { bytes: q8 } });
addRepo("test/Full-GGUF", { "Full-Q8_0.gguf": { bytes: q8 } });

describe("trove pull against a fake Hub", { concurrency: true }, () => {
  it("picks the quantization that fits, verifies, writes the manifest; models lists it; rm deletes it", async () => {
    const h = home();
    let r = await run(h, ["pull", "test/Tiny-GGUF", "--gpu-memory", "64G"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /chose Q8_0 .*fits 64\.0 GiB/);
    const gguf = path.join(h, "models", "Tiny-Q8_0.gguf");
    assert.deepEqual(fs.readFileSync(gguf), q8);
    const manifest = JSON.parse(fs.readFileSync(path.join(h, "models", "Tiny-Q8_0.manifest.json"), "utf8"));
    assert.equal(manifest.repo, "test/Tiny-GGUF");
    assert.equal(manifest.quant, "Q8_0");
    assert.equal(manifest.files[0].sha256, sha(q8));
    r = await run(h, ["pull", "test/Tiny-GGUF", "--gpu-memory", "64G"]);
    assert.match(r.out, /already pulled/);
    r = await run(h, ["pull", "test/Tiny-GGUF", "--quant", "q4_k_m"]);
    assert.equal(r.code, 0, r.err);
    r = await run(h, ["models", "--json"]);
    const listed = JSON.parse(r.out);
    assert.deepEqual(listed.map((m) => m.name).sort(), ["Tiny-Q4_K_M", "Tiny-Q8_0"]);
    assert.equal(listed.find((m) => m.name === "Tiny-Q8_0").quant, "Q8_0");
    r = await run(h, ["pull", "test/Tiny-GGUF", "--quant", "IQ2_XXS"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot run this quantization/);
    r = await run(h, ["rm", "Tiny-Q8_0"]);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(modelsIn(h), ["Tiny-Q4_K_M.gguf", "Tiny-Q4_K_M.manifest.json"]);
    r = await run(h, ["rm", "nope"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /no model nope .*models there: Tiny-Q4_K_M/);
    fs.rmSync(h, { recursive: true, force: true });
  });

  it("a connection cut mid-file is an error that leaves no model; the next pull resumes with a Range request", async () => {
    const h = home();
    inject.cutAfter.set("Cut-Q8_0.gguf", 700000);
    let r = await run(h, ["pull", "test/Cut-GGUF", "--quant", "Q8_0"]);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /connection ended at \d+ of \d+ bytes.*run trove pull again to resume/);
    assert.deepEqual(modelsIn(h), []);
    r = await run(h, ["pull", "test/Cut-GGUF", "--quant", "Q8_0"]);
    assert.equal(r.code, 0, r.err);
    assert.ok(inject.ranges.some((x) => /^Cut-Q8_0\.gguf bytes=[1-9]\d*-$/.test(x)), JSON.stringify(inject.ranges));
    assert.deepEqual(fs.readFileSync(path.join(h, "models", "Cut-Q8_0.gguf")), q8);
    fs.rmSync(h, { recursive: true, force: true });
  });

  it("a wrong checksum is an error; the bad bytes are deleted and nothing is left as a model", async () => {
    const h = home();
    const r = await run(h, ["pull", "test/Bad-GGUF", "--quant", "Q8_0"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /SHA-256 mismatch: the file has [0-9a-f]{64}, the Hub lists [0-9a-f]{64}; the download was deleted/);
    assert.deepEqual(modelsIn(h), []);
    assert.deepEqual(fs.readdirSync(path.join(h, "models", ".partial", "Bad-Q8_0")), []);
    fs.rmSync(h, { recursive: true, force: true });
  });

  it("404 and an unknown short name are clear errors", async () => {
    const h = home();
    let r = await run(h, ["pull", "test/Missing-GGUF"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /no repo test\/Missing-GGUF on http:\/\/127\.0\.0\.1/);
    r = await run(h, ["pull", "qwen9"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /qwen9: not a short name \(qwen3-coder, .*\) nor a Hugging Face repo id/);
    fs.rmSync(h, { recursive: true, force: true });
  });

  it("a gated repo needs HF_TOKEN: 401 says so; with the token it works and the token never reaches the CDN", async () => {
    const h = home();
    let r = await run(h, ["pull", "test/Gated-GGUF", "--quant", "Q8_0"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /HTTP 401: the repo test\/Gated-GGUF is gated or private\. Accept its licence at .* and set HF_TOKEN/);
    const before = inject.cdnAuth.length;
    r = await run(h, ["pull", "test/Gated-GGUF", "--quant", "Q8_0"], { env: { HF_TOKEN: "good-token" } });
    assert.equal(r.code, 0, r.err);
    assert.ok(inject.hubAuth.includes("Bearer good-token"));
    assert.ok(inject.cdnAuth.length > before);
    assert.ok(!inject.cdnAuth.includes("Bearer good-token"), "the token went to the CDN");
    // The token file the huggingface CLI writes is read too.
    fs.mkdirSync(path.join(h, "hf"), { recursive: true });
    fs.writeFileSync(path.join(h, "hf", "token"), "good-token\n");
    await run(h, ["rm", "Gated-Q8_0"]);
    r = await run(h, ["pull", "test/Gated-GGUF", "--quant", "Q8_0"]);
    assert.equal(r.code, 0, r.err);
    fs.rmSync(h, { recursive: true, force: true });
  });

  it("a full disk is an error that names it, and no model is left as complete", async () => {
    const h = home();
    // RLIMIT_FSIZE of 512 KiB with SIGXFSZ ignored: writes past it fail with EFBIG, as on a full disk.
    const r = await run(h, ["pull", "test/Full-GGUF", "--quant", "Q8_0"], { shell: "trap '' XFSZ; ulimit -f 512" });
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /cannot write .*Full-Q8_0\.gguf\.part: File too large \(the disk is full: free space or set TROVE_HOME/);
    assert.deepEqual(modelsIn(h), []);
    fs.rmSync(h, { recursive: true, force: true });
  });

  it("a split GGUF is downloaded part by part and joined into one file", async () => {
    const h = home();
    const r = await run(h, ["pull", "test/Split-GGUF", "--gpu-memory", "64G"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /joining 2 parts/);
    const merged = readGguf(fs.readFileSync(path.join(h, "models", "Split-Q8_0.gguf")));
    assert.deepEqual(merged.names, ["x", "y", "z"]);
    assert.ok(merged.keys.includes("general.architecture"));
    assert.ok(!merged.keys.some((k) => k.startsWith("split.")), merged.keys.join());
    const manifest = JSON.parse(fs.readFileSync(path.join(h, "models", "Split-Q8_0.manifest.json"), "utf8"));
    assert.equal(manifest.files.length, 2);
    assert.deepEqual(fs.readdirSync(path.join(h, "models", ".partial")), []);
    fs.rmSync(h, { recursive: true, force: true });
  });
});
