#!/usr/bin/env bash
# One command for the speculative decoding numbers in docs/performance.md (run on the GPU machine):
#   bench/spec/run.sh [BUILD_DIR] [MODEL_DIR]
# 1. The verification cost: target step time for 1..8 tokens on the synthetic Qwen3-8B and
#    Qwen3-30B-A3B Q4_K_M models (trove mkmodel, once), and the speed-up that acceptance rates give.
# 2. Acceptance and tokens per target step per method on the trained fixture models (tiny-coder with
#    tiny-coder-draft) over the held-out corpus split and the agent-loop conversation.
set -euo pipefail
build=${1:-build}
dir=${2:-${TMPDIR:-/tmp}/trove-bench-models}
mkdir -p "$dir"
for preset in qwen3-8b qwen3-30b-a3b; do
  f="$dir/$preset-Q4_K_M.gguf"
  [ -s "$f" ] || "$build/trove" mkmodel --preset "$preset" --type Q4_K_M --out "$f"
  "$build/bench/spec/bench_spec" --verify-cost --model "$f" --depth 4096 --reps 10
done
fx="$build/fixtures/models"
"$build/bench/spec/bench_spec" --model "$fx/tiny-coder.gguf" --draft "$fx/tiny-coder-draft.gguf" \
  --heldout tools/train/data/heldout.u32.xz --conversations 64 --turns 2 --max-tokens 128
node bench/spec/agent_loop.mjs "$dir/agent_loop.json"
"$build/bench/spec/bench_spec" --model "$fx/tiny-coder.gguf" --draft "$fx/tiny-coder-draft.gguf" \
  --docs "$dir/agent_loop.json" --conversations 10 --max-tokens 128
