// Data layer: tokenizer, shard format, prepare, DataLoader.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;

using TempDir = lmf::test::TempDir;

using lmf::test::write_file;

void poke(const fs::path& p, size_t offset, unsigned char v) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(v));
}

using test::expect_user_error;

std::vector<int32_t> read_all(const Shard& s) {
  std::vector<int32_t> v(s.size());
  s.read(0, s.size(), v.data());
  return v;
}

// ---------------------------------------------------------------- tokenizer

TEST(ByteTokenizer, RoundTripsEveryByteIncludingInvalidUtf8) {
  auto tok = make_tokenizer("byte");
  EXPECT_EQ(tok->name(), "byte");
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eot_id(), 256);
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  s += "\xff\xfe\xc3(";  // invalid UTF-8 sequences
  auto ids = tok->encode(s);
  ASSERT_EQ(ids.size(), s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_EQ(ids[i], static_cast<unsigned char>(s[i]));
  }
  EXPECT_EQ(tok->decode(ids), s);
  EXPECT_TRUE(tok->encode("").empty());
}

TEST(ByteTokenizer, EotDecodesToNothingOrMarker) {
  ByteTokenizer tok;
  std::vector<int32_t> ids = {'a', 256, 'b'};
  EXPECT_EQ(tok.decode(ids), "ab");
  EXPECT_EQ(tok.decode(ids, Specials::kShow), "a<|endoftext|>b");
  expect_user_error([&] { tok.decode(std::vector<int32_t>{257}); }, {"257", "byte"});
  expect_user_error([&] { tok.decode(std::vector<int32_t>{-1}); }, {"-1"});
}

TEST(ByteTokenizer, UnknownNameListsKnownOnes) {
  expect_user_error([] { make_tokenizer("gpt9"); }, {"gpt9", "byte"});
}

// ---------------------------------------------------------------- shards

TEST(Shard, RoundTripUint16) {
  TempDir d;
  std::vector<int32_t> toks(5000);
  Rng rng(1, 0);
  for (auto& t : toks) t = static_cast<int32_t>(rng.below(257));
  toks[17] = 256;
  write_shard(d / "a.bin", toks, 257);
  EXPECT_FALSE(fs::exists(d / "a.bin.tmp"));
  EXPECT_EQ(fs::file_size(d / "a.bin"), kShardHeaderBytes + 2 * toks.size());
  Shard s = Shard::open(d / "a.bin");
  EXPECT_EQ(s.format(), ShardFormat::kLmforge);
  EXPECT_EQ(s.size(), toks.size());
  EXPECT_EQ(s.vocab_size(), 257u);
  EXPECT_EQ(s.token_bytes(), 2);
  EXPECT_EQ(s.max_token(), 256u);
  EXPECT_EQ(read_all(s), toks);
  EXPECT_EQ(s[17], 256);
  std::vector<int32_t> part(10);
  s.read(100, 10, part.data());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), toks.begin() + 100));
  // Moving keeps the mapping valid.
  Shard m = std::move(s);
  EXPECT_EQ(m[17], 256);
}

TEST(Shard, RoundTripUint32AboveUint16Vocab) {
  TempDir d;
  std::vector<int32_t> toks = {0, 1, 65535, 65536, 69999, 12345};
  write_shard(d / "b.bin", toks, 70000);
  EXPECT_EQ(fs::file_size(d / "b.bin"), kShardHeaderBytes + 4 * toks.size());
  Shard s = Shard::open(d / "b.bin");
  EXPECT_EQ(s.token_bytes(), 4);
  EXPECT_EQ(s.vocab_size(), 70000u);
  EXPECT_EQ(read_all(s), toks);
  EXPECT_EQ(s.max_token(), 69999u);
}

TEST(Shard, VocabBoundaryPicksWidth) {
  TempDir d;
  write_shard(d / "a.bin", std::vector<int32_t>{65534}, 65535);
  EXPECT_EQ(Shard::open(d / "a.bin").token_bytes(), 2);
  write_shard(d / "b.bin", std::vector<int32_t>{65535}, 65536);
  EXPECT_EQ(Shard::open(d / "b.bin").token_bytes(), 4);
}

TEST(Shard, EmptyShardOpens) {
  TempDir d;
  write_shard(d / "e.bin", {}, 257);
  Shard s = Shard::open(d / "e.bin");
  EXPECT_EQ(s.size(), 0u);
}

TEST(Shard, TruncatedFileNamesFileAndSizes) {
  TempDir d;
  std::vector<int32_t> toks(100, 7);
  fs::path p = d / "t.bin";
  write_shard(p, toks, 257);
  fs::resize_file(p, kShardHeaderBytes + 2 * 100 - 3);
  expect_user_error([&] { Shard::open(p); },
                    {p.string(), "truncated", "100 tokens", "264 bytes", "261 bytes"});
  fs::resize_file(p, 10);
  expect_user_error([&] { Shard::open(p); }, {p.string(), "too small"});
}

TEST(Shard, TrailingBytesAreAnError) {
  TempDir d;
  fs::path p = d / "t.bin";
  write_shard(p, std::vector<int32_t>(10, 1), 257);
  fs::resize_file(p, kShardHeaderBytes + 2 * 10 + 2);
  expect_user_error([&] { Shard::open(p); }, {p.string(), "trailing"});
}

TEST(Shard, CorruptedByteFailsChecksum) {
  TempDir d;
  std::vector<int32_t> toks(1000, 3);
  fs::path p = d / "c.bin";
  write_shard(p, toks, 257);
  ASSERT_NO_THROW(Shard::open(p));
  poke(p, kShardHeaderBytes + 2 * 500, 4);  // token 500: 3 -> 4, still in range
  expect_user_error([&] { Shard::open(p); }, {p.string(), "checksum", "corrupted"});
}

TEST(Shard, BadMagicAndVersion) {
  TempDir d;
  fs::path p = d / "m.bin";
  write_shard(p, std::vector<int32_t>(10, 1), 257);
  poke(p, 8, 9);  // version 1 -> 9
  expect_user_error([&] { Shard::open(p); }, {p.string(), "version 9"});
  poke(p, 8, 1);
  ASSERT_NO_THROW(Shard::open(p));
  poke(p, 0, 'X');
  expect_user_error([&] { Shard::open(p); }, {p.string(), "magic"});
  expect_user_error([&] { Shard::open(d / "missing.bin"); }, {(d / "missing.bin").string()});
}

// A header with a correct checksum but a token >= vocab_size: only the range check catches it.
TEST(Shard, TokenOutOfVocabNamesFileAndPosition) {
  TempDir d;
  fs::path p = d / "v.bin";
  std::vector<uint16_t> toks = {1, 2, 99, 150, 3};
  unsigned char h[kShardHeaderBytes] = {};
  std::memcpy(h, kShardMagic, 8);
  uint32_t u32[4] = {1, 2, 100, 0};  // version, token_bytes, vocab_size, reserved
  std::memcpy(h + 8, u32, 16);
  uint64_t u64[2] = {toks.size(), fnv1a64(toks.data(), toks.size() * 2)};
  std::memcpy(h + 24, u64, 16);
  std::string bytes(reinterpret_cast<char*>(h), sizeof h);
  bytes.append(reinterpret_cast<const char*>(toks.data()), toks.size() * 2);
  write_file(p, bytes);
  expect_user_error([&] { Shard::open(p); },
                    {p.string(), "token 150", "position 3", "vocab_size 100"});
  // The same bytes with vocab 151 are fine: the check is exactly at the bound.
  poke(p, 16, 151);
  EXPECT_EQ(Shard::open(p).max_token(), 150u);
}

TEST(Shard, Fnv1aKnownAnswers) {
  // Reference values of FNV-1a 64 (Fowler/Noll/Vo test suite).
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ull);
}

void write_llmc(const fs::path& p, int version, const std::vector<uint32_t>& toks, int32_t count) {
  std::vector<int32_t> h(256, 0);
  h[0] = kLlmcMagic;
  h[1] = version;
  h[2] = count;
  std::string bytes(reinterpret_cast<const char*>(h.data()), 1024);
  for (uint32_t t : toks) {
    if (version == 1) {
      uint16_t v = static_cast<uint16_t>(t);
      bytes.append(reinterpret_cast<const char*>(&v), 2);
    } else {
      bytes.append(reinterpret_cast<const char*>(&t), 4);
    }
  }
  write_file(p, bytes);
}

TEST(Shard, ReadsLlmcFormat) {
  TempDir d;
  write_llmc(d / "v1.bin", 1, {50256, 11, 0, 7}, 4);
  Shard a = Shard::open(d / "v1.bin");
  EXPECT_EQ(a.format(), ShardFormat::kLlmc);
  EXPECT_EQ(a.vocab_size(), 0u);
  EXPECT_EQ(a.token_bytes(), 2);
  EXPECT_EQ(a.max_token(), 50256u);
  EXPECT_EQ(read_all(a), (std::vector<int32_t>{50256, 11, 0, 7}));

  write_llmc(d / "v2.bin", 2, {100000, 5}, 2);
  Shard b = Shard::open(d / "v2.bin");
  EXPECT_EQ(b.token_bytes(), 4);
  EXPECT_EQ(b.max_token(), 100000u);
  EXPECT_EQ(read_all(b), (std::vector<int32_t>{100000, 5}));

  write_llmc(d / "short.bin", 1, {1, 2, 3}, 4);
  expect_user_error([&] { Shard::open(d / "short.bin"); }, {"short.bin", "truncated", "4 tokens"});
  write_llmc(d / "v3.bin", 3, {1}, 1);
  expect_user_error([&] { Shard::open(d / "v3.bin"); }, {"v3.bin", "version 3"});
}

// ---------------------------------------------------------------- prepare

// All tokens of a split's shards in order.
std::vector<int32_t> split_tokens(const PrepareReport& rep, const std::string& split) {
  std::vector<int32_t> all;
  for (const auto& p : rep.shards) {
    if (!p.filename().string().starts_with(split + "_")) continue;
    auto t = read_all(Shard::open(p));
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

// Documents of a token stream: the runs between EOTs (the stream must end with EOT).
std::multiset<std::string> split_docs(const std::vector<int32_t>& toks) {
  std::multiset<std::string> docs;
  std::string cur;
  for (int32_t t : toks) {
    if (t == ByteTokenizer::kEot) {
      docs.insert(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(t));
    }
  }
  EXPECT_TRUE(cur.empty()) << "stream does not end with EOT";
  return docs;
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// A small corpus: two text files, a JSON-lines file with a blank line, a file to skip.
void make_corpus(const fs::path& in) {
  write_file(in / "a.txt", "hello world");
  write_file(in / "b.md", "# title\n\xff\xfe not utf-8");
  write_file(in / "sub/c.jsonl",
             "{\"text\": \"doc one\", \"id\": 1}\n"
             "\n"
             "{\"text\": \"doc \\\"two\\\"\\n\"}\r\n"
             "{\"text\": \"\"}\n"  // empty document: skipped
             "{\"text\": \"three\", \"meta\": {\"x\": [1]}}");
  write_file(in / "skip.csv", "not,a,corpus,file");
  write_file(in / "empty.txt", "");
}

TEST(Prepare, TextAndJsonlToShardsAndManifest) {
  TempDir d;
  make_corpus(d / "in");
  PrepareOptions o{.inputs = {d / "in"}, .out_dir = d / "out", .val_fraction = 0.3, .seed = 7};
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  PrepareReport rep = prepare(o, [&](uint64_t done, uint64_t total) {
    calls.push_back({done, total});
  });

  const std::multiset<std::string> expected = {"hello world", "# title\n\xff\xfe not utf-8",
                                               "doc one", "doc \"two\"\n", "three"};
  EXPECT_EQ(rep.documents, 5u);
  uint64_t bytes = 0;
  for (const auto& s : expected) bytes += s.size();
  EXPECT_EQ(rep.train_tokens + rep.val_tokens, bytes + 5);  // + one EOT per document
  auto train = split_tokens(rep, "train"), val = split_tokens(rep, "val");
  EXPECT_EQ(train.size(), rep.train_tokens);
  EXPECT_EQ(val.size(), rep.val_tokens);
  auto tdocs = split_docs(train), vdocs = split_docs(val);
  EXPECT_GE(tdocs.size(), 1u);
  EXPECT_GE(vdocs.size(), 1u);
  std::multiset<std::string> all = tdocs;
  all.insert(vdocs.begin(), vdocs.end());
  EXPECT_EQ(all, expected);

  // Files read: a.txt, b.md, empty.txt, sub/c.jsonl (skip.csv is not a corpus extension).
  const uint64_t in_bytes = fs::file_size(d / "in/a.txt") + fs::file_size(d / "in/b.md") +
                            fs::file_size(d / "in/sub/c.jsonl");
  EXPECT_EQ(rep.bytes_read, in_bytes);
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), std::make_pair(in_bytes, in_bytes));

  EXPECT_EQ(files_in(d / "out"),
            (std::vector<std::string>{"manifest.json", "train_000000.bin", "val_000000.bin"}));
  auto m = nlohmann::json::parse(lmf::test::slurp(d / "out/manifest.json"));
  EXPECT_EQ(m["tokenizer"], "byte");
  EXPECT_EQ(m["vocab_size"], 257);
  EXPECT_EQ(m["documents"], 5);
  EXPECT_EQ(m["train_tokens"], rep.train_tokens);
  EXPECT_EQ(m["val_tokens"], rep.val_tokens);
  ASSERT_EQ(m["sources"].size(), 4u);
  EXPECT_EQ(m["sources"][3]["path"], (d / "in/sub/c.jsonl").string());  // sorted order
  EXPECT_EQ(m["sources"][3]["documents"], 3);
  EXPECT_EQ(m["sources"][1]["documents"], 1);
  EXPECT_EQ(m["sources"][2]["documents"], 0);  // empty.txt
  ASSERT_EQ(m["shards"].size(), 2u);
  EXPECT_EQ(m["shards"][0]["file"], "train_000000.bin");
  EXPECT_EQ(m["shards"][0]["tokens"], rep.train_tokens);
}

TEST(Prepare, SmallShardsSplitTheStreamAndAreDeterministic) {
  TempDir d;
  make_corpus(d / "in");
  PrepareOptions o{.inputs = {d / "in"},
                   .out_dir = d / "out1",
                   .val_fraction = 0.3,
                   .shard_tokens = 7,
                   .seed = 7};
  PrepareReport a = prepare(o);
  EXPECT_GT(a.shards.size(), 4u);
  for (const auto& p : a.shards) EXPECT_LE(Shard::open(p).size(), 7u) << p;
  // Same options (different thread count): same bytes.
  o.out_dir = d / "out2";
  o.threads = 1;
  PrepareReport b = prepare(o);
  ASSERT_EQ(a.shards.size(), b.shards.size());
  for (size_t i = 0; i < a.shards.size(); ++i) {
    EXPECT_EQ(a.shards[i].filename(), b.shards[i].filename());
    EXPECT_EQ(lmf::test::slurp(a.shards[i]), lmf::test::slurp(b.shards[i])) << a.shards[i];
  }
  // And the token stream equals the one with one big shard.
  o.out_dir = d / "out3";
  o.shard_tokens = 1000;
  PrepareReport c = prepare(o);
  EXPECT_EQ(split_tokens(a, "train"), split_tokens(c, "train"));
  EXPECT_EQ(split_tokens(a, "val"), split_tokens(c, "val"));
}

TEST(Prepare, ManyJsonlDocsParallelMatchesSerialAndSeedPicksValidation) {
  TempDir d;
  std::string lines;
  for (int i = 0; i < 3000; ++i) lines += fmt::format("{{\"body\": \"document number {}\"}}\n", i);
  write_file(d / "big.jsonl", lines);
  PrepareOptions o{.inputs = {d / "big.jsonl"},
                   .out_dir = d / "o1",
                   .text_field = "body",
                   .val_fraction = 0.1,
                   .seed = 1,
                   .threads = 2};
  PrepareReport a = prepare(o);
  o.out_dir = d / "o2";
  o.threads = 1;
  PrepareReport b = prepare(o);
  EXPECT_EQ(a.documents, 3000u);
  EXPECT_EQ(split_tokens(a, "train"), split_tokens(b, "train"));
  EXPECT_EQ(split_tokens(a, "val"), split_tokens(b, "val"));
  // About 10% of documents in validation: binomial(3000, 0.1) has sd ~16.4; allow 5 sd.
  auto vdocs = split_docs(split_tokens(a, "val"));
  EXPECT_NEAR(static_cast<double>(vdocs.size()), 300.0, 5 * 16.4);
  // A different seed picks different documents.
  o.out_dir = d / "o3";
  o.seed = 2;
  PrepareReport c = prepare(o);
  EXPECT_NE(split_docs(split_tokens(c, "val")), vdocs);
}

TEST(Prepare, AtLeastOneDocumentPerSplit) {
  TempDir d;
  write_file(d / "in/a.txt", "first");
  write_file(d / "in/b.txt", "second");
  write_file(d / "in/c.txt", "third");
  for (double frac : {1e-9, 0.999999}) {
    PrepareOptions o{.inputs = {d / "in"}, .out_dir = d / "out", .val_fraction = frac};
    PrepareReport rep = prepare(o);
    auto t = split_docs(split_tokens(rep, "train")), v = split_docs(split_tokens(rep, "val"));
    EXPECT_GE(t.size(), 1u) << frac;
    EXPECT_GE(v.size(), 1u) << frac;
    EXPECT_EQ(t.size() + v.size(), 3u);
  }
  // val_fraction 0: no validation shards at all.
  PrepareOptions o{.inputs = {d / "in"}, .out_dir = d / "out", .val_fraction = 0};
  PrepareReport rep = prepare(o);
  EXPECT_EQ(rep.val_tokens, 0u);
  EXPECT_EQ(files_in(d / "out"), (std::vector<std::string>{"manifest.json", "train_000000.bin"}));
}

TEST(Prepare, SingleDocumentSplitsItsTokens) {
  TempDir d;
  std::string text(999, 'x');
  write_file(d / "one.txt", text);
  PrepareOptions o{.inputs = {d / "one.txt"}, .out_dir = d / "out"};  // val_fraction 0.005
  PrepareReport rep = prepare(o);
  // 1000 tokens with EOT; val gets max(0.5%, 1%) of them = 10, the tail.
  EXPECT_EQ(rep.documents, 1u);
  EXPECT_EQ(rep.val_tokens, 10u);
  EXPECT_EQ(rep.train_tokens, 990u);
  auto v = split_tokens(rep, "val");
  EXPECT_EQ(v.back(), ByteTokenizer::kEot);
  EXPECT_EQ(v.front(), 'x');
  auto t = split_tokens(rep, "train");
  EXPECT_EQ(std::count(t.begin(), t.end(), ByteTokenizer::kEot), 0);
}

TEST(Prepare, BadJsonlLinesNameFileAndLine) {
  TempDir d;
  fs::path p = d / "bad.jsonl";
  write_file(p, "{\"text\": \"ok\"}\n\n{\"text\": \"ok\"\n");
  PrepareOptions o{.inputs = {p}, .out_dir = d / "out"};
  expect_user_error([&] { prepare(o); }, {p.string(), "line 3", "not valid JSON"});
  write_file(p, "{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n");
  expect_user_error([&] { prepare(o); }, {p.string(), "line 2", "no field \"text\""});
  write_file(p, "{\"text\": 5}\n");
  expect_user_error([&] { prepare(o); }, {p.string(), "line 1", "\"text\" is a number"});
  write_file(p, "[\"text\"]\n");
  expect_user_error([&] { prepare(o); }, {p.string(), "line 1", "JSON object"});
  // The first bad line is reported even when a later chunk fails first in parallel.
  std::string many;
  for (int i = 0; i < 5000; ++i)
    many += (i == 4000 || i == 1500) ? "oops\n" : "{\"text\": \"x\"}\n";
  write_file(p, many);
  o.threads = 2;
  expect_user_error([&] { prepare(o); }, {p.string(), "line 1501:"});
}

TEST(Prepare, FailureLeavesNoShardsBehind) {
  TempDir d;
  for (int i = 0; i < 5; ++i) write_file(d / fmt::format("in/{}.txt", i), std::string(50, 'a' + i));
  write_file(d / "in/z.jsonl", "{\"text\": \"fine\"}\nnot json\n");
  // A previous run's outputs are there too.
  write_file(d / "out/train_000042.bin", "stale");
  write_file(d / "out/manifest.json", "{}");
  write_file(d / "out/notes.txt", "mine");
  PrepareOptions o{.inputs = {d / "in"}, .out_dir = d / "out", .shard_tokens = 20};
  expect_user_error([&] { prepare(o); }, {"z.jsonl", "line 2"});
  // Shards were written before the bad file was reached; all of them are gone again.
  EXPECT_EQ(files_in(d / "out"), (std::vector<std::string>{"notes.txt"}));
}

TEST(Prepare, StaleShardsOfAPreviousRunAreReplaced) {
  TempDir d;
  write_file(d / "in/a.txt", "some text");
  write_file(d / "out/train_000099.bin", "stale");
  write_file(d / "out/val_000003.bin.tmp", "stale");
  PrepareOptions o{.inputs = {d / "in"}, .out_dir = d / "out"};
  prepare(o);
  EXPECT_EQ(files_in(d / "out"),
            (std::vector<std::string>{"manifest.json", "train_000000.bin", "val_000000.bin"}));
}

TEST(Prepare, BadInputsAreUserErrors) {
  TempDir d;
  fs::create_directories(d / "empty");
  PrepareOptions o{.inputs = {d / "empty"}, .out_dir = d / "out"};
  expect_user_error([&] { prepare(o); }, {"no input files"});
  write_file(d / "blank/a.txt", "");
  write_file(d / "blank/b.jsonl", "\n  \n");
  o.inputs = {d / "blank"};
  expect_user_error([&] { prepare(o); }, {"no documents"});
  o.inputs = {d / "nope.txt"};
  expect_user_error([&] { prepare(o); }, {(d / "nope.txt").string(), "no such file"});
  fs::create_symlink(d / "gone.txt", d / "dangling.txt");
  o.inputs = {d / "dangling.txt"};
  expect_user_error([&] { prepare(o); }, {"dangling.txt"});
  write_file(d / "in/a.txt", "text");
  o.inputs = {d / "in"};
  o.tokenizer = "nope";
  expect_user_error([&] { prepare(o); }, {"nope", "byte"});
  o.tokenizer = "byte";
  o.val_fraction = 1.0;
  expect_user_error([&] { prepare(o); }, {"val_fraction"});
  o.val_fraction = 0.1;
  o.shard_tokens = 0;
  expect_user_error([&] { prepare(o); }, {"shard_tokens"});
}

// ---------------------------------------------------------------- loader

// A split whose token at stream position i is i (vocab 100000, so uint32 shards), cut into
// shards of the given sizes so that windows straddle shard boundaries.
uint64_t make_position_split(const fs::path& dir, const std::string& split,
                             const std::vector<uint64_t>& sizes) {
  uint64_t pos = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<int32_t> t(sizes[s]);
    for (auto& x : t) x = static_cast<int32_t>(pos++);
    write_shard(dir / fmt::format("{}_{:06d}.bin", split, s), t, 100000);
  }
  return pos;
}

struct Batch {
  std::vector<int32_t> x, y;  // (B, T) each
  bool operator==(const Batch&) const = default;
};

Batch next_batch(DataLoader& dl) {
  Batch b{std::vector<int32_t>(dl.batch_size() * dl.seq_len()),
          std::vector<int32_t>(dl.batch_size() * dl.seq_len())};
  dl.next(b.x.data(), b.y.data());
  return b;
}

std::vector<Batch> batches(DataLoader& dl, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(next_batch(dl));
  return out;
}

TEST(DataLoader, WindowsAreContiguousAcrossShardsAndTargetsShifted) {
  TempDir d;
  const uint64_t n = make_position_split(d.path(), "train", {37, 5, 100, 1, 58});
  const int B = 3, T = 16;
  DataLoader dl(d.path(), "train", B, T, /*seed=*/5, /*shuffle=*/true);
  EXPECT_EQ(dl.num_tokens(), n);
  EXPECT_EQ(dl.vocab_size(), 100000u);
  EXPECT_EQ(dl.windows_per_epoch(), (n - 1) / T);
  for (int k = 0; k < 20; ++k) {
    Batch b = next_batch(dl);
    for (int i = 0; i < B; ++i) {
      const int32_t* x = &b.x[i * T];
      const int32_t* y = &b.y[i * T];
      EXPECT_EQ(x[0] % T, 0) << "window starts at a multiple of T";
      for (int t = 0; t < T; ++t) {
        EXPECT_EQ(x[t], x[0] + t);      // contiguous in the stream, across shards
        EXPECT_EQ(y[t], x[0] + t + 1);  // targets = inputs shifted by one
      }
      EXPECT_LE(static_cast<uint64_t>(y[T - 1]), n - 1);
    }
  }
}

// One epoch, one window per batch: every window exactly once, shuffled or in order.
std::vector<int32_t> epoch_starts(DataLoader& dl) {
  std::vector<int32_t> starts;
  for (uint64_t w = 0; w < dl.windows_per_epoch(); ++w) starts.push_back(next_batch(dl).x[0]);
  return starts;
}

TEST(DataLoader, EachEpochVisitsEveryWindowOnce) {
  TempDir d;
  const uint64_t n = make_position_split(d.path(), "train", {500, 301});
  const int T = 8;
  const uint64_t W = (n - 1) / T;
  std::vector<int32_t> all;
  for (uint64_t w = 0; w < W; ++w) all.push_back(static_cast<int32_t>(w * T));

  DataLoader ordered(d.path(), "train", 1, T, 3, /*shuffle=*/false);
  EXPECT_EQ(epoch_starts(ordered), all);
  EXPECT_EQ(ordered.state().epoch, 0u);
  EXPECT_EQ(ordered.state().index, W);
  EXPECT_EQ(epoch_starts(ordered), all);  // wrapped into epoch 1, same order
  EXPECT_EQ(ordered.state().epoch, 1u);

  DataLoader shuffled(d.path(), "train", 1, T, 3, /*shuffle=*/true);
  auto e0 = epoch_starts(shuffled), e1 = epoch_starts(shuffled);
  EXPECT_NE(e0, all);
  EXPECT_NE(e0, e1);  // a new permutation per epoch
  std::sort(e0.begin(), e0.end());
  std::sort(e1.begin(), e1.end());
  EXPECT_EQ(e0, all);
  EXPECT_EQ(e1, all);
}

TEST(DataLoader, SameSeedSameBatchesDifferentSeedDifferent) {
  TempDir d;
  make_position_split(d.path(), "train", {4000});
  DataLoader a(d.path(), "train", 4, 32, 11, true);
  DataLoader b(d.path(), "train", 4, 32, 11, true);
  DataLoader c(d.path(), "train", 4, 32, 12, true);
  auto ba = batches(a, 10), bb = batches(b, 10), bc = batches(c, 10);
  EXPECT_EQ(ba, bb);
  EXPECT_NE(ba, bc);
}

TEST(DataLoader, RestoreResumesExactlyAcrossEpochs) {
  TempDir d;
  make_position_split(d.path(), "train", {700, 333});
  // B = 5 does not divide the 64 windows per epoch, so batches straddle epochs.
  const int B = 5, T = 16;
  for (int world : {1, 2}) {
    for (int k : {0, 3, 12, 13, 40}) {
      DataLoader ref(d.path(), "train", B, T, 99, true, world - 1, world);
      auto expected = batches(ref, k + 30);
      DataLoader first(d.path(), "train", B, T, 99, true, world - 1, world);
      batches(first, k);
      LoaderState st = first.state();
      DataLoader resumed(d.path(), "train", B, T, 99, true, world - 1, world);
      resumed.restore(st);
      auto got = batches(resumed, 30);
      for (int i = 0; i < 30; ++i)
        EXPECT_EQ(got[i], expected[k + i]) << "world " << world << " k " << k << " batch " << i;
    }
  }
  DataLoader dl(d.path(), "train", B, T, 99, true);
  expect_user_error([&] { dl.restore({0, dl.windows_per_epoch() + 1}); }, {"windows per epoch"});
}

TEST(DataLoader, ResetRestartsTheSequence) {
  TempDir d;
  make_position_split(d.path(), "val", {1000});
  DataLoader dl(d.path(), "val", 2, 10, 1, false);
  auto first = batches(dl, 7);
  dl.reset();
  EXPECT_EQ(dl.state().epoch, 0u);
  EXPECT_EQ(dl.state().index, 0u);
  EXPECT_EQ(batches(dl, 7), first);
}

TEST(DataLoader, RanksTakeDisjointWindows) {
  TempDir d;
  const uint64_t n = make_position_split(d.path(), "train", {1001, 999});
  const int T = 20, world = 3;
  const uint64_t W = (n - 1) / T;
  std::set<int32_t> seen;
  for (int shuffle = 0; shuffle < 2; ++shuffle) {
    seen.clear();
    for (int r = 0; r < world; ++r) {
      DataLoader dl(d.path(), "train", 1, T, 4, shuffle, r, world);
      EXPECT_EQ(dl.windows_per_epoch(), W / world);
      for (int32_t s : epoch_starts(dl))
        EXPECT_TRUE(seen.insert(s).second) << "window " << s << " twice";
    }
    EXPECT_EQ(seen.size(), (W / world) * world);
  }
}

TEST(DataLoader, ErrorsNameTheDataAndWhatIsNeeded) {
  TempDir d;
  expect_user_error([&] { DataLoader(d.path(), "train", 1, 8, 0, true); },
                    {d.path().string(), "\"train\"", "no shards"});
  write_shard(d / "train_000000.bin", std::vector<int32_t>{1, 2, 3, 4, 5}, 257);
  expect_user_error([&] { DataLoader(d.path(), "train", 1, 8, 0, true); },
                    {"5 tokens", "at least 9"});
  EXPECT_NO_THROW(DataLoader(d.path(), "train", 1, 4, 0, true));
  expect_user_error([&] { DataLoader(d.path(), "train", 0, 4, 0, true); }, {"batch size"});
  // A corrupt shard is reported by name.
  write_shard(d / "train_000001.bin", std::vector<int32_t>(100, 1), 257);
  fs::resize_file(d / "train_000001.bin", 100);
  expect_user_error([&] { DataLoader(d.path(), "train", 1, 4, 0, true); },
                    {"train_000001.bin", "truncated"});
}

TEST(DataLoader, VocabIsMaxOverShardsAndLlmcShardsAreRead) {
  TempDir d;
  write_shard(d / "train_000000.bin", std::vector<int32_t>(50, 3), 300);
  write_shard(d / "train_000001.bin", std::vector<int32_t>(50, 4), 70000);
  DataLoader a(d.path(), "train", 1, 10, 0, false);
  EXPECT_EQ(a.vocab_size(), 70000u);
  EXPECT_EQ(a.num_tokens(), 100u);

  TempDir e;
  write_llmc(e / "fineweb_val_000000.bin", 1, {1, 2, 3, 50256, 5, 6, 7, 8, 9}, 9);
  write_llmc(e / "fineweb_train_000000.bin", 1, {1, 2}, 2);  // another split: not read
  DataLoader b(e.path(), "val", 2, 4, 0, false);
  EXPECT_EQ(b.num_tokens(), 9u);
  EXPECT_EQ(b.vocab_size(), 50257u);  // inferred: max token + 1
  Batch bt = next_batch(b);
  EXPECT_EQ(bt.x, (std::vector<int32_t>{1, 2, 3, 50256, 5, 6, 7, 8}));
  EXPECT_EQ(bt.y, (std::vector<int32_t>{2, 3, 50256, 5, 6, 7, 8, 9}));
}

TEST(DataLoader, ReadsWhatPrepareWrote) {
  TempDir d;
  make_corpus(d / "in");
  PrepareOptions o{.inputs = {d / "in"},
                   .out_dir = d / "out",
                   .val_fraction = 0.3,
                   .shard_tokens = 9,
                   .seed = 7};
  PrepareReport rep = prepare(o);
  auto stream = split_tokens(rep, "train");
  const int T = 4;
  DataLoader dl(d / "out", "train", 1, T, 0, false);
  EXPECT_EQ(dl.num_tokens(), rep.train_tokens);
  EXPECT_EQ(dl.vocab_size(), 257u);
  for (uint64_t w = 0; w < dl.windows_per_epoch(); ++w) {
    Batch b = next_batch(dl);
    EXPECT_TRUE(std::equal(b.x.begin(), b.x.end(), stream.begin() + w * T));
    EXPECT_TRUE(std::equal(b.y.begin(), b.y.end(), stream.begin() + w * T + 1));
  }
}

}  // namespace
}  // namespace lmf::data
