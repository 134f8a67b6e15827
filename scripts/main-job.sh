#!/usr/bin/env bash
# trove's main job, started by `make run`. Finds the model to use — a real GGUF in the model
# directory, else the repository's tiny trained test model (build/fixtures/models/tiny-coder.gguf,
# docs/fixture-models.md; said plainly: it writes well-formed turns and tool calls, nothing useful),
# else a synthetic demo model generated on first run (said loudly: its output is noise) — and serves
# it: `trove serve` on 127.0.0.1 (port $TROVE_PORT, default 8080). The server's banner and /v1/models
# mark a synthetic model as such.
set -euo pipefail
trove=${1:-build/trove}
home=${TROVE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/trove}
models=$home/models
mkdir -p "$models"

model=""
for f in "$models"/*.gguf; do
  [ -e "$f" ] || continue
  case "$(basename "$f")" in synthetic-*) continue ;; esac
  model=$f
  break
done

# The build unpacks the fixture (kept xz-compressed in tests/fixtures/models) beside the binary.
fixture=$(dirname "$trove")/fixtures/models/tiny-coder.gguf
if [ -z "$model" ] && [ -f "$fixture" ]; then
  model=$fixture
  cat <<MSG
################################################################################
#  No model found in $models
#  Using trove's TINY TEST MODEL ($(basename "$fixture"), docs/fixture-models.md):
#  a 6-layer Qwen3 with hidden size 256, trained for minutes on generated
#  coding-agent conversations. It answers in the chat format and writes
#  well-formed tool calls, but it is NOT a useful assistant.
#  For real output, put a Qwen3 GGUF (e.g. Qwen3-Coder-30B-A3B-Instruct
#  Q4_K_M) into $models
################################################################################
MSG
fi

if [ -z "$model" ]; then
  model=$models/synthetic-qwen3-0.6b-q8_0.gguf
  cat <<MSG
################################################################################
#  No real model found in $models
#  Using a SYNTHETIC demo model: the real Qwen3-0.6B shapes and tokenizer with
#  RANDOM WEIGHTS. Everything runs, but what it generates is noise.
#  For real output, put a Qwen3 GGUF (e.g. Qwen3-Coder-30B-A3B-Instruct
#  Q4_K_M) into $models
################################################################################
MSG
  # mkmodel writes <file>.partial and renames it when complete, so an interrupted first run
  # leaves no half model behind.
  [ -f "$model" ] || "$trove" mkmodel --preset qwen3-0.6b --type Q8_0 --out "$model"
fi

"$trove" info "$model"
exec "$trove" serve --model "$model" --port "${TROVE_PORT:-8080}"
