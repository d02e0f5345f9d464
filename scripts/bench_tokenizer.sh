#!/usr/bin/env bash
# Tokenizer encode speed: lmforge's BPE (bench/bench_tokenizer.cpp) beside js-tiktoken
# (tools/tiktoken_bench.mjs) on the same documents; prints a markdown table.
# Usage: scripts/bench_tokenizer.sh [BUILD_DIR]     (default: build; bench_tokenizer is rebuilt)
# Environment: RUNS (3: each figure is a median of RUNS passes), ENCODINGS
#   (gpt2,cl100k_base,o200k_base), THREADS (1,2), LMF_TOKREF_DIR (data/tokref),
#   BENCH_OUT (data/bench: the corpus and both programs' JSON go there), SOTU_DIR
#   (data/raw/sotu/package/data).
# Corpus: the State of the Union texts (data/raw/sotu/package/data/*.txt, `make corpus`), in
# file-name order, one document per file, NUL between documents (~10.8 MB). Without them,
# tests/data/sotu_sample/*.txt repeated to >= 10 MB (repeats make the piece cache look better).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
runs=${RUNS:-3}
encodings=${ENCODINGS:-gpt2,cl100k_base,o200k_base}
threads=${THREADS:-1,2}
tokref=${LMF_TOKREF_DIR:-data/tokref}
out=${BENCH_OUT:-data/bench}
corpus=$out/tokenizer_corpus.txt
mkdir -p "$out"

scripts/fetch_tokenizer_refs.sh "$tokref"

shopt -s nullglob
export LC_ALL=C  # glob order, hence the corpus, independent of the locale
files=("${SOTU_DIR:-data/raw/sotu/package/data}"/*.txt)
repeat=1
if [ ${#files[@]} -eq 0 ]; then
  files=(tests/data/sotu_sample/*.txt)
  [ ${#files[@]} -gt 0 ] || { echo "bench_tokenizer: no corpus (make corpus)" >&2; exit 1; }
  one=$(cat "${files[@]}" | wc -c)
  repeat=$(( (10000000 + one - 1) / one ))
  echo "bench_tokenizer: no SOTU corpus; tests/data/sotu_sample x $repeat" >&2
fi
for f in "${files[@]}"; do
  # A NUL inside a document would split it differently from the files.
  if [ "$(tr -d '\000' < "$f" | wc -c)" -ne "$(wc -c < "$f")" ]; then
    echo "bench_tokenizer: $f contains a NUL byte" >&2; exit 1
  fi
done
: > "$corpus"
for ((r = 0; r < repeat; ++r)); do
  for f in "${files[@]}"; do cat "$f"; printf '\0'; done >> "$corpus"
done
echo "corpus: $corpus, $(( ${#files[@]} * repeat )) documents, $(wc -c < "$corpus") bytes" >&2

bin=$build/bench/bench_tokenizer
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
if ! cmake --build "$build" --target bench_tokenizer >&2; then
  [ -x "$bin" ] || exit 1
  echo "bench_tokenizer: the build failed; running the existing $bin" >&2
fi

echo "== js-tiktoken ($(node --version))" >&2
node tools/tiktoken_bench.mjs "$corpus" "$encodings" "$runs" 1 "$tokref" > "$out/tiktoken_bench.json"
echo "== lmforge" >&2
"$bin" "$corpus" --encodings "$encodings" --threads "$threads" --runs "$runs" --tokref "$tokref" \
  --json "$out/bench_tokenizer.json" >&2

node - "$out/bench_tokenizer.json" "$out/tiktoken_bench.json" <<'EOF'
const fs = require("fs");
const [lmf, js] = process.argv.slice(2).map((f) => JSON.parse(fs.readFileSync(f, "utf8")));
const f = (x) => x.toFixed(2);
const spread = (r) => `±${((50 * (r.max_s - r.min_s)) / r.median_s).toFixed(0)}%`;
const threads = [...new Set(lmf.encodings.flatMap((e) => e.results.map((r) => r.threads)))];
const t1 = threads[0], tn = threads.at(-1);
const row = (cells) => console.log("| " + cells.join(" | ") + " |");
const head = (cols) => { row(cols); console.log("|" + cols.map(() => "---").join("|") + "|"); };
const rows = lmf.encodings.map((e) => ({
  e,
  j: js.encodings.find((x) => x.encoding === e.encoding),
  get: (c, t) => e.results.find((r) => r.cache === c && r.threads === t),
}));
console.log(`corpus ${lmf.corpus}: ${lmf.documents} documents, ${(lmf.bytes / 1e6).toFixed(2)} MB; ` +
            `median of ${lmf.runs} passes (± half the min-max spread)\n`);
console.log("Wall-clock MB/s (cold = fresh tokenizer per pass, the primary figure). Machine check: " +
            "the speedup a pure compute loop got just before, i.e. the cores free at the time.\n");
const cols = ["encoding", "js-tiktoken 1 thr"];
for (const c of ["cold", "warm"]) for (const t of threads) cols.push(`lmforge ${c} ${t} thr`);
cols.push(`lmforge cold ${t1} thr / js`, `speedup cold ${tn} thr (machine check)`, "tokens lmforge / js");
head(cols);
let ok = true;
for (const { e, j, get } of rows) {
  const cells = [e.encoding, j ? `${f(j.mb_per_s)} ${spread(j)}` : "-"];
  for (const c of ["cold", "warm"]) for (const t of threads) cells.push(`${f(get(c, t).mb_per_s)} ${spread(get(c, t))}`);
  cells.push(j ? `${f(get("cold", t1).mb_per_s / j.mb_per_s)}x` : "-");
  const check = e[`compute_speedup_${tn}`];
  cells.push(`${f(get("cold", t1).median_s / get("cold", tn).median_s)}x` + (check ? ` (${f(check)}x)` : ""));
  const same = j && j.tokens === e.tokens && j.fnv1a === e.fnv1a;
  ok &&= !!same;
  cells.push(`${e.tokens} / ${j ? j.tokens : "-"} ${same ? "(ids identical)" : "(MISMATCH)"}`);
  row(cells);
}
console.log("\nCPU-time MB/s (bytes / process CPU seconds; robust to a busy machine), " +
            `${t1} thread, and the regex pre-tokenizer alone:\n`);
head(["encoding", "js-tiktoken", "lmforge cold", "lmforge warm", "cold / js", "pre-tokenize only (wall)"]);
for (const { e, j, get } of rows) {
  const c = get("cold", t1), w = get("warm", t1);
  row([e.encoding, j ? f(j.cpu_mb_per_s) : "-", f(c.cpu_mb_per_s), f(w.cpu_mb_per_s),
       j ? `${f(c.cpu_mb_per_s / j.cpu_mb_per_s)}x` : "-",
       `${f(lmf.bytes / 1e6 / e.split_median_s)} MB/s, ${((100 * e.split_median_s) / c.median_s).toFixed(0)}% of a cold pass`]);
}
if (!ok) { console.error("bench_tokenizer: lmforge's ids differ from js-tiktoken's"); process.exit(1); }
EOF
