#!/usr/bin/env bash
# Pack built programs and the shared libraries they need (those a stock CUDA image lacks) into
# one archive, to run them on a machine that has the GPU but not this project's build
# dependencies. Usage: scripts/device_bundle.sh BUILD_DIR OUT.tgz [PROGRAM...]
# PROGRAM paths are relative to BUILD_DIR (default: lmforge, every test and the kernel lab). On the other machine:
#   mkdir -p /tmp/lmf && tar -xzf OUT.tgz -C /tmp/lmf && export LD_LIBRARY_PATH=/tmp/lmf/lib:/usr/local/cuda/lib64
set -euo pipefail
build=$1; out=$2; shift 2
progs=("$@")
if [ ${#progs[@]} -eq 0 ]; then
  progs=(lmforge $(cd "$build" && ls tests/test_* bench/kernel_lab 2>/dev/null | grep -v '\.cmake$'))
fi
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for p in "${progs[@]}"; do
  strip -o "$stage/bin/$(basename "$p")" "$build/$p"
  # libc, libm, libstdc++, libgcc_s and the loader come from the target system (newer there), and
  # so do CUDA's own libraries (cuBLAS: hundreds of MB; the GPU machine has the same CUDA 13).
  ldd "$build/$p" | awk '/=> \// {print $3}' |
    (grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt)\.so|/cuda[^/]*/|libcublas|libnvJitLink' || true) |
    while read -r lib; do cp -nL "$lib" "$stage/lib/"; done
done
tar -czf "$out" -C "$stage" bin lib
echo "$out: $(du -h "$out" | cut -f1), ${#progs[@]} programs, $(ls "$stage/lib" | wc -l) libraries"
