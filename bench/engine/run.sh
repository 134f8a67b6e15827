#!/usr/bin/env bash
# One command for the engine table in docs/performance.md (run on the GPU machine):
#   bench/engine/run.sh [BUILD_DIR] [MODEL_DIR]
# Writes the synthetic Qwen3-8B and Qwen3-30B-A3B Q4_K_M models (trove mkmodel, once) and runs
# bench_engine on both.
set -euo pipefail
build=${1:-build}
dir=${2:-${TMPDIR:-/tmp}/trove-bench-models}
mkdir -p "$dir"
for preset in qwen3-8b qwen3-30b-a3b; do
  f="$dir/$preset-Q4_K_M.gguf"
  [ -s "$f" ] || "$build/trove" mkmodel --preset "$preset" --type Q4_K_M --out "$f"
done
"$build/bench/engine/bench_engine" --model "$dir/qwen3-8b-Q4_K_M.gguf" --model "$dir/qwen3-30b-a3b-Q4_K_M.gguf" "${@:3}"
