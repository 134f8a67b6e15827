#!/usr/bin/env bash
# How much a setting moves the model's output (the precision rows of docs/performance.md):
#
#   bench/engine/precision.sh --model M [--prompt N] [--chunk C] [--generate G] [--seed S] VARIANT...
#
# VARIANT is LABEL or LABEL:VAR=value[,VAR=value...], as in ab.sh: the environment of that variant's
# run; the first variant is the reference. Every variant runs `trove eval -m M --tokens @P --chunk C
# --batch B --top 8 --generate G` on the same N random prompt tokens (ids 1000..149999 from seed S;
# B = max(C, 512)), so each prefill step of C tokens runs the kernels a step of that size runs. Prints a
# markdown table against the reference: positions scored (every one of steps up to 64 tokens, the last
# of longer steps), positions whose most likely token differs, the largest change of the reference's
# top-1 probability (its token's probability in the variant; 0 where it left the variant's top 8), and
# how many of the G greedy tokens after the prompt equal the reference's before the first that does
# not (e.g. 7/48).
#
# Defaults: N 4096, C 2048, G 48, S 7. trove is taken from $TROVE, else PATH, else build/trove.
set -euo pipefail

usage() { sed -n '2,/^set -e/{/^set -e/d; s/^# \{0,1\}//; p}' "$0"; }
model='' prompt=4096 chunk=2048 generate=48 seed=7
variants=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --chunk) chunk=$2; shift 2 ;;
    --generate) generate=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "precision.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) variants+=("$1"); shift ;;
  esac
done
if [ -z "$model" ] || [ ${#variants[@]} -lt 2 ]; then
  echo "precision.sh: needs --model and at least two variants (the first is the reference)" >&2
  usage >&2
  exit 2
fi
for n in "$prompt" "$chunk" "$generate" "$seed"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "precision.sh: '$n' is not a whole number" >&2; exit 2; }
done
trove=${TROVE:-$(command -v trove || echo build/trove)}
[ -x "$trove" ] || { echo "precision.sh: no trove at '$trove' (build it or set TROVE)" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

python3 -c "import json, random; r = random.Random($seed); print(json.dumps([r.randrange(1000, 150000) for _ in range($prompt)]))" \
  > "$dir/prompt.json"
batch=$(( chunk > 512 ? chunk : 512 ))
labels=()
for v in "${variants[@]}"; do
  label=${v%%:*}
  envs=()
  if [[ $v == *:* ]]; then IFS=, read -ra envs <<< "${v#*:}"; fi
  i=${#labels[@]}
  labels+=("$label")
  if ! env ${envs[@]+"${envs[@]}"} "$trove" eval -m "$model" --tokens "@$dir/prompt.json" --chunk "$chunk" --batch "$batch" \
       --top 8 --generate "$generate" > "$dir/$i.json" 2> "$dir/$i.err"; then
    echo "precision.sh: variant '$label' failed: $(grep -m1 -iE 'error|invalid' "$dir/$i.err" | cut -c1-160)" >&2
    : > "$dir/$i.json"
  fi
done

python3 - "$dir" "${labels[@]}" <<'PY'
import json, os, sys

d, labels = sys.argv[1], sys.argv[2:]

def load(i):
    try:
        with open(os.path.join(d, f"{i}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

ref = load(0)
if ref is None:
    sys.exit(f"precision.sh: the reference '{labels[0]}' printed no result")
ref_pos = {p["position"]: p["top"] for p in ref["positions"]}
gen = ref["generated"]
print(f"| variant | positions | top-1 differs | max abs change of the reference's top-1 p | greedy tokens equal |")
print("|---|---|---|---|---|")
print(f"| {labels[0]} (reference) | {len(ref_pos)} | | | {len(gen)}/{len(gen)} |")
for i, label in enumerate(labels[1:], start=1):
    x = load(i)
    if x is None:
        print(f"| {label} | failed | | | |")
        continue
    pos = {p["position"]: p["top"] for p in x["positions"]}
    shared = sorted(set(pos) & set(ref_pos))
    differ = sum(1 for k in shared if pos[k][0][0] != ref_pos[k][0][0])
    change = 0.0
    for k in shared:
        want_id, want_p = ref_pos[k][0]
        got_p = next((p for t, p in pos[k] if t == want_id), 0.0)
        change = max(change, abs(got_p - want_p))
    g = x["generated"]
    same = next((j for j, (a, b) in enumerate(zip(gen, g)) if a != b), min(len(gen), len(g)))
    print(f"| {label} | {len(shared)} | {differ} | {change:.4g} | {same}/{len(gen)} |")
PY
