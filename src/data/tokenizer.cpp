#include "data/tokenizer.h"

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

std::vector<std::string> known_tokenizers() { return {"byte"}; }

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  throw UserError("unknown tokenizer \"{}\" (known: {})", name,
                  fmt::join(known_tokenizers(), ", "));
}

}  // namespace lmf::data
