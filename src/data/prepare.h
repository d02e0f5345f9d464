#pragma once
// prepare: text corpora -> token shards + manifest.json.
//
// Inputs are files or directories. A directory is walked recursively; its regular files with
// extension .txt .md .text .jsonl .ndjson are taken, and the same followed by .gz (gzip) or
// .zst (zstd), others skipped, in sorted path order. A file named explicitly is always taken:
// .jsonl / .ndjson (optionally + .gz / .zst) as JSON lines, anything else as text. The type is
// the extension under the compression suffix: x.jsonl.zst is JSON lines, x.txt.gz text.
//  - Compressed files are decompressed as a stream (concatenated gzip members and zstd frames
//    are read in order). Corrupt or truncated data is a UserError "file F: corrupt gzip data:
//    ..." (or "zstd").
//  - A text file is one document. Its bytes are tokenized as they are: the byte tokenizer
//    accepts invalid UTF-8 (it round-trips any bytes), so no validation is done.
//  - A JSON-lines file has one document per non-blank line: the string field `text_field` of
//    the object on that line. A line that is not JSON, not an object, lacks the field or whose
//    field is not a string is a UserError "file F line N: ...". It is read in chunks of lines,
//    so only one chunk of its text is in memory at a time.
//  - Empty documents (zero bytes) are skipped and not counted.
// Every document is followed by the tokenizer's EOT token.
//
// Metadata conditioning (MeCo, Gao et al. 2025, "Metadata Conditioning Accelerates Language
// Model Pre-training"): with a non-empty `metadata_field`, a second set of training shards is
// written to out_dir/meco/ (train_*.bin and its own manifest.json, no validation shards), in
// which every training document is tokenized as metadata_template (each "{}" replaced by the
// metadata) followed by the document's text. The metadata is the JSON-lines object's string
// field `metadata_field` (a line without it is a UserError "file F line N: ..."), and for a text
// file its path relative to the input directory it was found in (its file name when named
// explicitly). The documents, their order and the validation split are those of the plain
// shards, which are the same as without metadata. The trainer's [data] mixture and
// cooldown_mixture switch from out_dir/meco to out_dir for the final part of training.
//
// Validation split: document i (in input order) goes to validation when a Philox draw
// u(seed, i) < val_fraction. When there are >= 2 documents and val_fraction > 0, at least one
// goes to each split: if the draws put none in one split, the last document goes there. With a
// single document its last max(val_fraction, 1%) of tokens (at least one) go to validation
// (and the same number of tokens is cut from the end of its metadata-prefixed version).
// val_fraction = 0 writes no validation shards.
//
// Output in out_dir (created if missing): train_000000.bin ..., val_000000.bin ...,
// manifest.json, and meco/ (above). Shards of a previous run (train_*.bin, val_*.bin,
// manifest.json, in out_dir and out_dir/meco) are removed first; on failure the files this run
// wrote are removed too, so out_dir never holds a mix. Every file is written to a temporary
// name and renamed when complete.
//
// Memory: the tokens of one shard being filled (per split) plus one group of input files
// (~64 MB of text, or one larger file; a compressed file counts 4x its size). Files in a group
// are tokenized in parallel (OpenMP; the lines of one large JSON-lines file too); a JSON-lines
// file alone in its group is written out chunk by chunk. Output order and content do not
// depend on the thread count.
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
  std::string text_field = "text";           // for .jsonl / .ndjson inputs
  double val_fraction = 0.005;               // of documents, in [0, 1)
  uint64_t shard_tokens = 100'000'000;       // max tokens per shard, > 0
  uint64_t seed = 1337;                      // which documents go to validation
  int threads = 0;                           // 0 = all
  std::string metadata_field{};              // non-empty: also write MeCo shards to out_dir/meco
  std::string metadata_template = "{}\n\n";  // prefix of each MeCo document; "{}" = metadata
  std::string license{};                     // recorded in the manifest (e.g. "public domain")
};

struct PrepareReport {
  uint64_t documents = 0;
  uint64_t train_tokens = 0;
  uint64_t val_tokens = 0;
  uint64_t bytes_read = 0;                         // of text, after decompression
  std::vector<std::filesystem::path> shards;       // train shards, then val shards
  uint64_t meco_train_tokens = 0;                  // with metadata_field only
  std::vector<std::filesystem::path> meco_shards;  // out_dir/meco/train_*.bin
};

// `progress(bytes_done, bytes_total)` is called from the calling thread after each input file.
PrepareReport prepare(const PrepareOptions& opts,
                      std::function<void(uint64_t bytes_done, uint64_t bytes_total)> progress = {});

}  // namespace lmf::data
