// Byte-level BPE without network: hand-made ranks and merges, the fast merge paths against the
// plain reference, round trips over random bytes (invalid UTF-8 included), the three split
// patterns on strings whose js-tiktoken splits were recorded, and loader error messages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "data/bpe.h"
#include "data/pretokenize.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;
using Pieces = std::vector<std::string_view>;

constexpr int32_t kEot = 1000;

// All 256 bytes as ids 0..255, plus `extra` (bytes -> id).
BpeSpec small_spec(std::vector<std::pair<std::string, int32_t>> extra,
                   std::vector<std::pair<int32_t, int32_t>> merges = {},
                   SplitPattern pat = SplitPattern::kGpt2) {
  BpeSpec s;
  s.name = "small";
  s.pattern = js_regex_to_pcre(split_pattern_js(pat));
  for (int b = 0; b < 256; ++b) s.tokens.emplace_back(std::string(1, static_cast<char>(b)), b);
  for (auto& e : extra) s.tokens.push_back(std::move(e));
  s.merges = std::move(merges);
  s.specials = {{"<|endoftext|>", kEot}};
  s.eot_id = kEot;
  return s;
}

Ids encode_piece(const BpeTokenizer& t, std::string_view p) {
  Ids out;
  t.encode_piece(p, out);
  return out;
}

TEST(Bpe, RankModeMergesLowestRankFirst) {
  // "bc" (299) outranks "ab" (300) and "cd" (301): abcd -> a, bc, d; whole pieces win first.
  BpeTokenizer t(small_spec({{"bc", 299}, {"ab", 300}, {"cd", 301}, {"abcd", 302}}));
  EXPECT_EQ(encode_piece(t, "abcd"), (Ids{302}));
  EXPECT_EQ(encode_piece(t, "abcda"), (Ids{'a', 299, 'd', 'a'}));
  EXPECT_EQ(encode_piece(t, "abab"), (Ids{300, 300}));
  EXPECT_EQ(t.bpe_merge_reference("abcda"), (Ids{'a', 299, 'd', 'a'}));
  EXPECT_EQ(t.encode("abcd abab"), (Ids{302, ' ', 300, 300}));
  EXPECT_EQ(t.vocab_size(), kEot + 1);
}

TEST(Bpe, TiesGoLeftmost) {
  BpeTokenizer t(small_spec({{"aa", 256}, {"aaaa", 257}}));
  EXPECT_EQ(encode_piece(t, "aaa"), (Ids{256, 'a'}));
  EXPECT_EQ(encode_piece(t, "aaaaa"), (Ids{257, 'a'}));
  EXPECT_EQ(encode_piece(t, "aaaaaaa"), (Ids{257, 256, 'a'}));
}

TEST(Bpe, MergesModeUsesPairPriority) {
  // Token "abc" is reachable as (ab, c) or (a, bc); only the listed pair (a, bc) merges. Pair
  // priority, not token id: "ab" has the larger id but the earlier merge.
  auto spec =
      small_spec({{"bc", 256}, {"ab", 257}, {"abc", 258}}, {{'a', 'b'}, {'b', 'c'}, {'a', 256}});
  spec.whole_piece_first = false;
  BpeTokenizer t(spec);
  ASSERT_TRUE(t.merges_mode());
  // ab merges first (priority 0); (ab, c) is not a merge, so "abc" stays ab + c.
  EXPECT_EQ(encode_piece(t, "abc"), (Ids{257, 'c'}));
  EXPECT_EQ(encode_piece(t, "xbc"), (Ids{'x', 256}));
  EXPECT_EQ(t.bpe_merge_reference("abc"), (Ids{257, 'c'}));
}

// Random vocabularies over a 4-letter alphabet (one letter an invalid UTF-8 byte): the scan
// path (<= 128 bytes) and the heap path (longer) must both equal the reference.
TEST(Bpe, FastPathsMatchReference) {
  std::mt19937 rng(1234);
  const std::string alpha = "ab c\xff";
  for (int trial = 0; trial < 40; ++trial) {
    const bool merges_mode = trial % 2 == 1;
    std::vector<std::string> toks;
    for (int b = 0; b < 256; ++b) toks.emplace_back(1, static_cast<char>(b));
    std::vector<std::pair<std::string, int32_t>> extra;
    std::vector<std::pair<int32_t, int32_t>> merges;
    std::map<std::string, int32_t> have;
    for (int b = 0; b < 256; ++b) have[toks[b]] = b;
    for (int k = 0; k < 60; ++k) {
      // New token = concatenation of two existing ones (as BPE training makes them).
      std::uniform_int_distribution<size_t> pick(0, toks.size() - 1);
      size_t a = pick(rng), b = pick(rng);
      if (toks[a].size() == 1 && alpha.find(toks[a][0]) == std::string::npos) a = 'a';
      if (toks[b].size() == 1 && alpha.find(toks[b][0]) == std::string::npos) b = 'b';
      const std::string c = toks[a] + toks[b];
      if (have.contains(c)) continue;
      const auto id = static_cast<int32_t>(toks.size());
      toks.push_back(c);
      have[c] = id;
      extra.emplace_back(c, id);
      merges.emplace_back(have[toks[a]], have[toks[b]]);
    }
    auto spec = small_spec(extra, merges_mode ? merges : decltype(merges){});
    spec.whole_piece_first = trial % 4 != 3;
    BpeTokenizer t(spec);
    std::uniform_int_distribution<size_t> ch(0, alpha.size() - 1);
    for (size_t len : {2, 3, 7, 31, 127, 128, 129, 300, 1000}) {
      std::string s;
      for (size_t i = 0; i < len; ++i) s += alpha[ch(rng)];
      const Ids ref = t.bpe_merge_reference(s);
      EXPECT_EQ(encode_piece(t, s), ref) << "trial " << trial << " len " << len;
      EXPECT_EQ(t.decode(ref), s);
    }
  }
}

TEST(Bpe, RoundTripsRandomBytes) {
  std::mt19937 rng(99);
  for (SplitPattern pat : {SplitPattern::kGpt2, SplitPattern::kCl100k, SplitPattern::kO200k}) {
    BpeTokenizer t(small_spec({{"th", 256}, {"the", 257}, {" the", 258}, {"  ", 259}}, {}, pat));
    for (int k = 0; k < 200; ++k) {
      std::string s(std::uniform_int_distribution<int>(0, 400)(rng), '\0');
      for (char& c : s) {
        // Mostly text-like, with arbitrary bytes (invalid UTF-8, NUL, lone continuations).
        const int r = std::uniform_int_distribution<int>(0, 9)(rng);
        c = r < 6 ? " theabc\n\r\t'1"[std::uniform_int_distribution<int>(0, 12)(rng)]
                  : static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      }
      EXPECT_EQ(t.decode(t.encode(s)), s);
      // The pieces themselves cover the input.
      std::string joined;
      for (auto p : t.pretokenizer().split(s)) joined += p;
      EXPECT_EQ(joined, s);
    }
  }
}

TEST(Bpe, SpecialsOnlyWhenAllowed) {
  BpeTokenizer t(small_spec({}));
  const std::string s = "a<|endoftext|>b";
  const Ids ord = t.encode(s);
  EXPECT_EQ(std::count(ord.begin(), ord.end(), kEot), 0);
  EXPECT_EQ(t.decode(ord), s);
  EXPECT_EQ(t.encode_with_special(s), (Ids{'a', kEot, 'b'}));
  EXPECT_EQ(t.encode_with_special(s, std::vector<std::string>{}), ord);
  EXPECT_EQ(t.decode(Ids{'a', kEot, 'b'}), "ab");
  EXPECT_EQ(t.decode(Ids{'a', kEot, 'b'}, Specials::kShow), s);
  EXPECT_THROW(t.decode(Ids{999}), UserError);  // unassigned
  EXPECT_THROW(t.decode(Ids{kEot + 1}), UserError);
}

// Expected splits recorded from js-tiktoken 1.0.21 (RegExp(pat_str, "ug")).
TEST(PreTokenize, Gpt2) {
  PreTokenizer p(SplitPattern::kGpt2);
  EXPECT_EQ(p.split("Hello world's 123"), (Pieces{"Hello", " world", "'s", " 123"}));
  EXPECT_EQ(p.split("HelloWorld's CAPS'LL x"),
            (Pieces{"HelloWorld", "'s", " CAPS", "'", "LL", " x"}));
  EXPECT_EQ(p.split("a\r\n\r\nb  \n  c"), (Pieces{"a", "\r\n\r", "\n", "b", "  \n ", " c"}));
  EXPECT_EQ(p.split("don't  stop   now\t\t"),
            (Pieces{"don", "'t", " ", " stop", "  ", " now", "\t\t"}));
  // U+FEFF is \s in JavaScript (not in PCRE2).
  EXPECT_EQ(p.split(" \xEF\xBB\xBF"
                    "b"),
            (Pieces{" ", "\xEF\xBB\xBF", "b"}));
  EXPECT_EQ(p.split("x\xC2\x85y"), (Pieces{"x", "\xC2\x85", "y"}));
  // U+0085 is not \s in JavaScript (it is in PCRE2): " \x85" is one punctuation piece.
  EXPECT_EQ(p.split("a \xC2\x85"
                    "b"),
            (Pieces{"a", " \xC2\x85", "b"}));
  EXPECT_EQ(p.split("a \xE1\xA0\x8E"
                    "b"),
            (Pieces{"a", " \xE1\xA0\x8E", "b"}));  // U+180E
  // Invalid UTF-8 becomes its own piece.
  EXPECT_EQ(p.split("ab\xff\xfe"
                    "cd"),
            (Pieces{"ab", "\xff\xfe", "cd"}));
}

TEST(PreTokenize, Cl100k) {
  PreTokenizer p(SplitPattern::kCl100k);
  EXPECT_EQ(p.split("Hello world's 1234567"),
            (Pieces{"Hello", " world", "'s", " ", "123", "456", "7"}));
  EXPECT_EQ(p.split("HelloWorld's CAPS'LL x"), (Pieces{"HelloWorld", "'s", " CAPS", "'LL", " x"}));
  EXPECT_EQ(p.split("a\r\n\r\nb  \n  c"), (Pieces{"a", "\r\n\r\n", "b", "  \n", " ", " c"}));
  EXPECT_EQ(p.split(" \xEF\xBB\xBF"
                    "b"),
            (Pieces{" ",
                    "\xEF\xBB\xBF"
                    "b"}));
  // Contractions are case-listed, not (?i): U+017F and U+212A do not fold to s and k.
  EXPECT_EQ(p.split("\xC5\xBF's \xE2\x84\xAA'S"),
            (Pieces{"\xC5\xBF", "'s", " \xE2\x84\xAA", "'S"}));
}

TEST(PreTokenize, O200k) {
  PreTokenizer p(SplitPattern::kO200k);
  EXPECT_EQ(p.split("Hello world's 1234567"),
            (Pieces{"Hello", " world's", " ", "123", "456", "7"}));
  EXPECT_EQ(p.split("HelloWorld's CAPS'LL x"), (Pieces{"Hello", "World's", " CAPS'LL", " x"}));
  EXPECT_EQ(p.split("don't  stop   now\t\t"),
            (Pieces{"don't", " ", " stop", "  ", " now", "\t\t"}));
  EXPECT_EQ(p.split("\xC5\xBF's \xE2\x84\xAA'S"), (Pieces{"\xC5\xBF's", " \xE2\x84\xAA'S"}));
}

TEST(PreTokenize, BadPatternIsUserError) {
  try {
    PreTokenizer p("(unclosed", "file t.json");
    FAIL() << "no throw";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("file t.json"), std::string::npos) << e.what();
  }
}

// ---- loaders -----------------------------------------------------------------------------

struct TempDir {
  fs::path dir = fs::temp_directory_path() / ("lmf_test_bpe_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(dir); }
  ~TempDir() { fs::remove_all(dir); }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name, std::ios::binary) << text;
    return dir / name;
  }
};

void expect_user_error(const std::function<void()>& f, const std::string& file,
                       const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no UserError (expected one naming " << file << " and '" << what << "')";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(file), std::string::npos) << m;
    EXPECT_NE(m.find(what), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

std::string base64(std::string_view s) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < s.size(); i += 3) {
    uint32_t w = static_cast<unsigned char>(s[i]) << 16;
    if (i + 1 < s.size()) w |= static_cast<unsigned char>(s[i + 1]) << 8;
    if (i + 2 < s.size()) w |= static_cast<unsigned char>(s[i + 2]);
    out += a[w >> 18];
    out += a[(w >> 12) & 63];
    out += i + 1 < s.size() ? a[(w >> 6) & 63] : '=';
    out += i + 2 < s.size() ? a[w & 63] : '=';
  }
  return out;
}

TEST(BpeLoad, TiktokenFile) {
  TempDir d;
  std::string ranks;
  for (int b = 0; b < 256; ++b)
    ranks += base64(std::string(1, static_cast<char>(b))) + " " + std::to_string(b) + "\n";
  ranks += base64("he") + " 256\n" + base64("hello") + " 257\n";
  const auto f = d.write("r50k_base.tiktoken", ranks);
  auto t = load_bpe(f);
  EXPECT_EQ(t->name(), "r50k_base");
  EXPECT_EQ(t->eot_id(), 50256);
  EXPECT_EQ(t->vocab_size(), 50257);
  EXPECT_EQ(t->encode("hello hex"), (Ids{257, ' ', 256, 'x'}));
  EXPECT_EQ(t->encode("hex"), (Ids{256, 'x'}));

  const auto bad = d.write("cl100k_base.tiktoken", base64("a") + " 0\nnot-base64! 1\n");
  expect_user_error([&] { load_bpe(bad); }, bad.string(), "line 2");
  const auto missing_byte = d.write("p50k_base.tiktoken", base64("a") + " 0\n");
  expect_user_error([&] { load_bpe(missing_byte); }, missing_byte.string(), "byte 0x00");
  const auto unnamed = d.write("mine.tiktoken", ranks);
  expect_user_error([&] { load_bpe(unnamed); }, unnamed.string(), "named for its encoding");
}

TEST(BpeLoad, JsTiktokenModule) {
  TempDir d;
  std::string lines = "! 0";
  for (int b = 0; b < 256; ++b) {
    lines += ' ';
    lines += base64(std::string(1, static_cast<char>(b)));
  }
  lines += "\n! 256 ";
  lines += base64("he");
  nlohmann::json j = {{"pat_str", std::string(split_pattern_js(SplitPattern::kGpt2))},
                      {"special_tokens", {{"<|endoftext|>", 50256}}},
                      {"bpe_ranks", lines}};
  const auto f = d.write("gpt2.js", "export default " + j.dump() + ";");
  auto t = load_bpe(f);
  EXPECT_EQ(t->encode("he"), (Ids{256}));
  j["pat_str"] = "\\s+";
  const auto g = d.write("r50k_base.cjs", "module.exports = " + j.dump() + ";");
  expect_user_error([&] { load_bpe(g); }, g.string(), "pat_str");
  const auto h = d.write("o200k_base.js", "export default 42;");
  expect_user_error([&] { load_bpe(h); }, h.string(), "js-tiktoken rank module");
}

// GPT-2's byte-level alphabet for byte b (bytes_to_unicode), UTF-8 encoded.
std::string gpt2_char(int b) {
  static const std::vector<int> cps = [] {
    std::vector<int> v(256);
    int n = 0;
    for (int c = 0; c < 256; ++c)
      v[c] = ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174) ? c : 256 + n++;
    return v;
  }();
  const int cp = cps[b];
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xc0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3f))};
}

TEST(BpeLoad, Gpt2AndHuggingFace) {
  TempDir d;
  nlohmann::json enc = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) enc[gpt2_char(b)] = b;
  const std::string sp = gpt2_char(' ');  // "Ġ"
  enc[sp + "t"] = 256;
  enc[sp + "th"] = 257;
  enc["<|endoftext|>"] = 258;
  d.write("encoder.json", enc.dump());
  d.write("vocab.bpe", "#version: 0.2\n" + sp + " t\n" + sp + "t h\n");
  auto t = load_bpe(d.dir);
  EXPECT_TRUE(t->merges_mode());
  EXPECT_EQ(t->eot_id(), 258);
  EXPECT_EQ(t->encode("a th"), (Ids{'a', 257}));
  EXPECT_EQ(t->decode(t->encode("a th\xff")), "a th\xff");

  nlohmann::json hf = {
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"added_tokens", {{{"id", 258}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", enc},
        {"merges", nlohmann::json::array({sp + " t", nlohmann::json::array({sp + "t", "h"})})}}}};
  const auto f = d.write("tokenizer.json", hf.dump());
  auto h = load_bpe(f);
  EXPECT_EQ(h->encode("a th"), (Ids{'a', 257}));
  EXPECT_EQ(h->eot_id(), 258);

  hf["model"]["type"] = "WordPiece";
  const auto wp = d.write("wp.json", hf.dump());
  expect_user_error([&] { load_bpe(wp); }, wp.string(), "model.type \"BPE\"");
  hf["model"]["type"] = "BPE";
  hf["model"]["merges"] = nlohmann::json::array({"nosuch token"});
  const auto bm = d.write("bm.json", hf.dump());
  expect_user_error([&] { load_bpe(bm); }, bm.string(), "model.merges[0]");
  const auto nj = d.write("nj.json", "{not json");
  expect_user_error([&] { load_bpe(nj); }, nj.string(), "not valid JSON");
  d.write("vocab.bpe", "#version: 0.2\nzz yy\n");
  expect_user_error([&] { load_bpe(d.dir / "encoder.json"); }, (d.dir / "vocab.bpe").string(),
                    "line 2");
  const auto other = d.write("x.bin", "abc");
  expect_user_error([&] { load_bpe(other); }, other.string(), "unknown tokenizer format");
  expect_user_error([&] { load_bpe(d.dir / "nope.tiktoken"); }, "nope.tiktoken", "not found");
}

}  // namespace
}  // namespace lmf::data
