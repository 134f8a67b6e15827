# shellcheck shell=bash
# The first thing of every call on the GPU machine, sourced from the repository root:
#
#   . scripts/device-run.sh || exit 1; trove mkmodel ...; bench_engine ...
#
# Sets up what scripts/device-bundle.sh packed on the dev machine (carried as .dev/ and .gl/):
#   - the Vulkan loader and GL dispatch libraries from .gl/*.deb (dpkg -x into /, ldconfig) when the
#     machine has no libvulkan.so.1;
#   - .dev/trove.tar.xz into $TROVE_DEV_DIR/trove (default /tmp/trove-dev) and its bin/ on PATH: trove,
#     bench_* and the kernel and engine tests, each a wrapper that finds its Debian 12 libraries;
#     TROVE_QWEN3_TOKENIZER_DIR for `trove mkmodel`;
#   - .dev/peer.tar.xz (when carried) into $TROVE_DEV_DIR/peer: node on PATH, and bench/peer/node_modules
#     linked to its node-llama-cpp, so `node bench/peer/bench_peer.mjs` runs as on the dev machine;
#   - VK_DRIVER_FILES pointed at the NVIDIA ICD when the loader finds no GPU by itself;
# then prints the Vulkan device trove sees (`trove version --device`) and returns non-zero when there
# is none. An archive already unpacked (same checksum) is not unpacked again.
# Needs tar, dpkg and xz or python3 (its lzma module), which an Ubuntu image has.

trove_device_run() {
  local root=$PWD dev=${TROVE_DEV_DIR:-/tmp/trove-dev} bundle=${TROVE_DEV_BUNDLE:-.dev}
  local nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json

  unpack() {  # unpack ARCHIVE DIR, unless DIR holds this very archive already
    local sum
    sum=$(cksum < "$1")
    [ -f "$2/.unpacked" ] && [ "$(cat "$2/.unpacked")" = "$sum" ] && return 0
    rm -rf "$2" && mkdir -p "$2" || return 1
    if command -v xz >/dev/null 2>&1; then
      xz -dc "$1" | tar -xf - -C "$2" || return 1
    else
      python3 - "$1" "$2" <<'PY' || return 1
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as t:
    t.extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
PY
    fi
    echo "$sum" > "$2/.unpacked"
  }

  if ! ldconfig -p | grep -q 'libvulkan\.so\.1 '; then
    if ! ls "$root"/.gl/*.deb >/dev/null 2>&1; then
      echo "device-run: no Vulkan loader here and no .gl/*.deb carried (scripts/device-bundle.sh fills .gl/)" >&2
      return 1
    fi
    local f
    for f in "$root"/.gl/*.deb; do dpkg -x "$f" / || return 1; done
    ldconfig
  fi

  if [ -f "$root/$bundle/trove.tar.xz" ]; then
    unpack "$root/$bundle/trove.tar.xz" "$dev/trove" || { echo "device-run: could not unpack $bundle/trove.tar.xz" >&2; return 1; }
    export PATH="$dev/trove/bin:$PATH"
    export TROVE_QWEN3_TOKENIZER_DIR="$dev/trove/tokenizer"
    echo "device-run: $(head -1 "$dev/trove/MANIFEST")"
  fi
  if [ -f "$root/$bundle/peer.tar.xz" ]; then
    unpack "$root/$bundle/peer.tar.xz" "$dev/peer" || { echo "device-run: could not unpack $bundle/peer.tar.xz" >&2; return 1; }
    export PATH="$dev/peer/bin:$PATH"
    rm -rf "$root/bench/peer/node_modules"
    ln -s "$dev/peer/node_modules" "$root/bench/peer/node_modules"
    echo "device-run: peer: node $("$dev/peer/bin/node" --version), node-llama-cpp $("$dev/peer/bin/node" -p \
      'require(process.argv[1]).version' "$dev/peer/node_modules/node-llama-cpp/package.json")"
  fi
  if ! command -v trove >/dev/null 2>&1; then
    if [ -f "$root/$bundle/peer.tar.xz" ]; then
      echo "device-run: no $bundle/trove.tar.xz carried: the peer alone (no trove, no device check)"
      return 0
    fi
    echo "device-run: nothing to run: carry $bundle/trove.tar.xz and/or $bundle/peer.tar.xz (scripts/device-bundle.sh)" >&2
    return 1
  fi

  # The device trove would use; the NVIDIA ICD's own manifest when the loader's search finds no GPU.
  local line
  line=$(trove version --device 2>&1 | grep -E '^vulkan:|error')
  if ! grep -q '^vulkan:' <<<"$line" || grep -q 'CPU device' <<<"$line"; then
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ]; then
      export VK_DRIVER_FILES=$nvidia_icd
      line=$(trove version --device 2>&1 | grep -E '^vulkan:|error')
    fi
  fi
  echo "device-run: $line${VK_DRIVER_FILES:+ (VK_DRIVER_FILES=$VK_DRIVER_FILES)}"
  grep -q '^vulkan:' <<<"$line"
}

trove_device_run
__trove_device_rc=$?
unset -f trove_device_run unpack
(return 0 2>/dev/null) && return $__trove_device_rc
exit $__trove_device_rc
