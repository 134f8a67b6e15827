#!/usr/bin/env bash
# Installs the peer for bench/peer/bench_peer.mjs into bench/peer/node_modules: node-llama-cpp with
# llama.cpp's prebuilt Vulkan build (@node-llama-cpp/linux-x64-vulkan) and its CPU build (the fallback
# that lets the script run on a machine without a usable Vulkan device), pinned by this folder's
# package-lock.json to the repository root's node-llama-cpp version.
#
#   bench/peer/install.sh
#
# Needs npm and the registry (the dev machine, not the GPU machine: scripts/device-bundle.sh packs what
# is installed here for that one). --omit=optional keeps node-llama-cpp's other platforms' builds out
# (hundreds of MB); --ignore-scripts skips its postinstall, which would look for or build binaries.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error
echo "bench/peer: installed $(node -p 'require("./node_modules/node-llama-cpp/package.json").version') with" \
  "$(ls node_modules/@node-llama-cpp | tr '\n' ' ')"
