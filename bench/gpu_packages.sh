#!/usr/bin/env bash
# Run here (where Debian's archive is reachable): downloads the Debian 12 packages that the
# engine-only build needs beside libtorch (Abseil, nlohmann-json, SentencePiece, PCRE2,
# pkg-config, GoogleTest) into bench/gpu-packages/, which git ignores. Carry that folder to a
# GPU machine (device tool: carry ["bench/gpu-packages"]), where bench/run_gpu.sh unpacks it
# into a prefix with dpkg -x, never into /.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/gpu-packages
mkdir -p "$out"
packages=(libabsl-dev libabsl20220623 nlohmann-json3-dev libsentencepiece-dev libsentencepiece0
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 pkgconf pkgconf-bin libpkgconf3
  libgtest-dev googletest)
(cd "$out" && apt-get download "${packages[@]}" 2>&1 | grep -v "unsandboxed" || true)
ls "$out"/*.deb | wc -l | xargs echo "packages in $out:"
