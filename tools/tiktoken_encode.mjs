// The reference encoder: js-tiktoken, as fetched by scripts/fetch_tokenizer_refs.sh.
// Usage: node tools/tiktoken_encode.mjs ENCODING INPUT [OUTPUT] [TOKREF_DIR]
//   ENCODING: gpt2 | r50k_base | p50k_base | cl100k_base | o200k_base
//   INPUT is read as UTF-8; special-token text is encoded as ordinary text (encode_ordinary).
//   Prints the ids, space-separated, to OUTPUT (or stdout).
//   TOKREF_DIR (default: $LMF_TOKREF_DIR, else data/tokref) holds node_modules/js-tiktoken.
import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [enc, input, output, dirArg] = process.argv.slice(2);
if (!enc || !input) {
  console.error("usage: node tools/tiktoken_encode.mjs ENCODING INPUT [OUTPUT] [TOKREF_DIR]");
  process.exit(2);
}
const dir = resolve(dirArg || process.env.LMF_TOKREF_DIR || "data/tokref", "node_modules/js-tiktoken/dist");
const { Tiktoken } = await import(pathToFileURL(`${dir}/lite.js`).href);
const ranks = (await import(pathToFileURL(`${dir}/ranks/${enc}.js`).href)).default;
const tok = new Tiktoken(ranks);
const ids = tok.encode(readFileSync(input, "utf8"), [], []);
const text = ids.join(" ") + "\n";
if (output) writeFileSync(output, text);
else process.stdout.write(text);
