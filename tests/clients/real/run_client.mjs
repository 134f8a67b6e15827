// One real coding agent (installed from npm by scripts/setup.sh test into .clients/node_modules,
// pinned in package.json + package-lock.json) run non-interactively through `trove launch CLIENT` against
// a `trove serve` it starts, in a throwaway HOME and a temporary project. The server runs a script of
// forced replies (`--test-force-script`, server/force_script.h): while the client offers its file-writing
// tool and has not sent a tool result, the reply is a call of that tool writing a file; once the last
// message is a tool result, a short final answer. Asserted:
//   - the client exited 0 (through the launcher, whose exit code is the client's);
//   - the client executed the call: the file exists in the project with the content;
//   - the next request carried the tool result: a logged prompt (--log-prompts) holds the tool's reply
//     inside <tool_response> after the call;
//   - that request reported cached tokens: the server's line for it says "(N cached)" with N > 0 — the
//     same number the client gets as cached tokens in its dialect's usage;
//   - per client, what trove launch fixed stays fixed (`forbid`: Claude Code guessing a window, Codex
//     ignoring a -c setting).
// TROVE_CLIENTS_KEEP=1 keeps the work directory (HOME, project, serve.log with the prompts).
// Usage: node tests/clients/real/run_client.mjs CLIENT   (pi, claude, codex, opencode, qwen)
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freePort } from "../free_port.mjs";

const client = process.argv[2];
const src = process.env.TROVE_SOURCE_DIR ?? process.cwd();
const trove = path.resolve(process.env.TROVE_EXE ?? "build/trove");
const bin = path.join(src, ".clients/node_modules/.bin");
const t0 = Date.now();
const say = (m) => console.log(`[${client} ${((Date.now() - t0) / 1000).toFixed(1)} s] ${m}`);

// What each client is asked, the tool it writes files with, and the arguments of that call. `extra`:
// the client's own non-interactive flags. `prepare` writes project files the client reads.
const FILE = "hello.txt";
const CONTENT = `written by ${client} through trove`;
const FINAL = "Done: the file is written.";
const PROMPT = `Create the file ${FILE} containing: ${CONTENT}`;
// TROVE_CLIENTS_FULL=1: each client's own system prompt and every tool (Claude Code 12.1k tokens, Qwen Code
// 17.7k, Codex 8.7k, opencode 7.2k: all five took 330 s on a busy 2-core machine). By default the clients that allow it
// get a short system prompt and only their file-writing tool (their documented flags/config), so that the
// five tests fit CI's budget; the wire protocol, the tool round trip and the caching are the same.
const full = process.env.TROVE_CLIENTS_FULL === "1";
const SYSTEM = "You are a coding agent. Do what the user asks with your tools, then say briefly what you did.";
function clientSpec(project) {
  const abs = path.join(project, FILE);
  switch (client) {
    case "pi":
      return { tool: "write", args: { path: FILE, content: CONTENT },
               extra: ["--print", "--no-session", "--offline", PROMPT] };
    case "claude":
      return { tool: "Write", args: { file_path: abs, content: CONTENT },
               // trove launch gives it the window (CLAUDE_CODE_MAX_CONTEXT_TOKENS): no 1M-token guess.
               forbid: /doesn't recognize the model/,
               extra: ["-p", PROMPT, "--no-session-persistence", "--permission-mode", "acceptEdits",
                       "--allowedTools", "Write", ...(full ? [] : ["--tools", "Write", "--system-prompt", SYSTEM])] };
    case "codex":
      return { tool: "exec_command", args: { cmd: `printf '%s\\n' '${CONTENT}' > ${FILE}` },
               forbid: /unrecognized configuration settings/,  // every -c of trove launch is one Codex reads
               prepare: () => fs.writeFileSync(path.join(work, "instructions.md"), SYSTEM + "\n"),
               extra: ["exec", "--skip-git-repo-check", "--ephemeral", "--dangerously-bypass-approvals-and-sandbox",
                       ...(full ? [] : ["-c", `model_instructions_file="${path.join(work, "instructions.md")}"`,
                                        "-c", "include_permissions_instructions=false",
                                        "-c", "include_apps_instructions=false",
                                        "-c", "include_environment_context=false",
                                        // its multi-agent and goal tools: ~3.5k tokens of schema
                                        "--disable", "multi_agent", "--disable", "goals"]), PROMPT] };
    case "opencode":
      return { tool: "write", args: { filePath: abs, content: CONTENT },
               // A project config (merged over trove's): an agent with a short prompt and only the write tool.
               prepare: () => full || fs.writeFileSync(path.join(project, "opencode.json"), JSON.stringify({
                 $schema: "https://opencode.ai/config.json",
                 agent: { "trove-test": { mode: "primary", prompt: SYSTEM, tools: { "*": false, write: true } } } })),
               // Nothing to fetch: models.dev and plugins are unreachable offline, updates are not wanted.
               env: { OPENCODE_DISABLE_MODELS_FETCH: "1", OPENCODE_DISABLE_AUTOUPDATE: "1",
                      OPENCODE_DISABLE_DEFAULT_PLUGINS: "1", OPENCODE_DISABLE_LSP_DOWNLOAD: "1" },
               extra: ["run", ...(full ? [] : ["--agent", "trove-test"]), PROMPT] };
    case "qwen":
      // --bare: no memory, output-language or skills context (~3k tokens); its tools are then edit,
      // notebook_edit, read_file, run_shell_command and the goal tools: only edit is kept, which creates a
      // file from an empty old_string.
      return full ? { tool: "write_file", args: { file_path: abs, content: CONTENT },
                      env: { QWEN_CODE_SUPPRESS_YOLO_WARNING: "1" }, extra: [PROMPT, "--yolo"] }
                  : { tool: "edit", args: { file_path: abs, old_string: "", new_string: CONTENT },
                      env: { QWEN_CODE_SUPPRESS_YOLO_WARNING: "1" },
                      extra: [PROMPT, "--yolo", "--bare", "--system-prompt", SYSTEM, "--exclude-tools", "notebook_edit",
                              "read_file", "run_shell_command", "get_goal", "update_goal"] };
    default:
      throw new Error(`unknown client "${client}"; one of: pi, claude, codex, opencode, qwen`);
  }
}

function toolCall(name, args) {
  return `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>`;
}

const work = fs.mkdtempSync(path.join(process.env.TROVE_BINARY_DIR ?? os.tmpdir(), `client-${client}-`));
const home = path.join(work, "home"), troveHome = path.join(work, "trove"), project = path.join(work, "project");
for (const d of [home, path.join(troveHome, "models"), project]) fs.mkdirSync(d, { recursive: true });

// The server the launch started: stopped now (its idle exit after the last client is clients_launch's
// subject), and gone before the work directory is removed (it writes its pipeline cache as it exits).

async function serverGone() {
  let pid = 0;
  try { pid = JSON.parse(fs.readFileSync(path.join(troveHome, "run", "server.json"), "utf8")).pid; } catch { return; }
  try { process.kill(pid, "SIGTERM"); } catch { return; }
  for (let i = 0; i < 300; i++) {
    try { process.kill(pid, 0); } catch { return; }
    await new Promise((r) => setTimeout(r, 100));
  }
  try { process.kill(pid, "SIGKILL"); } catch {}
}

let failed = false;
try {
  if (!fs.existsSync(path.join(bin, client === "claude" ? "claude" : client))) {
    throw new Error(`${client} is not installed in .clients/node_modules: run scripts/setup.sh test ` +
                    "(it installs tests/clients/real/package.json there)");
  }
  const spec = clientSpec(project);
  spec.prepare?.();
  // The CI model: the tiny preset cut to 1 layer and 1 attention head (prefill cost is mostly attention,
  // which grows with heads x context^2), Q8_0, with a context long enough for the clients' prompts.
  // Written once for the five tests (again when trove was rebuilt since; renamed into place whole, so a
  // test running beside another never reads half a file) and linked into each test's models directory.
  const shared = path.join(process.env.TROVE_BINARY_DIR ?? work, "clients-real-tiny-1l1h.gguf");
  if (!fs.existsSync(shared) || fs.statSync(shared).mtimeMs < fs.statSync(trove).mtimeMs) {
    const tmp = `${shared}.${process.pid}.tmp`;
    execFileSync(trove, ["mkmodel", "--preset", "tiny", "--type", "Q8_0", "--layers", "1", "--heads", "1", "--seed", "5",
                         "--ctx", "32768", "--out", tmp], { stdio: ["ignore", "ignore", "inherit"] });
    fs.renameSync(tmp, shared);
  }
  try { fs.linkSync(shared, path.join(troveHome, "models", "tiny.gguf")); }
  catch { fs.copyFileSync(shared, path.join(troveHome, "models", "tiny.gguf")); }
  const script = path.join(work, "script.json");
  fs.writeFileSync(script, JSON.stringify({ rules: [
    { last: "tool", output: FINAL },
    { tool: spec.tool, output: toolCall(spec.tool, spec.args) },
    { output: "trove" },  // side requests (titles, summaries) offer no tools
  ] }, null, 2));
  const port = await freePort();
  const env = { ...process.env, HOME: home, TROVE_HOME: troveHome, TROVE_API_KEY: "", PATH: `${bin}:${process.env.PATH}`,
                XDG_CONFIG_HOME: path.join(home, ".config"), XDG_CACHE_HOME: path.join(home, ".cache"),
                XDG_DATA_HOME: path.join(home, ".local/share"), XDG_STATE_HOME: path.join(home, ".local/state"),
                CI: "1", NO_COLOR: "1", PWD: project, ...(spec.env ?? {}),
                // Shared warm caches: lavapipe's compiled shaders (Mesa's disk cache, the one the rest of the
                // suite fills) instead of compiling every kernel again under the throwaway HOME.
                MESA_SHADER_CACHE_DIR: process.env.MESA_SHADER_CACHE_DIR ??
                  path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"), "mesa_shader_cache") };
  const argv = ["launch", client, "--port", String(port), "--idle-exit", "2",
                `--serve-args=--ctx 32768 --parallel 2 --max-batch-tokens 2048 --no-store --log-prompts --test-force-script ${script}`,
                "--", ...spec.extra];
  say(`trove ${argv.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(" ")}`);
  const r = await new Promise((resolve) => {
    const p = spawn(trove, argv, { cwd: project, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    p.stdout.on("data", (d) => { out += d; });
    p.stderr.on("data", (d) => { err += d; });
    const timer = setTimeout(() => p.kill("SIGKILL"), 380000);  // inside ctest's TIMEOUT 420
    p.on("exit", (code, sig) => { clearTimeout(timer); resolve({ code, sig, out, err }); });
  });
  const log = fs.readFileSync(path.join(troveHome, "run", "serve.log"), "utf8");
  say(`exit ${r.code}${r.sig ? " " + r.sig : ""}`);
  const show = `--- client stdout:\n${r.out.slice(-3000)}\n--- launch/client stderr:\n${r.err.slice(-3000)}\n` +
               `--- serve.log (requests):\n${log.split("\n").filter((l) => / serve: \//.test(l)).join("\n")}`;
  console.log(show);
  assert.equal(r.code, 0, `the client exited with ${r.code}`);
  if (spec.forbid) assert.doesNotMatch(r.err + r.out, spec.forbid);
  const file = path.join(project, FILE);
  assert.ok(fs.existsSync(file), `${client} did not write ${FILE}: the tool call was not executed`);
  assert.equal(fs.readFileSync(file, "utf8").trim(), CONTENT);
  // Every logged prompt: "prompt (N tokens):\n<rendered>" up to the next log line.
  const prompts = [...log.matchAll(/ I serve: prompt \((\d+) tokens\):\n([\s\S]*?)(?=\n\d{4}-\d\d-\d\dT[\d:.]+Z [IWE] )/g)]
    .map((m) => ({ tokens: Number(m[1]), text: m[2] }));
  const withResult = prompts.filter((p) => /<tool_response>[\s\S]*<\/tool_response>/.test(p.text) &&
                                           p.text.includes(CONTENT));
  assert.ok(withResult.length > 0, `no request carried the tool result (${prompts.length} prompts logged)`);
  const usage = [...log.matchAll(/ serve: \/v1\/\S+ 200: (\d+) prompt tokens \((\d+) cached\)/g)]
    .map((m) => ({ prompt: Number(m[1]), cached: Number(m[2]) }));
  const second = usage.find((u) => withResult.some((p) => p.tokens === u.prompt));
  assert.ok(second, "the request with the tool result got no answer");
  assert.ok(second.cached > 0, `the request with the tool result reported 0 cached tokens of ${second.prompt}`);
  say(`ok: ${usage.map((u) => `${u.prompt} prompt tokens (${u.cached} cached)`).join(", ")}`);
} catch (e) {
  failed = true;
  console.error(e.stack ?? e);
} finally {
  await serverGone();
  if (!failed && !process.env.TROVE_CLIENTS_KEEP) fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
