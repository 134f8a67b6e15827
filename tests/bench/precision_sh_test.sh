#!/usr/bin/env bash
# Drives bench/engine/precision.sh: first with a stand-in trove whose `eval` JSON moves as the
# variant's environment says (a top-1 flip, a probability change, greedy tokens that part after N,
# a failing run) and checks each table row; then with the real trove (argument 2) on a small model
# (argument 3; the trained draft fixture), where a variant with the reference's own settings must equal it everywhere — the
# JSON contract of `trove eval` that the script reads.
set -euo pipefail
script=$1 real_trove=$2 model=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/trove" <<'STUB'
#!/usr/bin/env bash
[ "${STUB_FAIL:-0}" = 1 ] && { echo "error: TROVE_X='y' is invalid" >&2; exit 1; }
echo "$*" >> "$STUB_ARGS"
p1=${STUB_P:-0.9}
flip=${STUB_FLIP:-0}   # 1: position 2047's top-1 is another token
part=${STUB_PART:-48}  # greedy tokens equal to the reference's before they part
top2047="[[500,$p1],[600,0.05]]"
[ "$flip" = 1 ] && top2047="[[600,0.6],[500,0.3]]"
gen=""
for ((i = 0; i < 48; i++)); do
  t=$((1000 + i)); [ "$i" -ge "$part" ] && t=$((2000 + i))
  gen+="${gen:+,}$t"
done
echo "{\"device\":\"stub\",\"generated\":[$gen],\"positions\":[{\"position\":2047,\"top\":$top2047},{\"position\":4095,\"top\":[[700,0.99],[800,0.01]]}]}"
STUB
chmod +x "$dir/trove"
export STUB_ARGS="$dir/args"
fail() { echo "FAIL: $*"; echo "--- output:"; cat "$dir/out"; exit 1; }
expect() { grep -qxF -- "$1" "$dir/out" || fail "missing row: $1"; }

TROVE="$dir/trove" bash "$script" --model m.gguf f32 same:STUB_P=0.9 moved:STUB_P=0.85 flip:STUB_FLIP=1 \
  part:STUB_PART=7 both:STUB_P=0.8,STUB_PART=0 bad:STUB_FAIL=1 > "$dir/out" 2> "$dir/err"
expect "| variant | positions | top-1 differs | max abs change of the reference's top-1 p | greedy tokens equal |"
expect "| f32 (reference) | 2 | | | 48/48 |"
expect "| same | 2 | 0 | 0 | 48/48 |"
expect "| moved | 2 | 0 | 0.05 | 48/48 |"
expect "| flip | 2 | 1 | 0.6 | 48/48 |"
expect "| part | 2 | 0 | 0 | 7/48 |"
expect "| both | 2 | 0 | 0.1 | 0/48 |"
expect "| bad | failed | | | |"
grep -q "variant 'bad' failed: error: TROVE_X='y' is invalid" "$dir/err" || fail "no message for the failing variant"
# Every run: the same prompt file, steps of 2048 in a batch of 2048, 8 probabilities, 48 tokens.
[ "$(grep -c -- '--chunk 2048 --batch 2048 --top 8 --generate 48' "$dir/args")" = 6 ] || fail "arguments: $(cat "$dir/args")"
[ "$(grep -oE 'tokens @[^ ]+' "$dir/args" | sort -u | wc -l)" = 1 ] || fail "the variants read different prompts"

# A reference that fails leaves nothing to compare against: an error, not a table.
if TROVE="$dir/trove" bash "$script" --model m.gguf ref:STUB_FAIL=1 other > "$dir/out" 2> "$dir/err"; then fail "a failed reference passed"; fi
grep -q "the reference 'ref' printed no result" "$dir/err" || fail "no message for the failed reference: $(cat "$dir/err")"

# Refusals: one variant, a bad number, an unknown option.
for args in "--model m.gguf f32" "--model m.gguf --chunk x a b" "--model m.gguf --bogus a b"; do
  # shellcheck disable=SC2086
  if TROVE="$dir/trove" bash "$script" $args > "$dir/out" 2>&1; then fail "accepted: $args"; fi
done

# The real trove: the same settings twice give the same numbers.
TROVE="$real_trove" bash "$script" --model "$model" --prompt 40 --chunk 8 --generate 6 ref again > "$dir/out"
expect "| ref (reference) | 40 | | | 6/6 |"
expect "| again | 40 | 0 | 0 | 6/6 |"
echo "precision.sh: all checks passed"
