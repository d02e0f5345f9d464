// js-tiktoken encode speed on the corpus that bench/bench_tokenizer.cpp reads, for comparison.
// Usage: node tools/tiktoken_bench.mjs CORPUS [ENCODINGS] [RUNS] [WARMUP] [TOKREF_DIR]
//   CORPUS: documents separated by NUL bytes, read as UTF-8 (scripts/bench_tokenizer.sh).
//   ENCODINGS: comma-separated (default gpt2,cl100k_base,o200k_base); RUNS (default 3) timed
//   passes, after WARMUP (default 1) untimed ones that let V8 compile the hot paths.
//   TOKREF_DIR (default: $LMF_TOKREF_DIR, else data/tokref) holds node_modules/js-tiktoken.
// A pass encodes every document with encode(doc, [], []) (special-token text as ordinary text,
// as tools/tiktoken_encode.mjs does), one thread. js-tiktoken keeps no piece cache, so every
// pass costs the same once V8 is warm. MB/s = UTF-8 bytes / 1e6 / median pass seconds.
// Beside wall time, process CPU time (user + system, V8's GC and compiler threads included):
// cpu MB/s = bytes / CPU seconds, what a core of its own would reach on a shared machine.
// Prints one JSON object: per encoding the figures, the token count and a 32-bit FNV-1a hash
// of all ids in document order (the same hash bench_tokenizer prints).
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [corpus, encArg, runsArg, warmArg, dirArg] = process.argv.slice(2);
if (!corpus) {
  console.error("usage: node tools/tiktoken_bench.mjs CORPUS [ENCODINGS] [RUNS] [WARMUP] [TOKREF_DIR]");
  process.exit(2);
}
const encodings = (encArg || "gpt2,cl100k_base,o200k_base").split(",").filter(Boolean);
const runs = Math.max(1, Number(runsArg || 3));
const warmup = Math.max(0, Number(warmArg ?? 1));
const dir = resolve(dirArg || process.env.LMF_TOKREF_DIR || "data/tokref", "node_modules/js-tiktoken/dist");
const { Tiktoken } = await import(pathToFileURL(`${dir}/lite.js`).href);

const docs = readFileSync(corpus, "utf8").split("\0").filter((d) => d.length > 0);
const bytes = docs.reduce((s, d) => s + Buffer.byteLength(d, "utf8"), 0);
const mb = bytes / 1e6;
const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
};
const now = () => Number(process.hrtime.bigint()) / 1e9;
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

const out = { corpus, documents: docs.length, bytes, runs, warmup, node: process.version, encodings: [] };
for (const enc of encodings) {
  let t0 = now();
  const ranks = (await import(pathToFileURL(`${dir}/ranks/${enc}.js`).href)).default;
  const tok = new Tiktoken(ranks);
  const load_s = now() - t0;

  let ids = null;
  const pass = () => {
    ids = new Array(docs.length);
    const c = cpu();
    const t = now();
    for (let i = 0; i < docs.length; ++i) ids[i] = tok.encode(docs[i], [], []);
    return [now() - t, cpu() - c];
  };
  for (let w = 0; w < warmup; ++w) pass();
  const times = [];
  const cpus = [];
  for (let r = 0; r < runs; ++r) {
    const [w, c] = pass();
    times.push(w);
    cpus.push(c);
  }

  let h = 2166136261 >>> 0;
  let tokens = 0;
  for (const d of ids) {
    for (const id of d) h = Math.imul((h ^ id) >>> 0, 16777619) >>> 0;
    tokens += d.length;
  }
  const med = median(times);
  out.encodings.push({
    encoding: enc,
    load_s,
    median_s: med,
    min_s: Math.min(...times),
    max_s: Math.max(...times),
    mb_per_s: mb / med,
    cpu_median_s: median(cpus),
    cpu_mb_per_s: mb / median(cpus),
    tokens,
    fnv1a: h,
  });
  console.error(`${enc}: ${(mb / med).toFixed(2)} MB/s (${med.toFixed(3)} s [${Math.min(...times).toFixed(3)}, ${Math.max(...times).toFixed(3)}]; cpu ${(mb / median(cpus)).toFixed(2)} MB/s), ${tokens} tokens`);
}
process.stdout.write(JSON.stringify(out, null, 1) + "\n");
