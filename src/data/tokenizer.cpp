#include "data/tokenizer.h"

#include "data/bpe.h"
#include "data/sp_tokenizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace lmf::data {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode_impl(std::span<const int32_t> ids, Specials specials) const {
  static constexpr std::string_view kEotText = "<|endoftext|>";
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) {
      out.push_back(static_cast<char>(id));
    } else if (id == kEot) {
      if (specials == Specials::kShow) out += kEotText;
    } else {
      throw UserError("token id {} is out of range for the byte tokenizer (vocab_size 257)", id);
    }
  }
  return out;
}

std::vector<std::string> known_tokenizers() {
  std::vector<std::string> k = {"byte"};
  for (const auto& e : known_tiktoken_encodings()) k.push_back(e);
  k.push_back("bpe:<tokenizer.json | GPT-2 dir | .tiktoken file>");
  k.push_back("llama2c:<tokenizer.bin>");
  k.push_back("<path> (a tokenizer file or GPT-2 directory, format detected)");
  return k;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  if (is_tiktoken_encoding(name)) return make_named_bpe(name, default_tokref_dir());
  if (name.starts_with("bpe:")) return load_bpe(name.substr(4));
  if (name.starts_with("llama2c:")) return SpTokenizer::load(name.substr(8));
  // A bare path: llama2.c's tokenizer.bin by its extension, any BPE format otherwise.
  std::error_code ec;
  if (std::filesystem::exists(name, ec)) {
    if (std::filesystem::path(name).extension() == ".bin") return SpTokenizer::load(name);
    return load_bpe(name);
  }
  throw UserError("unknown tokenizer \"{}\" (known: {})", name,
                  fmt::join(known_tokenizers(), ", "));
}

uint64_t vocab_fingerprint(const Tokenizer& tok) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const void* p, size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 0x100000001b3ull;
  };
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    std::string bytes = tok.decode(std::span<const int32_t>(&id, 1), Specials::kShow);
    uint64_t n = bytes.size();
    mix(&id, sizeof id);
    mix(&n, sizeof n);
    mix(bytes.data(), bytes.size());
  }
  return h;
}

}  // namespace lmf::data
