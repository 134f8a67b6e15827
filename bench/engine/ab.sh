#!/usr/bin/env bash
# A/B of engine settings in one run, interleaved (the tables of docs/performance.md):
#
#   bench/engine/ab.sh --model M [--rounds N] [--depth D] [--tg N] [--ops] VARIANT...
#   bench/engine/ab.sh --model M --prefill [--rounds N] [--depth D] VARIANT...
#
# VARIANT is LABEL or LABEL:VAR=value[,VAR=value...]: the environment of that variant's runs (LABEL
# alone: the defaults), e.g. `base spin:TROVE_VK_WAIT=spin wg1k:TROVE_MATVEC_Q8_WG=1024,TROVE_MATVEC_Q8_WAVES=4`.
# LABEL@PATH runs the bench_engine at PATH instead (another build of the tree, interleaved with this
# one's), e.g. `base new@/tmp/bench_engine_new:TROVE_VK_WAIT=spin`.
# The variants run in turn, N rounds (default 2), each one `bench_engine --decode-only --reps 1
# --profile` (depth D, default 4096), so that a drift of the machine's speed falls on every variant
# alike. Prints a markdown table: variant, round, tg (tok/s), tg at depth D, GPU and host µs per decode
# step (medians over all decode steps) and dispatches per step. --ops runs every variant with
# TROVE_PROFILE=ops (a timestamp after each op: tg drops by ~5-10%, alike for all) and prints a second
# table, µs per one-token decode step of each op kind (engine.cpp's kOpNames), per variant and round.
# --prefill measures prefill instead: each run is `bench_engine --depth 0 --tg 4 --reps 2` and the
# table has pp512 and pp4096 (tok/s, the better of two pp512 steps; pp4096 in the engine's steps);
# with --depth D also the prompt of D tokens (`--depth D`, prefill to D in the engine's steps, tok/s).
# --prefill --ops adds two op tables (TROVE_PROFILE=ops): µs per step of each op kind in pp512's
# 512-token steps and in the 2048-token steps (the engine's "prefill steps of 257-512 / 1025-2048
# tokens" tables).
# bench_engine is taken from $BENCH_ENGINE, else PATH (the device bundle's wrappers), else
# build/bench/engine/.
set -euo pipefail

usage() { sed -n '2,/^set -e/{/^set -e/d; s/^# \{0,1\}//; p}' "$0"; }
model='' rounds=2 depth=4096 depth_set=0 tg='' ops=0 prefill=0
variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --depth) depth=$2; depth_set=1; shift 2 ;;
    --tg) tg=$2; shift 2 ;;
    --ops) ops=1; shift ;;
    --prefill) prefill=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "ab.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) variants+=("$1"); shift ;;
  esac
done
if [ -z "$model" ] || [ ${#variants[@]} -eq 0 ]; then
  echo "ab.sh: needs --model and at least one variant" >&2
  usage >&2
  exit 2
fi
if [ "$prefill" = 1 ] && [ -n "$tg" ]; then
  echo "ab.sh: --prefill measures pp512, pp4096 and prefill to --depth only (no --tg)" >&2
  exit 2
fi
# The op tables --ops collects: the engine's TROVE_PROFILE=ops table headers, and a title for each.
if [ "$prefill" = 1 ]; then
  op_heads=("prefill steps of 257-512 tokens " "prefill steps of 1025-2048 tokens ")
  op_titles=("µs per 512-token prefill step" "µs per 2048-token prefill step")
else
  op_heads=("decode steps of 1 token ")
  op_titles=("µs per one-token decode step")
fi
bench=${BENCH_ENGINE:-$(command -v bench_engine || echo build/bench/engine/bench_engine)}
[ -x "$bench" ] || { echo "ab.sh: no bench_engine at '$bench' (build it or set BENCH_ENGINE)" >&2; exit 2; }
out=$(mktemp)
opsdir=$(mktemp -d)
trap 'rm -rf "$out" "$opsdir"' EXIT

pdepth=0
[ "$prefill" = 1 ] && [ "$depth_set" = 1 ] && pdepth=$depth
if [ "$prefill" = 1 ] && [ "$pdepth" != 0 ]; then
  echo "| variant | round | pp512 | pp4096 | prefill to $pdepth |"
  echo "|---|---|---|---|---|"
elif [ "$prefill" = 1 ]; then
  echo "| variant | round | pp512 | pp4096 |"
  echo "|---|---|---|---|"
else
  echo "| variant | round | tg | tg at depth $depth | GPU µs / step | host µs / step | dispatches / step |"
  echo "|---|---|---|---|---|---|---|"
fi
for ((r = 1; r <= rounds; r++)); do
  for v in "${variants[@]}"; do
    label=${v%%:*}
    envs=()
    if [[ $v == *:* ]]; then IFS=, read -ra envs <<< "${v#*:}"; fi
    run=$bench
    if [[ $label == *@* ]]; then
      run=${label#*@}
      label=${label%%@*}
      [ -x "$run" ] || { echo "| $label | $r | failed: no bench_engine at '$run' | | | | |"; continue; }
    fi
    [ "$ops" = 1 ] && envs=(TROVE_PROFILE=ops ${envs[@]+"${envs[@]}"})
    args=(--model "$model" --decode-only --reps 1 --profile --depth "$depth")
    [ -n "$tg" ] && args+=(--tg "$tg")
    [ "$prefill" = 1 ] && args=(--model "$model" --depth "$pdepth" --tg 4 --reps 2)
    if ! env ${envs[@]+"${envs[@]}"} "$run" "${args[@]}" > "$out" 2>&1; then
      echo "| $label | $r | failed: $(grep -m1 -iE 'error|invalid|bench_engine:' "$out" | cut -c1-120) | | | | |"
      continue
    fi
    # The trove row: | model | engine | pp512 | pp4096 | tg | tg at depth | ... |
    IFS='|' read -r _ _ _ pp pp4 t td _ <<< "$(grep -m1 'trove (Vulkan)' "$out")"
    if [ "$prefill" = 1 ]; then
      pp=${pp// /} pp4=${pp4// /}
      if [ "$pdepth" != 0 ]; then
        pd=$(grep -m1 -oE "prefill to depth $pdepth ran at [0-9.]+" "$out" | grep -oE '[0-9.]+$' || true)
        echo "| $label | $r | ${pp:-?} | ${pp4:-?} | ${pd:-?} |"
      else
        echo "| $label | $r | ${pp:-?} | ${pp4:-?} |"
      fi
    fi
    # Each op table: "  <kind>  <µs> us/step  <share>%" lines after its header.
    if [ "$ops" = 1 ]; then
      for i in "${!op_heads[@]}"; do
        mkdir -p "$opsdir/$i"
        awk -v h="TROVE_PROFILE=ops, ${op_heads[$i]}" 'index($0, h){on=1; next} on && / us\/step /{sub(/^ +/, ""); \
             n=split($0, f, / +/); us=f[n-2]; name=$0; sub(/ +[0-9.]+ us\/step.*$/, "", name); print name "\t" us; next} on{exit}' \
          "$out" > "$opsdir/$i/$r.$label"
      done
    fi
    [ "$prefill" = 1 ] && continue
    prof=$(grep -m1 'TROVE_PROFILE: decode steps' "$out" || true)
    gpu=$(grep -oE 'GPU \(median\) [0-9.]+' <<< "$prof" | grep -oE '[0-9.]+$' || true)
    host=$(grep -oE 'host \(median\) [0-9.]+' <<< "$prof" | grep -oE '[0-9.]+$' || true)
    disp=$(grep -oE '[0-9.]+ dispatches' <<< "$prof" | grep -oE '^[0-9.]+' || true)
    echo "| $label | $r | ${t// /} | ${td// /} | ${gpu:-?} | ${host:-?} | ${disp:-?} |"
  done
done
[ "$ops" = 1 ] || exit 0
for i in "${!op_heads[@]}"; do
  # Columns: the op kinds in the order of the first file that has any.
  first=$(find "$opsdir/$i" -type f -size +0 2>/dev/null | sort | head -n1)
  echo
  if [ -z "$first" ]; then
    echo "(--ops: no run printed an op profile of ${op_heads[$i]% })"
    continue
  fi
  mapfile -t kinds < <(cut -f1 "$first")
  echo "${op_titles[$i]}:"
  echo
  header="| variant | round |" rule="|---|---|"
  for k in "${kinds[@]}"; do header+=" $k |"; rule+="---|"; done
  echo "$header"; echo "$rule"
  for ((r = 1; r <= rounds; r++)); do
    for v in "${variants[@]}"; do
      label=${v%%:*}
      label=${label%%@*}
      row="| $label | $r |"
      for k in "${kinds[@]}"; do
        us=$(awk -F'\t' -v k="$k" '$1 == k {print $2}' "$opsdir/$i/$r.$label" 2>/dev/null)
        row+=" ${us:-?} |"
      done
      echo "$row"
    done
  done
done
