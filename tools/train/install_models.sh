#!/usr/bin/env bash
# After the device call (tools/train/DEVICE_COMMAND.txt): join and check the returned models and put them
# into tests/fixtures/models/ with the training log.
#   tools/train/install_models.sh DIR [TROVE]   DIR: the call's returned files (NAME.gguf.gz.00, ..., train_log.txt)
# Each NAME.gguf is rebuilt from its gzip parts, its sha256 compared with the one train.py logged, and
# shown by `trove info`, then kept xz-compressed as NAME.gguf.xz with its sum in SHA256SUMS (the build
# unpacks and checks it into build/fixtures/models/, tests/train/CMakeLists.txt).
set -euo pipefail
dir=${1:?usage: tools/train/install_models.sh DIR [TROVE]}
trove=${2:-build/trove}
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=$root/tests/fixtures/models
mkdir -p "$dest"
[ -f "$dir/train_log.txt" ] || { echo "no train_log.txt in $dir: is it the device call's output folder?" >&2; exit 1; }
found=0
for first in "$dir"/*.gguf.gz.00; do
  [ -e "$first" ] || continue
  name=$(basename "$first" .gz.00)
  cat "$dir/$name".gz.[0-9][0-9] | gunzip > "$dest/$name.tmp"
  want=$(grep -o "${name%.gguf}: exported in [^(]*(sha256 [0-9a-f]*" "$dir/train_log.txt" | grep -o '[0-9a-f]\{64\}' | tail -1 || true)
  got=$(sha256sum "$dest/$name.tmp" | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then
    echo "$name: sha256 $got differs from the logged ${want:-(none)}: parts missing or damaged" >&2
    rm -f "$dest/$name.tmp"
    exit 1
  fi
  mv "$dest/$name.tmp" "$dest/$name"
  echo "$name: $(stat -c %s "$dest/$name") bytes, sha256 ok"
  "$trove" info "$dest/$name"
  xz -9 -T2 -c "$dest/$name" > "$dest/$name.xz"
  touch "$dest/SHA256SUMS"
  grep -v " $name\$" "$dest/SHA256SUMS" > "$dest/SHA256SUMS.tmp" || true
  echo "$got  $name" >> "$dest/SHA256SUMS.tmp"
  mv "$dest/SHA256SUMS.tmp" "$dest/SHA256SUMS"
  rm -f "$dest/$name"
  found=$((found + 1))
done
[ "$found" -gt 0 ] || { echo "no NAME.gguf.gz.00 in $dir" >&2; exit 1; }
cp "$dir/train_log.txt" "$dest/train_log.txt" && chmod u+w "$dest/train_log.txt"
echo "installed $found models and train_log.txt into $dest"
