#pragma once
// Tokenizers: text <-> token ids. One abstract interface so that prepare, generation and the
// CLI never name a concrete tokenizer; `make_tokenizer` maps a config name to one.
//
// ByteTokenizer: ids 0..255 are the raw bytes of the text, 256 is <|endoftext|> (the document
// separator). It accepts any bytes, including invalid UTF-8, and decode(encode(s)) == s for
// every s. A BPE tokenizer (later issue) implements the same interface.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lmf::data {

// What decode does with special tokens (<|endoftext|> and, later, BPE's others).
enum class Specials { kSkip, kShow };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int vocab_size() const = 0;
  virtual int eot_id() const = 0;        // document separator
  virtual int bos_id() const { return -1; }  // put before a prompt when >= 0 (SentencePiece's <s>)
  virtual std::string name() const = 0;  // the name make_tokenizer takes, e.g. "byte"
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;  // no EOT appended
  // Ids outside [0, vocab_size) are a UserError.
  std::string decode(std::span<const int32_t> ids, Specials specials = Specials::kSkip) const {
    return decode_impl(ids, specials);
  }

 protected:
  // Non-virtual public decode + virtual impl: a default argument on a virtual would bind to the
  // static type.
  virtual std::string decode_impl(std::span<const int32_t> ids, Specials specials) const = 0;
};

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int kEot = 256;
  int vocab_size() const override { return 257; }
  int eot_id() const override { return kEot; }
  std::string name() const override { return "byte"; }
  std::vector<int32_t> encode(std::string_view text) const override;

 protected:
  std::string decode_impl(std::span<const int32_t> ids, Specials specials) const override;
};

// Names make_tokenizer knows, for error messages and --help.
std::vector<std::string> known_tokenizers();

// "byte" -> ByteTokenizer; an unknown name is a UserError that lists the known ones.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

// FNV-1a over (id, decoded bytes) for every id, specials shown: two tokenizers with the same
// fingerprint turn every id into the same bytes. `prepare` records it in the manifest and
// `train` checks it, so a model is never sampled through another vocabulary than its data's.
uint64_t vocab_fingerprint(const Tokenizer& tok);

}  // namespace lmf::data
