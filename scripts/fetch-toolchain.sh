#!/usr/bin/env bash
# Builds the shader compiler trove needs when Debian 12's is too old, and fetches newer Vulkan headers:
#   scripts/fetch-toolchain.sh DEST
# - glslangValidator from Debian 13's glslang source package (pinned: GLSLANG_VERSION), built with
#   ENABLE_OPT=OFF into DEST/bin (glslang >= 14 knows GL_KHR_cooperative_matrix; Debian 12 has 12).
# - the Vulkan headers of Debian 13's libvulkan-dev (pinned: VULKAN_VERSION) into DEST/include (they
#   know VK_KHR_cooperative_matrix; the loader stays the system's).
# apt runs with a private sources list, state and cache directory under a temporary directory: the
# system's apt configuration is neither read for sources nor changed. Called by cmake/Glslang.cmake.
set -euo pipefail
dest=$(realpath -m "$1")
GLSLANG_VERSION=15.1.0+1.4.309.0-1
VULKAN_VERSION=1.4.309.0-1
MIRROR=${TROVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial"
touch "$work/state/status"
printf 'deb %s trixie main\ndeb-src %s trixie main\n' "$MIRROR" "$MIRROR" > "$work/sources.list"
apt_opts=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State=$work/state" -o "Dir::State::status=$work/state/status" -o "Dir::Cache=$work/cache"
          -o Debug::NoLocking=1)
# As root apt would hand downloads to the _apt user, who cannot write into our private directory.
[ "$(id -u)" -eq 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

echo "fetch-toolchain: Debian 13 package lists (private to this build)"
apt-get "${apt_opts[@]}" update >/dev/null
cd "$work"
apt-get "${apt_opts[@]}" source --download-only "glslang=$GLSLANG_VERSION" >/dev/null
apt-get "${apt_opts[@]}" download "libvulkan-dev=$VULKAN_VERSION" >/dev/null

echo "fetch-toolchain: building glslang $GLSLANG_VERSION (glslangValidator only, ENABLE_OPT=OFF)"
tar -xzf glslang_*.orig.tar.gz
src=$(find "$work" -maxdepth 1 -type d -name 'glslang-*' | head -1)
mkdir -p "$dest"
log="$dest/glslang-build.log"
if ! { cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DENABLE_OPT=OFF -DGLSLANG_TESTS=OFF \
         -DBUILD_SHARED_LIBS=OFF -DENABLE_GLSLANG_BINARIES=ON &&
       cmake --build "$work/build" -j"$(nproc)" --target glslang-standalone; } >"$log" 2>&1; then
  echo "fetch-toolchain: the glslang build failed; see $log" >&2
  exit 1
fi
mkdir -p "$dest/bin"
cp "$work/build/StandAlone/glslang" "$dest/bin/glslangValidator.tmp"
mv "$dest/bin/glslangValidator.tmp" "$dest/bin/glslangValidator"

echo "fetch-toolchain: Vulkan headers $VULKAN_VERSION"
dpkg-deb -x libvulkan-dev_*.deb "$work/vk"
rm -rf "$dest/include"
mkdir -p "$dest/include"
cp -r "$work/vk/usr/include/vulkan" "$work/vk/usr/include/vk_video" "$dest/include/"
"$dest/bin/glslangValidator" --version | head -1
