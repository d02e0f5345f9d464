// libFuzzer target: llama2.c tokenizer.bin files. SpTokenizer::load on arbitrary bytes (read to
// the end of the file, and with the vocab_size that the input's last byte picks); when a file
// loads, encode and decode a short text that depends on the input, and check the promises of
// sp_tokenizer.h: ids in range, the fast encode equal to the O(n^2) reference, and
// decode(encode(x, bos)) == x.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "data/sp_tokenizer.h"
#include "fuzz_file.h"

namespace {

void exercise(const lmf::data::SpTokenizer& t, std::string_view text) {
  using lmf::data::SpTokenizer;
  const int V = t.vocab_size();
  LMF_FUZZ_ASSERT(V >= SpTokenizer::kMinVocab);
  const auto ids = t.encode(text, /*bos=*/true, /*eos=*/false);
  for (int32_t id : ids) LMF_FUZZ_ASSERT(id >= 0 && id < V);
  LMF_FUZZ_ASSERT(ids == t.encode_reference(text, true, false));
  // The documented round trip holds for sane vocabularies; a file may legally make it fail
  // (no " " piece, so the dummy prefix is the byte token <0x20> and survives decoding; a piece
  // equal to a special's, which decode hides; a piece spelled "<0x..", which decodes as a byte),
  // so compare only when none of that is in play.
  bool plain = text.empty() || t.find(" ") >= 0;
  for (size_t i = 1; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id == SpTokenizer::kBos || id == SpTokenizer::kEos ||
        (id > SpTokenizer::kByteOffset + 255 && t.piece(id).find("<0x") != std::string::npos))
      plain = false;
  }
  const std::string back = t.decode(ids);
  if (plain) LMF_FUZZ_ASSERT(back == text);
  (void)t.decode(t.encode(text));
  for (int id = 0; id < V && id < 8; ++id) (void)t.find(t.piece(id));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lmf;
  const auto& path = fuzz::write_input("sp_tokenizer", data, size);
  // Texts from the input's own bytes reach merges that the file's pieces make possible.
  const std::string_view tail(
      reinterpret_cast<const char*>(data) + size - std::min<size_t>(size, 24),
      std::min<size_t>(size, 24));
  for (int vocab : {-1, size ? 259 + data[size - 1] : 259}) {
    try {
      const auto t = data::SpTokenizer::load(path, vocab);
      LMF_FUZZ_ASSERT(vocab < 0 || t->vocab_size() == vocab);
      exercise(*t, "Once upon a time, \xc3\xa9t\xc3\xa9 \xf0\x9f\x99\x82!");
      exercise(*t, tail);
      exercise(*t, "");
    } catch (const UserError&) {
      // A malformed file, reported as one: the expected outcome for most inputs.
    }
  }
  return 0;
}
