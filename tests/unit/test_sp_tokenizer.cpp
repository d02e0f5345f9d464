// llama2.c tokenizer: golden ids from tok512.bin, round trips, the fast merge against llama2.c's
// O(n^2) loop, malformed files.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/sp_tokenizer.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;

const fs::path kTok512 = fs::path(LMF_SHARED_DIR) / "data/tinyllamas/tok512.bin";

std::unique_ptr<SpTokenizer> load_tok512() {
  if (!fs::exists(kTok512)) return nullptr;
  return SpTokenizer::load(kTok512);
}

#define REQUIRE_TOK512(t) \
  auto t = load_tok512(); \
  if (!t) GTEST_SKIP() << kTok512 << " is missing";

using TempDir = lmf::test::TempDir;

// Builds a llama2.c tokenizer file: specials, the 256 byte pieces, then `extra`.
struct TokFile {
  int32_t max_len = 6;
  std::string bytes;
  TokFile() { append_i32(max_len); }
  void append_i32(int32_t v) { bytes.append(reinterpret_cast<const char*>(&v), 4); }
  void add(float score, const std::string& piece) {
    bytes.append(reinterpret_cast<const char*>(&score), 4);
    append_i32(static_cast<int32_t>(piece.size()));
    bytes += piece;
  }
  void add_base() {
    add(0, "<unk>");
    add(0, "\n<s>\n");
    add(0, "\n</s>\n");
    for (int b = 0; b < 256; ++b) {
      char s[8];
      std::snprintf(s, sizeof s, "<0x%02X>", b);
      add(0, s);
    }
  }
  void write(const fs::path& p) const {
    std::ofstream(p, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
};

TEST(SpTokenizer, Tok512Golden) {
  REQUIRE_TOK512(t);
  EXPECT_EQ(t->vocab_size(), 512);
  EXPECT_EQ(t->eot_id(), 1);  // BOS separates llama2.c documents
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->name(), "llama2c");
  EXPECT_EQ(t->max_token_length(), 7);
  EXPECT_EQ(t->encode("Once upon a time", true, false),
            (std::vector<int32_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(t->encode("Once upon a time"), (std::vector<int32_t>{403, 407, 261, 378}));
  EXPECT_EQ(t->encode("Once upon a time", false, true),
            (std::vector<int32_t>{403, 407, 261, 378, 2}));
  // The published continuation decodes to the published text.
  const std::vector<int32_t> gen = {1,   403, 407, 261, 378, 432, 383,
                                    286, 261, 376, 298, 315, 421, 395};
  EXPECT_EQ(t->decode(gen).rfind("Once upon a time, there was a little girl named", 0), 0u)
      << t->decode(gen);
  EXPECT_TRUE(t->encode("").empty());
  EXPECT_EQ(t->encode("", true, true), (std::vector<int32_t>{1, 2}));
}

TEST(SpTokenizer, RoundTrip) {
  REQUIRE_TOK512(t);
  const std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily. She loved to play outside.",
      "  two leading spaces, trailing  ",
      "tabs\tand\nnewlines\n\n",
      "x",
      " ",
      "caf\xC3\xA9 \xE2\x82\xAC 100 \xF0\x9F\x98\x80 emoji",           // UTF-8 not in a 512 vocab
      std::string("raw \xFF\xFE bytes \x80 and a nul \0 inside", 36),  // invalid UTF-8
  };
  for (const auto& s : texts) {
    const auto ids = t->encode(s, true, false);
    EXPECT_EQ(t->decode(ids), s) << s;
    EXPECT_EQ(t->decode(t->encode(s)), " " + s) << "without BOS the dummy prefix stays";
    // Decoding is piecewise once past BOS's successor: streaming keeps every space.
    for (size_t k = 2; k < ids.size(); ++k) {
      const std::span<const int32_t> all(ids);
      EXPECT_EQ(t->decode(all.first(k)) + t->decode(all.subspan(k)), s) << s << " split at " << k;
    }
  }
  // Bytes not in the vocabulary fall back to byte tokens.
  const auto ids = t->encode("\xF0\x9F\x98\x80", false, false);
  EXPECT_EQ(ids.back(), 0x80 + SpTokenizer::kByteOffset);
  EXPECT_EQ(t->decode(std::vector<int32_t>{0x41 + SpTokenizer::kByteOffset}), "A");
}

TEST(SpTokenizer, FastMatchesReference) {
  REQUIRE_TOK512(t);
  std::mt19937 rng(1234);
  const std::string alphabet = "aaaeeeiioouu tttnnsshhrrdl  .,!?\nTOLS\xC3\xA9\xE2\x82\xAC\xFF";
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int len = static_cast<int>(rng() % 200);
    for (int i = 0; i < len; ++i) s.push_back(alphabet[rng() % alphabet.size()]);
    const bool bos = trial % 2 == 0;
    EXPECT_EQ(t->encode(s, bos, false), t->encode_reference(s, bos, false)) << s;
  }
}

TEST(SpTokenizer, TiesPickLeftmost) {
  // "aaa": pairs (a,a) at 0 and 1 tie; llama2.c merges the leftmost -> "aa" "a".
  TempDir dir;
  TokFile f;
  f.add_base();
  f.add(0, " ");
  f.add(0, "a");
  f.add(-1, "aa");
  f.write(dir / "t.bin");
  auto t = SpTokenizer::load(dir / "t.bin");
  EXPECT_EQ(t->vocab_size(), 262);
  EXPECT_EQ(t->encode("aaa"), (std::vector<int32_t>{259, 261, 260}));
  EXPECT_EQ(t->encode("aaa"), t->encode_reference("aaa", false, false));
  EXPECT_EQ(t->decode(t->encode("aaa", true, false)), "aaa");
}

TEST(SpTokenizer, LargeTextIsFast) {
  REQUIRE_TOK512(t);
  std::string s;
  while (s.size() < 2'000'000) s += "Once upon a time, there was a little girl named Lily. ";
  const auto ids = t->encode(s, true, false);
  EXPECT_LT(ids.size(), s.size() / 2);
  EXPECT_EQ(t->decode(ids), s);
}

void expect_user_error(const fs::path& p, int vocab, const std::string& needle) {
  try {
    SpTokenizer::load(p, vocab);
    ADD_FAILURE() << "no error for " << needle;
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
}

TEST(SpTokenizer, BadFiles) {
  TempDir dir;
  TokFile good;
  good.add_base();
  good.add(0, " ");
  good.write(dir / "good.bin");
  EXPECT_EQ(SpTokenizer::load(dir / "good.bin")->vocab_size(), 260);
  EXPECT_EQ(SpTokenizer::load(dir / "good.bin", 260)->vocab_size(), 260);

  expect_user_error(dir / "missing.bin", -1, "cannot open");
  TokFile{}.write(dir / "header_only.bin");
  expect_user_error(dir / "header_only.bin", -1, "fewer than 259");
  { std::ofstream(dir / "tiny.bin") << "ab"; }
  expect_user_error(dir / "tiny.bin", -1, "too short");
  // Truncation anywhere inside a token.
  for (size_t cut : {good.bytes.size() - 1, good.bytes.size() - 2, good.bytes.size() - 7}) {
    TokFile f = good;
    f.bytes.resize(cut);
    f.write(dir / "cut.bin");
    expect_user_error(dir / "cut.bin", -1, "truncated");
  }
  expect_user_error(dir / "good.bin", 259, "9 trailing bytes");  // token 259 is 4+4+1 bytes
}

TEST(SpTokenizer, BadLengthsAndCounts) {
  TempDir dir;
  TokFile good;
  good.add_base();
  good.add(0, " ");
  good.write(dir / "good.bin");
  expect_user_error(dir / "good.bin", 261, "ends after 260 tokens, vocab_size 261");
  expect_user_error(dir / "good.bin", 1000, "cannot hold 1000 tokens");
  expect_user_error(dir / "good.bin", 100, "below 259");
  {
    TokFile f = good;
    const int32_t neg = -5;
    std::memcpy(f.bytes.data() + 4 + 4, &neg, 4);  // length of token 0
    f.write(dir / "neg.bin");
    expect_user_error(dir / "neg.bin", -1, "token 0 has length -5");
  }
  {
    TokFile f = good;
    const int32_t huge = 1 << 30;
    std::memcpy(f.bytes.data(), &huge, 4);  // max_token_length
    f.write(dir / "huge.bin");
    expect_user_error(dir / "huge.bin", -1, "max_token_length");
  }
  {
    TokFile f = good;
    const int32_t big = 7;  // > max_token_length 6
    std::memcpy(f.bytes.data() + 4 + 4, &big, 4);
    f.write(dir / "long.bin");
    expect_user_error(dir / "long.bin", -1, "token 0 has length 7");
  }
  {
    TokFile f;
    f.add(0, "<unk>");
    f.add(0, "<s>");
    f.add(0, "</s>");
    for (int b = 0; b < 256; ++b) f.add(0, "x");
    f.write(dir / "nobytes.bin");
    expect_user_error(dir / "nobytes.bin", -1, "expected the byte piece <0x00>");
  }
}

}  // namespace
}  // namespace lmf::data
