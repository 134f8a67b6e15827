#!/usr/bin/env bash
# Drives bench/engine/ab.sh with BENCH_ENGINE pointing at a stand-in that prints bench_engine's trove
# row and the engine's TROVE_PROFILE line (copied from an H200 run, 2026-12-04) with numbers taken
# from the variant's environment, then checks every table row ab.sh prints: decode mode, --prefill
# (with and without --depth), --ops in both modes, a failing variant, and the refused option combination.
set -euo pipefail
ab=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/bench_engine" <<'STUB'
#!/usr/bin/env bash
[ "${STUB_FAIL:-0}" = 1 ] && { echo "bench_engine: TROVE_X='y' is invalid"; exit 1; }
echo "$*" >> "$STUB_ARGS"
pp=${STUB_PP:-7545}
echo "| model | engine | pp512 | pp4096 | tg128 | tg64 @ 4096 | decode limit (bandwidth) |"
echo "|---|---|---|---|---|---|---|"
echo "| synthetic qwen3-8b | trove (Vulkan) | $pp | 9497 | ${STUB_TG:-287.4} | 223.5 | |"
echo "| qwen3-8b | llama.cpp CUDA (TARGETS.md) | 8907 | 9956 | 252 | — | 615 |"
[ -n "${STUB_DEPTH:-}" ] && printf '\nsynthetic qwen3-8b: prefill to depth %s ran at %s tok/s\n' "$STUB_DEPTH" "${STUB_PD:-7697}"
if [ "${TROVE_PROFILE:-}" = ops ]; then
  for t in "decode steps of 1 token (16 steps, 16 tokens)" "prefill steps of 257-512 tokens (3 steps, 1536 tokens)" \
           "prefill steps of 1025-2048 tokens (2 steps, 4096 tokens)"; do
    printf '2026-12-04T19:37:30.700Z I engine: TROVE_PROFILE=ops, %s: 100.0 us GPU per step\n' "$t"
    printf '  %-20s %9.1f us/step %5.1f%%\n' "embed" 11.9 0.3 "qkv (+norm)" "${STUB_QKV:-626.0}" 16.3 "dense ffn" 1766.0 46.0
  done
fi
echo "2026-12-04T19:37:30.796Z I engine: TROVE_PROFILE: decode steps (36 steps, 36 tokens), per step (mean): 219.0 dispatches, 6.0 barriers, 3.0 copies, 4.00 submits, 6.00 descriptor sets written (cached descriptors, pieces 16:128); host (median) 3832.5 us a step: 418.3 us recording (first command → last submit; the GPU gets its first piece after 53.3 us), 3458.5 us last submit + wait; GPU (median) 3722.4 us (first → last timestamp)"
STUB
chmod +x "$dir/bench_engine"
export BENCH_ENGINE="$dir/bench_engine" STUB_ARGS="$dir/args"
fail() { echo "FAIL: $*"; echo "--- output:"; cat "$dir/out"; exit 1; }
expect() { grep -qxF -- "$1" "$dir/out" || fail "missing row: $1"; }

# Decode mode: tg, tg at depth, GPU and host medians, dispatches; each variant's environment applied.
bash "$ab" --model m.gguf --rounds 2 base fast:STUB_TG=300.5 > "$dir/out"
expect "| variant | round | tg | tg at depth 4096 | GPU µs / step | host µs / step | dispatches / step |"
expect "| base | 1 | 287.4 | 223.5 | 3722.4 | 3832.5 | 219.0 |"
expect "| fast | 1 | 300.5 | 223.5 | 3722.4 | 3832.5 | 219.0 |"
expect "| fast | 2 | 300.5 | 223.5 | 3722.4 | 3832.5 | 219.0 |"
[ "$(grep -c '^|' "$dir/out")" = 6 ] || fail "decode: expected 2 header lines and 4 rows"
grep -q -- "--decode-only --reps 1 --profile --depth 4096" "$dir/args" || fail "decode: bench_engine arguments: $(cat "$dir/args")"

# --prefill: pp512 and pp4096 from the trove row, bench_engine asked for prefill rows.
: > "$dir/args"
bash "$ab" --model m.gguf --prefill --rounds 1 base f16:STUB_PP=8100,X=1 broken:STUB_FAIL=1 > "$dir/out"
expect "| variant | round | pp512 | pp4096 |"
expect "| base | 1 | 7545 | 9497 |"
expect "| f16 | 1 | 8100 | 9497 |"
grep -q "^| broken | 1 | failed: bench_engine: TROVE_X='y' is invalid" "$dir/out" || fail "prefill: the failing variant's row"
grep -q -- "--model m.gguf --depth 0 --tg 4 --reps 2" "$dir/args" || fail "prefill: bench_engine arguments: $(cat "$dir/args")"
if grep -q -- "--decode-only" "$dir/args"; then fail "prefill: ran decode-only"; fi

# --prefill --depth D: the prompt of D tokens as a third column.
: > "$dir/args"
STUB_DEPTH=16384 bash "$ab" --model m.gguf --prefill --depth 16384 --rounds 1 base r128:STUB_PD=8012 > "$dir/out"
expect "| variant | round | pp512 | pp4096 | prefill to 16384 |"
expect "| base | 1 | 7545 | 9497 | 7697 |"
expect "| r128 | 1 | 7545 | 9497 | 8012 |"
grep -q -- "--model m.gguf --depth 16384 --tg 4 --reps 2" "$dir/args" || fail "prefill at depth: bench_engine arguments: $(cat "$dir/args")"

# --ops: the op table of one-token decode steps per variant (TROVE_PROFILE=ops in each run).
bash "$ab" --model m.gguf --rounds 1 --ops base fast:STUB_QKV=500.5 > "$dir/out"
expect "µs per one-token decode step:"
expect "| variant | round | embed | qkv (+norm) | dense ffn |"
expect "| base | 1 | 11.9 | 626.0 | 1766.0 |"
expect "| fast | 1 | 11.9 | 500.5 | 1766.0 |"
if grep -q "prefill step" "$dir/out"; then fail "decode --ops printed prefill tables"; fi

# --prefill --ops: the 512- and 2048-token prefill steps' op tables.
bash "$ab" --model m.gguf --prefill --rounds 1 --ops base f16:STUB_QKV=400.0 > "$dir/out"
expect "| base | 1 | 7545 | 9497 |"
expect "µs per 512-token prefill step:"
expect "µs per 2048-token prefill step:"
[ "$(grep -cxF '| f16 | 1 | 11.9 | 400.0 | 1766.0 |' "$dir/out")" = 2 ] || fail "prefill --ops: the f16 row of both tables"
[ "$(grep -cxF '| base | 1 | 11.9 | 626.0 | 1766.0 |' "$dir/out")" = 2 ] || fail "prefill --ops: the base row of both tables"

# --prefill with --tg is refused with the reason.
if bash "$ab" --model m.gguf --prefill --tg 16 base > "$dir/out" 2>&1; then fail "--prefill --tg was accepted"; fi
grep -q "measures pp512, pp4096 and prefill to --depth only" "$dir/out" || fail "--prefill --tg: no reason given"
echo "ab.sh: all checks passed"
