// BPE training: the splitter against GPT-2's pattern by hand, hand-checked first merges, the fast
// merge loop against a from-scratch reference, thread-count independence, tokenizer.json.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/bpe_train.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;
using Merges = std::vector<std::pair<int32_t, int32_t>>;

const fs::path kSample = fs::path(LMF_SOURCE_DIR) / "tests/data/sotu_sample";

using TempDir = lmf::test::TempDir;

void write_file(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<std::string> split(std::string_view s) {
  std::vector<std::string_view> v;
  simple_pretokenize(s, v);
  return {v.begin(), v.end()};
}

TEST(SimplePretokenize, FollowsGpt2Pattern) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(split("I'm  fine\n\nok"), (V{"I", "'m", " ", " fine", "\n", "\n", "ok"}));
  EXPECT_EQ(split("abc123 456!! x"), (V{"abc", "123", " 456", "!!", " x"}));
  EXPECT_EQ(split("they're 'll ..'s"), (V{"they", "'re", " '", "ll", " ..'", "s"}));
  EXPECT_EQ(split("end  "), (V{"end", "  "}));
  EXPECT_EQ(split(" \t x"), (V{" \t", " x"}));
  EXPECT_EQ(split("\tx"), (V{"\t", "x"}));
  EXPECT_EQ(split("caf\xC3\xA9 na\xC3\xAFve"), (V{"caf\xC3\xA9", " na\xC3\xAFve"}));
  EXPECT_TRUE(split("").empty());
  // Pieces always concatenate to the input, for any bytes.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s;
    for (int i = static_cast<int>(rng() % 64); i > 0; --i)
      s.push_back(static_cast<char>(rng() % 256));
    std::string joined;
    for (const auto& p : split(s)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

// The spec: recount every pair from scratch before each merge, pick the most frequent, ties to
// the smallest (left bytes, right bytes); merge left to right in every piece.
Merges reference_train(const std::vector<std::string>& docs, int n_merges) {
  std::map<std::string, int64_t> counts;
  for (const auto& d : docs)
    for (const auto& p : split(d)) ++counts[p];
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [p, k] : counts) {
    std::vector<int32_t> s;
    for (char c : p) s.push_back(static_cast<uint8_t>(c));
    words.emplace_back(s, k);
  }
  Merges merges;
  while (static_cast<int>(merges.size()) < n_merges) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (const auto& [s, k] : words)
      for (size_t i = 0; i + 1 < s.size(); ++i) pc[{s[i], s[i + 1]}] += k;
    if (pc.empty()) break;
    auto best = pc.begin();
    for (auto it = pc.begin(); it != pc.end(); ++it) {
      const auto& [a, b] = it->first;
      const auto& [ba, bb] = best->first;
      if (it->second > best->second ||
          (it->second == best->second &&
           std::pair(tokens[a], tokens[b]) < std::pair(tokens[ba], tokens[bb])))
        best = it;
    }
    const auto [a, b] = best->first;
    const auto z = static_cast<int32_t>(tokens.size());
    tokens.push_back(tokens[a] + tokens[b]);
    merges.emplace_back(a, b);
    for (auto& [s, k] : words) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(z);
          i += 2;
        } else {
          out.push_back(s[i++]);
        }
      }
      s = out;
    }
  }
  return merges;
}

// Applies the merges in rank order to one piece (equivalent to lowest-rank-first BPE, since a
// merge only creates pairs of higher rank).
std::vector<int32_t> reference_encode_piece(std::string_view piece, const Merges& merges) {
  std::vector<int32_t> s;
  for (char c : piece) s.push_back(static_cast<uint8_t>(c));
  for (size_t r = 0; r < merges.size() && s.size() > 1; ++r) {
    std::vector<int32_t> out;
    for (size_t i = 0; i < s.size();) {
      if (i + 1 < s.size() && s[i] == merges[r].first && s[i + 1] == merges[r].second) {
        out.push_back(256 + static_cast<int32_t>(r));
        i += 2;
      } else {
        out.push_back(s[i++]);
      }
    }
    s = out;
  }
  return s;
}

TEST(BpeTrain, FirstMergesHandChecked) {
  // Pieces: "ab" x1, " ab" x2, " cd" x2. (a,b) occurs 3 times; then (' ',"ab"), (' ',c) and
  // (c,d) tie at 2 and go in (left, right) byte order: ' ' < 'c', and "ab" < "c".
  const auto r = train_bpe_texts({"ab ab ab cd cd"}, 256 + 4 + 1);
  const Merges want = {{'a', 'b'}, {' ', 256}, {' ', 'c'}, {258, 'd'}};
  EXPECT_EQ(r.merges, want);
  EXPECT_EQ(r.vocab_size(), 261);
  EXPECT_EQ(r.tokens[256], "ab");
  EXPECT_EQ(r.tokens[257], " ab");
  EXPECT_EQ(r.tokens[259], " cd");
  EXPECT_EQ(r.tokens[260], "<|endoftext|>");
  EXPECT_EQ(r.eot_id, 260);
  EXPECT_EQ(r.n_special, 1);
  // Out of pairs: the vocabulary stops short of what was asked.
  EXPECT_EQ(train_bpe_texts({"ab ab ab cd cd"}, 1000).vocab_size(), 261);
  // Overlaps merge left to right: "aaaa" -> "aa" "aa" -> "aaaa"; "aaa" -> "aa" "a".
  const auto o = train_bpe_texts({"aaaa aaaa"}, 256 + 3 + 1);
  EXPECT_EQ(o.merges, (Merges{{'a', 'a'}, {256, 256}, {' ', 257}}));
  EXPECT_EQ(train_bpe_texts({"aaa"}, 300).merges, (Merges{{'a', 'a'}, {256, 'a'}}));
}

TEST(BpeTrain, SpecialTokensAreNotLearned) {
  BpeTrainOptions o;
  o.special_tokens = {"<|endoftext|>", "<|pad|>"};
  const auto r = train_bpe_texts({"xy<|endoftext|>xy<|endoftext|><|pad|>xy"}, 400, o);
  EXPECT_EQ(r.merges, (Merges{{'x', 'y'}}));
  EXPECT_EQ(r.tokens.size(), 259u);
  EXPECT_EQ(r.eot_id, 257);
  EXPECT_EQ(r.tokens[258], "<|pad|>");
}

TEST(BpeTrain, MatchesReference) {
  std::vector<std::string> docs;
  for (const auto& e : fs::directory_iterator(kSample)) docs.push_back(read_file(e.path()));
  ASSERT_FALSE(docs.empty());
  const int n_merges = 300;
  const auto r = train_bpe_texts(docs, 256 + n_merges + 1);
  EXPECT_EQ(r.merges, reference_train(docs, n_merges));
  // One text over 1 MiB is counted in several chunks; the pieces must not change.
  std::string big;
  while (big.size() < (size_t{5} << 19)) big += docs[big.size() % docs.size()];
  EXPECT_EQ(train_bpe_texts({big}, 256 + 40 + 1).merges, reference_train({big}, 40));
}

TEST(BpeTrain, FilesThreadsAndRoundTrip) {
  BpeTrainOptions one, two;
  one.threads = 1;
  two.threads = 2;
  const int vocab = 256 + 1500 + 1;
  const auto r1 = train_bpe({kSample}, vocab, one);
  const auto r2 = train_bpe({kSample}, vocab, two);
  EXPECT_EQ(r1.merges, r2.merges);
  EXPECT_EQ(r1.tokens, r2.tokens);
  EXPECT_EQ(r1.vocab_size(), vocab);
  EXPECT_EQ(r1.stats.files, 6u);
  for (size_t i = 0; i < r1.merges.size(); ++i)  // each token is its merge's concatenation
    EXPECT_EQ(r1.tokens[256 + i], r1.tokens[r1.merges[i].first] + r1.tokens[r1.merges[i].second]);

  // Encoding the training text with the learned merges round-trips and compresses.
  size_t bytes = 0, ids = 0;
  for (const auto& e : fs::directory_iterator(kSample)) {
    const std::string text = read_file(e.path());
    std::string decoded;
    for (const auto& p : split(text)) {
      for (int32_t id : reference_encode_piece(p, r1.merges)) {
        ASSERT_LT(id, r1.vocab_size() - r1.n_special);
        decoded += r1.tokens[static_cast<size_t>(id)];
        ++ids;
      }
    }
    EXPECT_EQ(decoded, text);
    bytes += text.size();
  }
  EXPECT_LT(static_cast<double>(ids), 0.3 * static_cast<double>(bytes));
}

TEST(BpeTrain, HfTokenizerJson) {
  TempDir dir;
  const auto r =
      train_bpe_texts({"hello hello world\n\nhello there \xC3\xA9t\xC3\xA9"}, 256 + 8 + 1);
  ASSERT_EQ(r.merges.size(), 8u);
  const fs::path out = dir / "tokenizer.json";
  save_hf_tokenizer_json(r, out);
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
  const auto j = nlohmann::ordered_json::parse(read_file(out));
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"version", "truncation", "padding", "added_tokens",
                                            "normalizer", "pre_tokenizer", "post_processor",
                                            "decoder", "model"}));
  EXPECT_EQ(j["version"], "1.0");
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["pre_tokenizer"]["add_prefix_space"], false);
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(j["post_processor"]["type"], "ByteLevel");
  ASSERT_EQ(j["added_tokens"].size(), 1u);
  EXPECT_EQ(j["added_tokens"][0]["id"], 264);
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
  const auto& m = j["model"];
  EXPECT_EQ(m["type"], "BPE");
  EXPECT_TRUE(m["dropout"].is_null());
  EXPECT_EQ(m["byte_fallback"], false);
  ASSERT_EQ(m["vocab"].size(), 265u);
  ASSERT_EQ(m["merges"].size(), 8u);
  // GPT-2's byte mapping: printable bytes stand for themselves, ' ' is U+0120 'Ġ', '\n' U+010A.
  EXPECT_EQ(m["vocab"]["A"], 'A');
  EXPECT_EQ(m["vocab"]["\xC4\xA0"], ' ');
  EXPECT_EQ(m["vocab"]["\xC4\x8A"], '\n');
  EXPECT_EQ(m["vocab"]["\xC3\xA9"], 0xE9);  // byte 0xE9 is printable Latin-1: U+00E9
  EXPECT_EQ(m["vocab"]["\xC4\x80"], 0);     // byte 0 is U+0100
  EXPECT_EQ(m["vocab"]["<|endoftext|>"], 264);
  int id = 0;
  for (const auto& [k, v] : m["vocab"].items()) EXPECT_EQ(v, id++) << k;  // in id order
  for (size_t i = 0; i < r.merges.size(); ++i) {
    const auto [a, b] = r.merges[i];
    EXPECT_EQ(m["merges"][i], bytes_to_unicode_string(r.tokens[static_cast<size_t>(a)]) + " " +
                                  bytes_to_unicode_string(r.tokens[static_cast<size_t>(b)]));
    EXPECT_EQ(m["vocab"][bytes_to_unicode_string(r.tokens[256 + i])], 256 + i);
  }
  // The mapping is a bijection onto 256 distinct strings.
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) seen.insert(byte_to_unicode(static_cast<uint8_t>(b)));
  EXPECT_EQ(seen.size(), 256u);
}

TEST(BpeTrain, InputsAndErrors) {
  TempDir dir;
  write_file(dir / "a.txt", "one two one two\n");
  write_file(dir / "sub/b.jsonl", "{\"text\": \"three three\"}\n\n{\"text\": \"one\"}\n");
  write_file(dir / "skip.json", "{\"ignored\": \"zzzz zzzz zzzz\"}");
  const auto r = train_bpe({dir.path()}, 300);
  EXPECT_EQ(r.stats.files, 2u);
  for (size_t i = 256; i < r.tokens.size(); ++i)
    EXPECT_EQ(r.tokens[i].find('z'), std::string::npos);

  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error, wanted " << needle;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { train_bpe({dir / "missing.txt"}, 300); }, "missing.txt: no such file");
  write_file(dir / "bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  expect_error([&] { train_bpe({dir / "bad.jsonl"}, 300); }, "bad.jsonl line 2: no string field");
  write_file(dir / "bad2.jsonl", "\n\nnot json\n");
  expect_error([&] { train_bpe({dir / "bad2.jsonl"}, 300); }, "bad2.jsonl line 3: not JSON");
  expect_error([&] { train_bpe_texts({"x"}, 256); }, "below 256 bytes + 1 special");
  BpeTrainOptions dup;
  dup.special_tokens = {"<a>", "<a>"};
  expect_error([&] { train_bpe_texts({"x"}, 300, dup); }, "given twice");
  TempDir empty;
  expect_error([&] { train_bpe({empty.path()}, 300); }, "no input files");
}

}  // namespace
}  // namespace lmf::data
