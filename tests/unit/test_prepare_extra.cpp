// prepare: compressed inputs (.gz, .zst) and metadata conditioning (MeCo shards).
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace lmf::data {
namespace {

namespace fs = std::filesystem;

using TempDir = lmf::test::TempDir;

using lmf::test::write_file;

// One gzip member, as gzip(1) writes it.
std::string gzip(const std::string& s) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&z, static_cast<uLong>(s.size())) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.data()));
  z.avail_in = static_cast<uInt>(s.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// One zstd frame.
std::string zstd(const std::string& s) {
  std::string out(ZSTD_compressBound(s.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), s.data(), s.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

using test::expect_user_error;

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Every shard file in `dir` (name -> bytes).
std::map<std::string, std::string> shard_bytes(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& n : files_in(dir))
    if (n.ends_with(".bin")) m[n] = lmf::test::slurp(dir / n);
  return m;
}

// The documents of a split's shards, in order (byte tokenizer; runs between EOTs).
std::vector<std::string> split_docs(const std::vector<fs::path>& shards, const std::string& split) {
  std::vector<std::string> docs;
  std::string cur;
  for (const auto& p : shards) {
    if (!p.filename().string().starts_with(split + "_")) continue;
    Shard s = Shard::open(p);
    std::vector<int32_t> t(s.size());
    s.read(0, s.size(), t.data());
    for (int32_t x : t) {
      if (x == ByteTokenizer::kEot) {
        docs.push_back(cur);
        cur.clear();
      } else {
        cur.push_back(static_cast<char>(x));
      }
    }
  }
  EXPECT_TRUE(cur.empty()) << "stream does not end with EOT";
  return docs;
}

// JSON lines of varied lengths, `bytes` long or a little more; doc i's text is "doc i ...".
std::string make_jsonl(size_t bytes, uint32_t seed) {
  std::string s;
  for (int i = 0; s.size() < bytes; ++i) {
    seed = seed * 1664525u + 1013904223u;
    std::string pad((seed >> 16) % 300, static_cast<char>('a' + i % 26));
    s += fmt::format("{{\"text\": \"doc {} {}\", \"url\": \"site{}.org/{}\"}}\n", i, pad, i % 7, i);
    if (i % 97 == 0) s += "\n";  // blank lines count in line numbers
  }
  return s;
}

// ---------------------------------------------------------------- compressed inputs

TEST(PrepareCompressed, GzAndZstGiveTheSameShardsAsPlainFiles) {
  TempDir d;
  // 20 MB of JSON lines: more than one 16 MB read chunk, so a line straddles the cut.
  const std::string big = make_jsonl(20u << 20, 1);
  const std::string small = make_jsonl(5000, 2);
  const std::string text = "a plain text document\nwith two lines\n";
  const std::string md = "# title\n\xff\xfe not utf-8";
  write_file(d / "plain/a.txt", text);
  write_file(d / "plain/b.jsonl", big);
  write_file(d / "plain/c.md", md);
  write_file(d / "plain/d.ndjson", small);
  // Two gzip members and two zstd frames, concatenated: read as one stream each.
  write_file(d / "packed/a.txt.gz", gzip(text.substr(0, 7)) + gzip(text.substr(7)));
  write_file(d / "packed/b.jsonl.zst", zstd(big));
  write_file(d / "packed/c.md.gz", gzip(md));
  write_file(d / "packed/d.ndjson.zst", zstd(small.substr(0, 1234)) + zstd(small.substr(1234)));
  write_file(d / "packed/e.csv.gz", gzip("not,a,corpus"));  // skipped: a .csv under the .gz

  PrepareOptions o{.inputs = {d / "plain"},
                   .out_dir = d / "out_plain",
                   .val_fraction = 0.05,
                   .shard_tokens = 3'000'000,
                   .seed = 3};
  PrepareReport a = prepare(o);
  o.inputs = {d / "packed"};
  o.out_dir = d / "out_packed";
  PrepareReport b = prepare(o);
  EXPECT_GT(a.shards.size(), 2u);
  EXPECT_EQ(a.documents, b.documents);
  EXPECT_EQ(a.train_tokens, b.train_tokens);
  EXPECT_EQ(a.val_tokens, b.val_tokens);
  EXPECT_EQ(b.bytes_read, text.size() + big.size() + md.size() + small.size());
  auto sa = shard_bytes(d / "out_plain"), sb = shard_bytes(d / "out_packed");
  EXPECT_EQ(sa.size(), sb.size());
  EXPECT_TRUE(sa == sb) << "shards differ";
  auto m = nlohmann::json::parse(lmf::test::slurp(d / "out_packed/manifest.json"));
  ASSERT_EQ(m["sources"].size(), 4u);
  EXPECT_EQ(m["sources"][1]["bytes"], big.size());
  EXPECT_EQ(m["sources"][1]["compressed_bytes"], fs::file_size(d / "packed/b.jsonl.zst"));

  // Named explicitly, single-threaded: the same documents.
  o.inputs = {d / "packed/d.ndjson.zst", d / "packed/a.txt.gz"};
  o.out_dir = d / "out_explicit";
  o.threads = 1;
  PrepareReport c = prepare(o);
  o.inputs = {d / "plain/d.ndjson", d / "plain/a.txt"};
  o.out_dir = d / "out_explicit_plain";
  PrepareReport e = prepare(o);
  EXPECT_EQ(c.documents, e.documents);
  EXPECT_TRUE(shard_bytes(d / "out_explicit") == shard_bytes(d / "out_explicit_plain"));

  // A file alone in its group is written chunk by chunk as it is read; a file grouped with
  // another is tokenized whole. Same shards.
  write_file(d / "empty.txt", "");
  o.threads = 0;
  o.inputs = {d / "packed/b.jsonl.zst"};
  o.out_dir = d / "out_stream";
  prepare(o);
  o.inputs = {d / "packed/b.jsonl.zst", d / "empty.txt"};
  o.out_dir = d / "out_group";
  prepare(o);
  EXPECT_TRUE(shard_bytes(d / "out_stream") == shard_bytes(d / "out_group"));

  // Line numbers run on across read chunks.
  const uint64_t lines = static_cast<uint64_t>(std::count(big.begin(), big.end(), '\n'));
  write_file(d / "bad/x.jsonl.gz", gzip(big + "{\"text\": 1}\n"));
  o.inputs = {d / "bad"};
  o.out_dir = d / "out_bad";
  expect_user_error([&] { prepare(o); },
                    {fmt::format("x.jsonl.gz line {}:", lines + 1), "is a number"});
  // Shards of the chunks before the bad line were written; they are gone again.
  EXPECT_TRUE(files_in(d / "out_bad").empty());
}

TEST(PrepareCompressed, CorruptOrTruncatedDataNamesTheFileAndLeavesNoShards) {
  const std::string doc = make_jsonl(200'000, 5);
  struct Case {
    std::string name;
    std::function<std::string()> bytes;
    std::vector<std::string> want;
  };
  std::vector<Case> cases = {
      {"bad.jsonl.gz",
       [&] {
         std::string z = gzip(doc);
         for (size_t i = z.size() / 3; i < z.size() / 3 + 64; ++i) z[i] = static_cast<char>(~z[i]);
         return z;
       },
       {"corrupt gzip data"}},
      {"cut.txt.gz", [&] { return gzip(doc).substr(0, 1000); }, {"corrupt gzip data", "truncated"}},
      {"empty.txt.gz", [] { return std::string(); }, {"corrupt gzip data", "truncated"}},
      {"cut.jsonl.zst",
       [&] {
         std::string z = zstd(doc);
         return z.substr(0, z.size() / 2);
       },
       {"corrupt zstd data", "truncated"}},
      {"tail.jsonl.zst",  // only the frame's last byte (its checksum or block end) is missing
       [&] {
         std::string z = zstd(doc);
         return z.substr(0, z.size() - 1);
       },
       {"corrupt zstd data"}},
      {"bad.txt.zst",
       [&] {
         std::string z = zstd(doc);
         for (size_t i = 0; i < 4; ++i) z[i] = 'x';  // not a zstd frame
         return z;
       },
       {"corrupt zstd data"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TempDir d;
    // Good files first, so shards are written before the bad one is reached.
    for (int i = 0; i < 5; ++i)
      write_file(d / fmt::format("in/{}.txt", i), std::string(50, static_cast<char>('a' + i)));
    write_file(d / ("in/" + c.name), c.bytes());
    write_file(d / "out/notes.txt", "mine");
    PrepareOptions o{.inputs = {d / "in"}, .out_dir = d / "out", .shard_tokens = 20};
    std::vector<std::string> want = c.want;
    want.push_back((d / ("in/" + c.name)).string());
    expect_user_error([&] { prepare(o); }, want);
    EXPECT_EQ(files_in(d / "out"), (std::vector<std::string>{"notes.txt"}));
  }
}

// ---------------------------------------------------------------- MeCo

std::string meco_prefix(const std::string& meta) { return "URL: " + meta + "\n\n"; }

TEST(PrepareMeco, MetadataShardsHoldThePrefixedTrainingDocuments) {
  TempDir d;
  std::map<std::string, std::string> meta;  // document -> its metadata
  std::string jl;
  for (int i = 0; i < 40; ++i) {
    std::string text = fmt::format("jsonl doc {}", i);
    std::string url = fmt::format("example.org/{}", i);
    meta[text] = url;
    jl += nlohmann::json{{"text", text}, {"url", url}}.dump() + "\n";
  }
  jl += "{\"text\": \"\", \"url\": \"empty.org\"}\n";  // empty document: in neither set
  write_file(d / "in/c.jsonl", jl);
  write_file(d / "in/a.txt", "text file a");
  meta["text file a"] = "a.txt";
  write_file(d / "in/sub/b.md.gz", gzip("text file b"));
  meta["text file b"] = "sub/b.md.gz";
  write_file(d / "one.txt", "named explicitly");
  meta["named explicitly"] = "one.txt";

  PrepareOptions o{.inputs = {d / "in", d / "one.txt"},
                   .out_dir = d / "plain",
                   .val_fraction = 0.25,
                   .shard_tokens = 97,
                   .seed = 11};
  PrepareReport plain = prepare(o);
  o.out_dir = d / "out";
  o.metadata_field = "url";
  o.metadata_template = "URL: {}\n\n";
  PrepareReport rep = prepare(o);

  // The plain set is what it is without metadata.
  EXPECT_TRUE(shard_bytes(d / "plain") == shard_bytes(d / "out"));
  EXPECT_EQ(rep.documents, 43u);
  EXPECT_EQ(rep.train_tokens, plain.train_tokens);
  // The MeCo set: the same training documents in the same order, each with its prefix; no
  // validation documents.
  std::vector<std::string> train = split_docs(rep.shards, "train");
  std::vector<std::string> val = split_docs(rep.shards, "val");
  std::vector<std::string> mtrain = split_docs(rep.meco_shards, "train");
  ASSERT_GT(val.size(), 0u);
  ASSERT_EQ(mtrain.size(), train.size());
  uint64_t want_tokens = 0;
  for (size_t i = 0; i < train.size(); ++i) {
    ASSERT_TRUE(meta.count(train[i])) << train[i];
    EXPECT_EQ(mtrain[i], meco_prefix(meta[train[i]]) + train[i]);
    want_tokens += mtrain[i].size() + 1;
  }
  EXPECT_EQ(rep.meco_train_tokens, want_tokens);
  ASSERT_GT(rep.meco_shards.size(), 1u);
  std::vector<std::string> names = files_in(d / "out/meco");
  EXPECT_EQ(names.size(), rep.meco_shards.size() + 1);
  for (const auto& n : names) EXPECT_TRUE(n == "manifest.json" || n.starts_with("train_")) << n;
  auto m = nlohmann::json::parse(lmf::test::slurp(d / "out/meco/manifest.json"));
  EXPECT_EQ(m["train_tokens"], want_tokens);
  EXPECT_EQ(m["val_tokens"], 0);
  EXPECT_EQ(m["metadata_field"], "url");
  EXPECT_EQ(m["shards"].size(), rep.meco_shards.size());
  EXPECT_FALSE(fs::exists(d / "plain/meco"));

  // A later run without metadata removes the now stale MeCo set.
  o.metadata_field.clear();
  prepare(o);
  EXPECT_FALSE(fs::exists(d / "out/meco"));
  EXPECT_TRUE(shard_bytes(d / "plain") == shard_bytes(d / "out"));
}

TEST(PrepareMeco, SingleDocumentLosesTheSameTailInBothSets) {
  TempDir d;
  write_file(d / "in/only.txt", std::string(200, 'x'));
  PrepareOptions o{.inputs = {d / "in"},
                   .out_dir = d / "out",
                   .val_fraction = 0.1,
                   .metadata_field = "path",
                   .metadata_template = "<{}>"};
  PrepareReport rep = prepare(o);
  // 201 tokens with EOT: the last ceil(0.1 * 201) = 21 go to validation.
  EXPECT_EQ(rep.val_tokens, 21u);
  EXPECT_EQ(rep.meco_train_tokens, rep.train_tokens + std::string("<only.txt>").size());
  Shard s = Shard::open(rep.meco_shards.at(0));
  std::vector<int32_t> t(s.size());
  s.read(0, s.size(), t.data());
  EXPECT_EQ(std::string(t.begin(), t.end()), "<only.txt>" + std::string(180, 'x'));
}

TEST(PrepareMeco, MissingMetadataIsAnErrorWithFileAndLine) {
  TempDir d;
  for (int i = 0; i < 5; ++i) write_file(d / fmt::format("in/{}.txt", i), std::string(50, 'a'));
  write_file(d / "in/z.jsonl.gz", gzip("{\"text\": \"a\", \"url\": \"u\"}\n"
                                       "\n"
                                       "{\"text\": \"b\"}\n"));
  write_file(d / "out/meco/notes.txt", "mine");
  PrepareOptions o{
      .inputs = {d / "in"}, .out_dir = d / "out", .shard_tokens = 20, .metadata_field = "url"};
  expect_user_error([&] { prepare(o); },
                    {(d / "in/z.jsonl.gz").string(), "line 3", "no metadata field \"url\""});
  EXPECT_EQ(files_in(d / "out"), (std::vector<std::string>{"meco"}));
  EXPECT_EQ(files_in(d / "out/meco"), (std::vector<std::string>{"notes.txt"}));

  write_file(d / "in/z.jsonl.gz", gzip("{\"text\": \"b\", \"url\": 7}\n"));
  expect_user_error([&] { prepare(o); }, {"z.jsonl.gz line 1", "\"url\" is a number"});

  o.metadata_template = "no placeholder";
  expect_user_error([&] { prepare(o); }, {"metadata template", "{}"});
}

TEST(PrepareMeco, CliTemplateEscapes) {
  TempDir d;
  write_file(d / "in/a.jsonl",
             "{\"text\": \"one\", \"src\": \"s1\"}\n{\"text\": \"two\", \"src\": \"s2\"}\n");
  std::string cmd = fmt::format(
      "'{}' prepare --input '{}' --output '{}' --val-fraction 0 --metadata-field src "
      "--metadata-template 'SRC: {{}}\\n\\t\\\\x' > /dev/null",
      LMF_BINARY, (d / "in").string(), (d / "out").string());
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<std::string> docs = split_docs({d / "out/meco/train_000000.bin"}, "train");
  EXPECT_EQ(docs, (std::vector<std::string>{"SRC: s1\n\t\\xone", "SRC: s2\n\t\\xtwo"}));
}

}  // namespace
}  // namespace lmf::data
