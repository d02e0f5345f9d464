#pragma once
// Training a byte-level BPE vocabulary (GPT-2 style, like Hugging Face `tokenizers`' BpeTrainer
// with a ByteLevel pre-tokenizer), and writing it as a Hugging Face tokenizer.json.
//
// 1. Count pieces. The corpus is pre-tokenized into pieces (words with their leading space);
//    identical pieces are counted once with a frequency. Work is split into ~1 MiB chunks that
//    end after a '\n' followed by a printable ASCII byte, a place where GPT-2's, cl100k's and
//    the simple splitter's patterns always cut, so chunking changes no piece. Chunks are counted
//    in parallel (OpenMP) into per-thread maps that are then summed: counts, and so the merges,
//    do not depend on the thread count. Occurrences of the special tokens are cut out of the
//    text first, so they are never learned.
// 2. Merge. Each unique piece is a sequence of token ids (initially its bytes). Repeatedly the
//    most frequent adjacent pair (summed over pieces, times their frequency) becomes a new
//    token; ties go to the pair whose (left bytes, right bytes) is lexicographically smallest.
//    Pieces are merged left to right, non-overlapping ("aaa" -> "aa" "a"). Pair counts are kept
//    incrementally with a max-heap invalidated lazily (counts of existing pairs only decrease,
//    so a popped entry whose count is stale is pushed back with the current count) and an index
//    pair -> pieces containing it.
//
// Token ids: 0..255 are the bytes in byte order, 256 + i is merge i, then the special tokens in
// the order given (<|endoftext|> by default, which is then the last id).
//
// Inputs are files or directories, as for `prepare`: a directory is walked recursively for
// .txt .md .text .jsonl .ndjson files, in sorted order; a file named explicitly is always read;
// .jsonl / .ndjson files give one document per non-blank line (the string field `text_field`).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lmf::data {

// Appends the pieces of `text` to `out` (views into `text`); the pieces must concatenate to
// `text`. Called concurrently from several threads. Matches `PreTokenizer::split`
// (pretokenize.h), so a PCRE2 GPT-2 splitter plugs in with a one-line lambda.
using PreTokenizeFn =
    std::function<void(std::string_view text, std::vector<std::string_view>& out)>;

// A dependency-free approximation of GPT-2's split pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with ASCII classes: letters are A-Z a-z and every byte >= 0x80 (so UTF-8 text, including
// non-ASCII punctuation and spaces, joins the letter runs), digits 0-9, whitespace
// " \t\n\v\f\r", other = the remaining ASCII bytes.
void simple_pretokenize(std::string_view text, std::vector<std::string_view>& out);

struct BpeTrainOptions {
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // ids after the merges
  PreTokenizeFn pretokenize;                                    // empty: simple_pretokenize
  int threads = 0;            // counting threads; 0 = OpenMP's default
  int64_t min_frequency = 0;  // stop merging when the best pair occurs fewer times (>= 1 anyway)
  std::string text_field = "text";  // for .jsonl / .ndjson inputs
  // Progress lines ("counted ...", "merge 1000/31743 ..."); called from the calling thread.
  std::function<void(const std::string&)> log;
};

struct BpeTrainStats {
  uint64_t files = 0;
  uint64_t bytes = 0;   // text bytes pre-tokenized
  uint64_t pieces = 0;  // pieces counted (with repetition)
  uint64_t unique_pieces = 0;
  double count_seconds = 0;
  double merge_seconds = 0;
};

struct BpeTrainResult {
  std::vector<std::string> tokens;                  // (vocab) id -> bytes; specials last
  std::vector<std::pair<int32_t, int32_t>> merges;  // (n_merges) merge i makes id 256 + i
  int32_t n_special = 0;                            // the last n_special tokens are special
  int32_t eot_id = -1;  // id of "<|endoftext|>" if it is a special token, else -1
  BpeTrainStats stats;
  int vocab_size() const { return static_cast<int>(tokens.size()); }
};

// vocab_size counts the 256 bytes, the merges and the special tokens. When the corpus runs out
// of pairs first (every piece a single token, or min_frequency reached), the vocabulary is
// smaller. Bad inputs (missing files, bad JSON lines, vocab_size < 256 + specials, duplicate
// specials) are UserErrors.
BpeTrainResult train_bpe(const std::vector<std::filesystem::path>& files_or_dirs, int vocab_size,
                         const BpeTrainOptions& opts = {});

// The same on in-memory documents (tests, callers that already hold the text).
BpeTrainResult train_bpe_texts(const std::vector<std::string>& documents, int vocab_size,
                               const BpeTrainOptions& opts = {});

// GPT-2's bytes_to_unicode: byte -> the UTF-8 of the code point that stands for it in
// vocab.json / tokenizer.json (printable bytes stand for themselves, others map to U+0100...).
const std::string& byte_to_unicode(uint8_t b);
std::string bytes_to_unicode_string(std::string_view bytes);

// Writes a Hugging Face tokenizer.json (model BPE, ByteLevel pre-tokenizer / decoder /
// post-processor, merges as "a b" strings) atomically: PATH.tmp, then renamed over PATH.
void save_hf_tokenizer_json(const BpeTrainResult& result, const std::filesystem::path& path);

}  // namespace lmf::data
