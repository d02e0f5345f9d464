#pragma once
// prepare: text corpora -> token shards + manifest.json.
//
// Inputs are files or directories. A directory is walked recursively; its regular files with
// extension .txt .md .text .jsonl .ndjson are taken, others skipped, in sorted path order. A
// file named explicitly is always taken: .jsonl / .ndjson as JSON lines, anything else as text.
//  - A text file is one document. Its bytes are tokenized as they are: the byte tokenizer
//    accepts invalid UTF-8 (it round-trips any bytes), so no validation is done.
//  - A JSON-lines file has one document per non-blank line: the string field `text_field` of
//    the object on that line. A line that is not JSON, not an object, lacks the field or whose
//    field is not a string is a UserError "file F line N: ...".
//  - Empty documents (zero bytes) are skipped and not counted.
// Every document is followed by the tokenizer's EOT token.
//
// Validation split: document i (in input order) goes to validation when a Philox draw
// u(seed, i) < val_fraction. When there are >= 2 documents and val_fraction > 0, at least one
// goes to each split: if the draws put none in one split, the last document goes there. With a
// single document its last max(val_fraction, 1%) of tokens (at least one) go to validation.
// val_fraction = 0 writes no validation shards.
//
// Output in out_dir (created if missing): train_000000.bin ..., val_000000.bin ...,
// manifest.json. Shards of a previous run (train_*.bin, val_*.bin, manifest.json) are removed
// first; on failure the files this run wrote are removed too, so out_dir never holds a mix.
// Every file is written to a temporary name and renamed when complete.
//
// Memory: the tokens of one shard being filled (per split) plus one group of input files
// (~64 MB of text, or one larger file). Files in a group are tokenized in parallel (OpenMP;
// the lines of one large JSON-lines file too); output order and content do not depend on the
// thread count.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace lmf::data {

struct PrepareOptions {
  std::vector<std::filesystem::path> inputs;  // files or directories
  std::filesystem::path out_dir;
  std::string tokenizer = "byte";
  std::string text_field = "text";      // for .jsonl / .ndjson inputs
  double val_fraction = 0.005;          // of documents, in [0, 1)
  uint64_t shard_tokens = 100'000'000;  // max tokens per shard, > 0
  uint64_t seed = 1337;                 // which documents go to validation
  int threads = 0;                      // 0 = all
};

struct PrepareReport {
  uint64_t documents = 0;
  uint64_t train_tokens = 0;
  uint64_t val_tokens = 0;
  uint64_t bytes_read = 0;
  std::vector<std::filesystem::path> shards;  // train shards, then val shards
};

// `progress(bytes_done, bytes_total)` is called from the calling thread after each input file.
PrepareReport prepare(const PrepareOptions& opts,
                      std::function<void(uint64_t bytes_done, uint64_t bytes_total)> progress = {});

}  // namespace lmf::data
