#include "data/prepare.h"

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/file_io.h"
#include "core/rng.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace lmf::data {

namespace fs = std::filesystem;

namespace {

// Input files are grouped until a group holds this much text; a group is tokenized in parallel
// and its tokens are in memory at once (4 bytes per byte-token).
constexpr uint64_t kGroupBytes = 64ull << 20;
constexpr size_t kGroupMaxFiles = 1024;
// The split draws live at Philox indices from 2^63 in stream kStreamData, far above the
// loader's shuffle counters (epoch << 38), so the two uses never share random bits.
constexpr uint64_t kSplitIndexBase = 1ull << 63;

struct InputFile {
  fs::path path;
  uint64_t bytes = 0;
  bool jsonl = false;
};

bool is_jsonl_ext(const std::string& ext) { return ext == ".jsonl" || ext == ".ndjson"; }

bool is_corpus_ext(const std::string& ext) {
  return ext == ".txt" || ext == ".md" || ext == ".text" || is_jsonl_ext(ext);
}

uint64_t file_bytes(const fs::path& p) {
  std::error_code ec;
  uint64_t n = fs::file_size(p, ec);
  if (ec) throw UserError("file {}: cannot read: {}", p.string(), ec.message());
  return n;
}

// Explicit files in the order given; each directory's matching files in sorted order.
std::vector<InputFile> collect_inputs(const std::vector<fs::path>& inputs) {
  std::vector<InputFile> files;
  for (const fs::path& in : inputs) {
    std::error_code ec;
    auto st = fs::status(in, ec);
    if (ec || !fs::exists(st)) throw UserError("input {}: no such file or directory", in.string());
    if (fs::is_directory(st)) {
      std::vector<fs::path> found;
      fs::recursive_directory_iterator it(in, ec), end;
      if (ec) throw UserError("input {}: cannot list directory: {}", in.string(), ec.message());
      for (; it != end; it.increment(ec)) {
        if (ec) break;
        std::error_code fec;
        if (it->is_regular_file(fec) && is_corpus_ext(it->path().extension().string()))
          found.push_back(it->path());
      }
      if (ec) throw UserError("input {}: cannot list directory: {}", in.string(), ec.message());
      std::sort(found.begin(), found.end());
      for (auto& p : found) {
        bool jl = is_jsonl_ext(p.extension().string());
        uint64_t n = file_bytes(p);
        files.push_back({std::move(p), n, jl});
      }
    } else {
      files.push_back({in, file_bytes(in), is_jsonl_ext(in.extension().string())});
    }
  }
  return files;
}

std::string read_file(const fs::path& p, uint64_t size_hint) {
  FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) throw UserError("file {}: cannot open: {}", p.string(), std::strerror(errno));
  // One allocation of the stat'ed size; keep reading in case the file grew since.
  std::string s(size_hint, '\0');
  size_t got = std::fread(s.data(), 1, s.size(), f);
  s.resize(got);
  char buf[1 << 16];
  size_t n;
  while (got == size_hint && (n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  bool bad = std::ferror(f);
  int err = errno;
  std::fclose(f);
  if (bad) throw UserError("file {}: read error: {}", p.string(), std::strerror(err));
  return s;
}

// The tokens of one file's documents (EOT not yet appended); empty documents stay empty and
// are skipped by the writer.
struct FileDocs {
  std::vector<std::vector<int32_t>> docs;
  uint64_t bytes = 0;
  std::exception_ptr error;
};

std::string json_error_text(const std::exception& e) {
  // nlohmann prefixes "[json.exception.parse_error.101] "; the user needs only the rest.
  std::string_view w = e.what();
  if (auto pos = w.find("] "); w.starts_with("[json.") && pos != std::string_view::npos)
    w.remove_prefix(pos + 2);
  // The parser sees one line at a time, so its "line 1" would contradict ours.
  std::string s(w);
  if (auto pos = s.find("at line 1, column"); pos != std::string::npos)
    s.replace(pos, 17, "at column");
  return s;
}

const char* json_type_article(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return "a number";
    case nlohmann::json::value_t::array:
      return "an array";
    case nlohmann::json::value_t::object:
      return "an object";
    default:
      return "not a string";
  }
}

void tokenize_jsonl(const InputFile& in, const std::string& content, const Tokenizer& tok,
                    const std::string& field, int threads, FileDocs& out) {
  struct Line {
    std::string_view text;
    uint64_t number;  // 1-based, counting blank lines
  };
  std::vector<Line> lines;
  uint64_t number = 0;
  for (size_t pos = 0; pos < content.size();) {
    size_t nl = content.find('\n', pos);
    size_t end = nl == std::string::npos ? content.size() : nl;
    ++number;
    std::string_view l(content.data() + pos, end - pos);
    if (l.find_first_not_of(" \t\r\f\v") != std::string_view::npos) lines.push_back({l, number});
    pos = end + 1;
  }
  out.docs.resize(lines.size());
  // Errors are collected and the first by line number reported, whatever the thread order.
  size_t first_bad = lines.size();
  std::string first_msg;
  std::exception_ptr first_exc;
  const int64_t n = static_cast<int64_t>(lines.size());
#pragma omp parallel for schedule(dynamic, 256) \
    num_threads(threads) if (!omp_in_parallel() && n > 1024)
  for (int64_t i = 0; i < n; ++i) {
    const Line& l = lines[i];
    std::string msg;
    std::exception_ptr exc;
    try {
      nlohmann::json j = nlohmann::json::parse(l.text);
      if (!j.is_object()) {
        msg = fmt::format("expected a JSON object with a string field \"{}\", got {}", field,
                          json_type_article(j));
      } else if (auto f = j.find(field); f == j.end()) {
        msg = fmt::format("no field \"{}\" in the JSON object", field);
      } else if (!f->is_string()) {
        msg = fmt::format("field \"{}\" is {}, expected a string", field, json_type_article(*f));
      } else {
        out.docs[i] = tok.encode(f->get_ref<const std::string&>());
      }
    } catch (const nlohmann::json::exception& e) {
      msg = "not valid JSON: " + json_error_text(e);
    } catch (...) {
      // Anything else (a tokenizer error) must not escape the parallel region.
      exc = std::current_exception();
    }
    if (!msg.empty() || exc) {
#pragma omp critical(lmf_prepare_jsonl_error)
      if (static_cast<size_t>(i) < first_bad) {
        first_bad = static_cast<size_t>(i);
        first_msg = std::move(msg);
        first_exc = exc;
      }
    }
  }
  if (first_exc) std::rethrow_exception(first_exc);
  if (first_bad < lines.size())
    throw UserError("file {} line {}: {}", in.path.string(), lines[first_bad].number, first_msg);
}

void tokenize_file(const InputFile& in, const Tokenizer& tok, const std::string& field, int threads,
                   FileDocs& out) {
  std::string content = read_file(in.path, in.bytes);
  out.bytes = content.size();
  if (in.jsonl) {
    tokenize_jsonl(in, content, tok, field, threads, out);
  } else {
    out.docs.push_back(tok.encode(content));
  }
}

// Fills shards of one split in order: <dir>/<split>_NNNNNN.bin, each at most `cap` tokens.
// Documents may straddle shards; the loader reads across shard boundaries.
class ShardWriter {
 public:
  ShardWriter(fs::path dir, std::string split, uint64_t cap, uint32_t vocab,
              std::vector<fs::path>& written)
      : dir_(std::move(dir)),
        split_(std::move(split)),
        cap_(cap),
        vocab_(vocab),
        written_(written) {}

  void append(std::span<const int32_t> t) {
    // Reserved once: growing a shard-sized vector by doubling costs copies and page faults.
    if (buf_.capacity() == 0)
      buf_.reserve(static_cast<size_t>(std::min<uint64_t>(cap_, 1ull << 28)));
    while (!t.empty()) {
      size_t take = static_cast<size_t>(std::min<uint64_t>(t.size(), cap_ - buf_.size()));
      buf_.insert(buf_.end(), t.begin(), t.begin() + take);
      t = t.subspan(take);
      total_ += take;
      if (buf_.size() == cap_) flush();
    }
  }
  void finish() {
    if (!buf_.empty()) flush();
  }
  uint64_t tokens() const { return total_; }
  struct Written {
    fs::path path;
    uint64_t tokens;
  };
  const std::vector<Written>& shards() const { return mine_; }

 private:
  void flush() {
    fs::path p = dir_ / fmt::format("{}_{:06d}.bin", split_, mine_.size());
    write_shard(p, buf_, vocab_);
    written_.push_back(p);
    mine_.push_back({p, buf_.size()});
    buf_.clear();
  }

  fs::path dir_;
  std::string split_;
  uint64_t cap_;
  uint32_t vocab_;
  std::vector<fs::path>& written_;  // every file this run wrote, for cleanup on failure
  std::vector<Written> mine_;
  std::vector<int32_t> buf_;  // (<= cap_,)
  uint64_t total_ = 0;
};

bool is_our_output(const std::string& name) {
  auto shard = [&](std::string_view prefix) {
    return name.starts_with(prefix) && (name.ends_with(".bin") || name.ends_with(".bin.tmp"));
  };
  return shard("train_") || shard("val_") || name == "manifest.json" || name == "manifest.json.tmp";
}

void remove_previous_outputs(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (is_our_output(e.path().filename().string())) stale.push_back(e.path());
  if (ec) throw UserError("output directory {}: cannot list: {}", dir.string(), ec.message());
  for (const auto& p : stale)
    if (!fs::remove(p, ec) && ec)
      throw UserError("file {}: cannot remove stale output: {}", p.string(), ec.message());
}

void check_options(const PrepareOptions& o) {
  if (o.inputs.empty()) throw UserError("prepare: no inputs given");
  if (o.out_dir.empty()) throw UserError("prepare: no output directory given");
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0))
    throw UserError("prepare: val_fraction is {}, expected a value in [0, 1)", o.val_fraction);
  if (o.shard_tokens == 0) throw UserError("prepare: shard_tokens must be > 0");
  if (o.threads < 0) throw UserError("prepare: threads is {}, expected >= 0", o.threads);
}

}  // namespace

PrepareReport prepare(const PrepareOptions& opts,
                      std::function<void(uint64_t, uint64_t)> progress) {
  check_options(opts);
  auto tok = make_tokenizer(opts.tokenizer);
  const uint32_t vocab = static_cast<uint32_t>(tok->vocab_size());
  const int32_t eot = tok->eot_id();
  const int threads = opts.threads > 0 ? opts.threads : omp_get_max_threads();

  std::vector<InputFile> files = collect_inputs(opts.inputs);
  if (files.empty())
    throw UserError(
        "prepare: no input files found (directories are searched for .txt .md .text "
        ".jsonl .ndjson)");
  uint64_t bytes_total = 0;
  for (const auto& f : files) bytes_total += f.bytes;

  std::error_code ec;
  fs::create_directories(opts.out_dir, ec);
  if (ec)
    throw UserError("output directory {}: cannot create: {}", opts.out_dir.string(), ec.message());
  remove_previous_outputs(opts.out_dir);

  std::vector<fs::path> written;
  try {
    ShardWriter train(opts.out_dir, "train", opts.shard_tokens, vocab, written);
    ShardWriter val(opts.out_dir, "val", opts.shard_tokens, vocab, written);
    const int32_t eot_tok[1] = {eot};
    uint64_t docs = 0, train_docs = 0, val_docs = 0, bytes_done = 0;

    // The newest document is held back until the next arrives (or the input ends), so that
    // the last one can be sent to whichever split the draws left empty.
    std::vector<int32_t> pending;
    bool pending_val = false;
    auto emit = [&](const std::vector<int32_t>& doc, bool to_val) {
      ShardWriter& w = to_val ? val : train;
      w.append(doc);
      w.append(eot_tok);
      ++(to_val ? val_docs : train_docs);
    };

    nlohmann::json sources = nlohmann::json::array();
    for (size_t g0 = 0; g0 < files.size();) {
      size_t g1 = g0 + 1;
      uint64_t gbytes = files[g0].bytes;
      while (g1 < files.size() && g1 - g0 < kGroupMaxFiles &&
             gbytes + files[g1].bytes <= kGroupBytes)
        gbytes += files[g1++].bytes;
      std::vector<FileDocs> res(g1 - g0);
      const int64_t ng = static_cast<int64_t>(g1 - g0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (ng > 1)
      for (int64_t k = 0; k < ng; ++k) {
        try {
          tokenize_file(files[g0 + k], *tok, opts.text_field, threads, res[k]);
        } catch (...) {
          res[k].error = std::current_exception();
        }
      }
      // In file order: the first failing file is the one reported, whatever the thread count.
      for (int64_t k = 0; k < ng; ++k) {
        FileDocs& r = res[k];
        if (r.error) std::rethrow_exception(r.error);
        uint64_t file_docs = 0;
        for (auto& d : r.docs) {
          if (d.empty()) continue;
          if (docs > 0) emit(pending, pending_val);
          pending = std::move(d);
          uint32_t draw = philox4x32(opts.seed, kStreamData, kSplitIndexBase + docs)[0];
          pending_val = u32_to_unit(draw) < opts.val_fraction;
          ++docs;
          ++file_docs;
        }
        r.docs = {};  // free this file's tokens before the next
        bytes_done += r.bytes;
        sources.push_back(
            {{"path", files[g0 + k].path.string()}, {"documents", file_docs}, {"bytes", r.bytes}});
        if (progress) progress(bytes_done, bytes_total);
      }
      g0 = g1;
    }

    if (docs == 0)
      throw UserError("prepare: no documents in {} input file(s) ({} bytes): nothing to prepare",
                      files.size(), bytes_done);
    if (docs == 1) {
      // One document: its tail is the validation set.
      pending.push_back(eot);
      const uint64_t n = pending.size();  // >= 2: a non-empty document plus EOT
      uint64_t k = 0;
      if (opts.val_fraction > 0) {
        double frac = std::max(opts.val_fraction, 0.01);
        k = std::clamp<uint64_t>(static_cast<uint64_t>(std::ceil(frac * n)), 1, n - 1);
      }
      std::span<const int32_t> all(pending);
      train.append(all.first(n - k));
      val.append(all.subspan(n - k));
      ++train_docs;
      if (k > 0) ++val_docs;
    } else {
      if (opts.val_fraction > 0 && val_docs == 0)
        pending_val = true;
      else if (train_docs == 0)
        pending_val = false;
      emit(pending, pending_val);
    }
    pending = {};
    train.finish();
    val.finish();

    PrepareReport rep;
    rep.documents = docs;
    rep.train_tokens = train.tokens();
    rep.val_tokens = val.tokens();
    rep.bytes_read = bytes_done;
    rep.shards = written;

    auto shard_list = nlohmann::json::array();
    auto add_shards = [&](const ShardWriter& w, const char* split) {
      for (const auto& s : w.shards())
        shard_list.push_back(
            {{"file", s.path.filename().string()}, {"split", split}, {"tokens", s.tokens}});
    };
    add_shards(train, "train");
    add_shards(val, "val");
    nlohmann::json manifest = {
        {"format", "lmforge-shards"},
        {"format_version", kShardVersion},
        {"tokenizer", tok->name()},
        {"vocab_size", vocab},
        {"eot_id", eot},
        {"text_field", opts.text_field},
        {"val_fraction", opts.val_fraction},
        {"seed", opts.seed},
        {"shard_tokens", opts.shard_tokens},
        {"sources", sources},
        {"documents", docs},
        {"train_documents", train_docs},
        {"val_documents", val_docs},
        {"train_tokens", rep.train_tokens},
        {"val_tokens", rep.val_tokens},
        {"bytes_read", rep.bytes_read},
        {"shards", shard_list},
    };
    fs::path mpath = opts.out_dir / "manifest.json";
    written.push_back(mpath);
    write_file_atomic(mpath, manifest.dump(2) + "\n");
    return rep;
  } catch (...) {
    // Leave no half dataset behind: every file is complete, but the set would not be.
    for (const auto& p : written) fs::remove(p, ec);
    throw;
  }
}

}  // namespace lmf::data
