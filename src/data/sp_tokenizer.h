#pragma once
// llama2.c's SentencePiece-style tokenizer (`tokenizer.bin`, e.g. the 512-token `tok512.bin` of
// stories260K), with the same encode and decode as llama2.c's `run.c`.
//
// File (little-endian): int32 max_token_length, then per token: float32 score, int32 byte
// length, the bytes. The token count is not stored: llama2.c takes it from the model header, so
// `load` takes it as a parameter and otherwise reads tokens until the end of the file.
// Ids 0, 1, 2 are <unk>, <s> (BOS), </s> (EOS); ids 3..258 are the raw bytes 0x00..0xFF.
//
// Encode: [BOS], the token for " " (SentencePiece's dummy prefix) when the text is not empty,
// each UTF-8 code point's token (or its bytes as byte tokens, id = byte + 3), then repeatedly
// merge the adjacent pair whose concatenation is a token with the highest score (leftmost on
// ties), as llama2.c does, but in O(n log n) with a heap over a linked list instead of its
// O(n^2) rescans. `encode_reference` is the literal O(n^2) loop, kept as the spec for tests.
//
// Decode concatenates pieces: "<0xNN>" pieces give the raw byte, and a piece right after BOS
// loses its leading space (the dummy prefix). Decoding is piecewise, so streaming one token at a
// time gives the same text as decoding the whole sequence: decode(encode(x)) is " " + x, while
// decode(encode(x, /*bos=*/true, false)) == x.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/tokenizer.h"

namespace lmf::data {

class SpTokenizer final : public Tokenizer {
 public:
  static constexpr int kUnk = 0;
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;
  static constexpr int kByteOffset = 3;  // byte b is token b + 3
  static constexpr int kMinVocab = 259;  // the three specials and the 256 bytes

  // vocab_size < 0: read tokens until the end of the file. Otherwise exactly vocab_size tokens
  // must be there and fill the file. Any malformed file is a UserError naming it.
  static std::unique_ptr<SpTokenizer> load(const std::filesystem::path& path, int vocab_size = -1);

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  // llama2.c's data separate documents with BOS (its pretokenizer puts BOS before each story,
  // and run.c stops generating at BOS), so BOS is the document separator here too.
  int eot_id() const override { return kBos; }
  int bos_id() const override { return kBos; }
  std::string name() const override { return "llama2c"; }
  std::vector<int32_t> encode(std::string_view text) const override {
    return encode(text, false, false);
  }
  std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const;
  // llama2.c's O(n^2) merge loop, verbatim in spirit; the spec that `encode` must match.
  std::vector<int32_t> encode_reference(std::string_view text, bool bos, bool eos) const;

  const std::string& piece(int id) const { return pieces_.at(static_cast<size_t>(id)); }
  float score(int id) const { return scores_.at(static_cast<size_t>(id)); }
  int max_token_length() const { return max_token_length_; }
  int find(std::string_view piece) const;  // -1 when not a token

 protected:
  std::string decode_impl(std::span<const int32_t> ids, Specials specials) const override;

 private:
  SpTokenizer() = default;
  // Code points -> initial ids, before any merge (shared by encode and encode_reference).
  void initial_ids(std::string_view text, bool bos, std::vector<int32_t>& out) const;
  // Id of piece(a) + piece(b), or -1; `buf` is scratch to avoid an allocation per lookup.
  int merged_id(int32_t a, int32_t b, std::string& buf) const;

  std::vector<std::string> pieces_;  // (vocab)
  std::vector<float> scores_;        // (vocab)
  // piece -> id; with duplicate pieces the lowest id wins (llama2.c's bsearch picks any one).
  std::unordered_map<std::string, int32_t> ids_;
  int max_token_length_ = 0;
};

}  // namespace lmf::data
