#!/usr/bin/env bash
# Pack built programs and the shared libraries they need (those a stock CUDA image lacks) into
# one archive, to run them on a machine that has the GPU but not this project's build
# dependencies. Usage: scripts/device_bundle.sh BUILD_DIR OUT.txz [PROGRAM...]
# PROGRAM paths are relative to BUILD_DIR. Default: what scripts/device_check.sh runs (lmforge,
# the GPU tests, test_nccl and the kernel lab); the CPU tests need no GPU.
# On the other machine (device_check.sh does this):
#   mkdir -p /tmp/lmf && tar -xJf OUT.txz -C /tmp/lmf && export LD_LIBRARY_PATH=/tmp/lmf/lib:/usr/local/cuda/lib64
#
# Size: the device tool carries at most 64 MiB with the working tree. Each CUDA program holds the
# same fatbin (about 16 MB: sm_90 code, compute_90 PTX and -lineinfo, which compute-sanitizer and
# ncu use to name source lines), so the archive is one xz stream with a 64 MiB dictionary: a
# program's fatbin is a back-reference to the previous one's. 8 programs: about 12 MB (gzip,
# file by file: 52 MB). Over LMF_BUNDLE_MAX_MB (default 40) it stops with one line.
set -euo pipefail
build=$1; out=$2; shift 2
progs=("$@")
if [ ${#progs[@]} -eq 0 ]; then
  progs=(lmforge bench/kernel_lab $(cd "$build" && ls tests/test_cuda_* tests/test_nccl 2>/dev/null | grep -v '\.cmake$'))
fi
stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for p in "${progs[@]}"; do
  [ -x "$build/$p" ] || { echo "device_bundle.sh: $build/$p: not a built program" >&2; exit 2; }
  strip -o "$stage/bin/$(basename "$p")" "$build/$p"
  # libc, libm, libstdc++, libgcc_s and the loader come from the target system (newer there), and
  # so do CUDA's own libraries (cuBLAS: hundreds of MB; the GPU machine has the same CUDA 13).
  ldd "$build/$p" | awk '/=> \// {print $3}' |
    (grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt)\.so|/cuda[^/]*/|libcublas|libnvJitLink' || true) |
    while read -r lib; do cp -nL "$lib" "$stage/lib/"; done
done
# Single-threaded: xz's threads would cut the stream into blocks that cannot refer to each other.
tar -cf - -C "$stage" bin lib | xz -9 -T1 > "$out"
bytes=$(stat -c %s "$out")
echo "$out: $((bytes / 1048576)) MiB, ${#progs[@]} programs, $(ls "$stage/lib" | wc -l) libraries"
max=${LMF_BUNDLE_MAX_MB:-40}
if [ "$bytes" -gt $((max * 1048576)) ]; then
  echo "device_bundle.sh: $out is $((bytes / 1048576)) MiB, over LMF_BUNDLE_MAX_MB=$max (the device tool carries 64 MiB with the tree): name fewer programs" >&2
  exit 1
fi
