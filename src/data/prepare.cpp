#include "data/prepare.h"

#include <omp.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
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

enum class Compression { kNone, kGzip, kZstd };

struct InputFile {
  fs::path path;
  uint64_t bytes = 0;  // on disk (compressed)
  bool jsonl = false;
  Compression compression = Compression::kNone;
  std::string meta;  // text files: path relative to the input root (MeCo metadata)
};

bool is_jsonl_ext(const std::string& ext) { return ext == ".jsonl" || ext == ".ndjson"; }

bool is_corpus_ext(const std::string& ext) {
  return ext == ".txt" || ext == ".md" || ext == ".text" || is_jsonl_ext(ext);
}

Compression compression_of(const fs::path& p) {
  std::string ext = p.extension().string();
  if (ext == ".gz") return Compression::kGzip;
  if (ext == ".zst") return Compression::kZstd;
  return Compression::kNone;
}

// The extension that says the content type: under the compression suffix, if any.
std::string content_ext(const fs::path& p) {
  return compression_of(p) == Compression::kNone ? p.extension().string()
                                                 : p.stem().extension().string();
}

// Bytes a file weighs in a group: compressed text expands, and its tokens are what is held.
uint64_t group_cost(const InputFile& f) {
  return f.compression == Compression::kNone ? f.bytes : 4 * f.bytes;
}

uint64_t file_bytes(const fs::path& p) {
  std::error_code ec;
  uint64_t n = fs::file_size(p, ec);
  if (ec) throw UserError("file {}: cannot read: {}", p.string(), ec.message());
  return n;
}

InputFile make_input(fs::path p, std::string meta) {
  InputFile f;
  f.bytes = file_bytes(p);
  f.jsonl = is_jsonl_ext(content_ext(p));
  f.compression = compression_of(p);
  f.meta = std::move(meta);
  f.path = std::move(p);
  return f;
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
        if (it->is_regular_file(fec) && is_corpus_ext(content_ext(it->path())))
          found.push_back(it->path());
      }
      if (ec) throw UserError("input {}: cannot list directory: {}", in.string(), ec.message());
      std::sort(found.begin(), found.end());
      for (auto& p : found) {
        std::string rel = p.lexically_relative(in).generic_string();
        files.push_back(make_input(std::move(p), std::move(rel)));
      }
    } else {
      files.push_back(make_input(in, in.filename().string()));
    }
  }
  return files;
}

// A file's bytes as a stream, decompressed on the fly for .gz and .zst. Concatenated gzip
// members and zstd frames are read one after another, as gzip -d and zstd -d do.
class InputStream {
 public:
  InputStream(const fs::path& p, Compression c) : path_(p), c_(c) {
    f_ = std::fopen(p.c_str(), "rb");
    if (!f_) throw UserError("file {}: cannot open: {}", p.string(), std::strerror(errno));
    if (c_ == Compression::kGzip) {
      zs_ = std::make_unique<z_stream>();
      // 15 + 16: the largest window, gzip wrapper only.
      if (inflateInit2(zs_.get(), 15 + 16) != Z_OK) {
        std::fclose(f_);
        throw UserError("file {}: cannot start gzip decompression", p.string());
      }
    } else if (c_ == Compression::kZstd) {
      zd_ = ZSTD_createDCtx();
      if (!zd_) {
        std::fclose(f_);
        throw UserError("file {}: cannot start zstd decompression", p.string());
      }
    }
    if (c_ != Compression::kNone) in_.resize(1 << 17);
  }
  ~InputStream() {
    if (zs_) inflateEnd(zs_.get());
    if (zd_) ZSTD_freeDCtx(zd_);
    std::fclose(f_);
  }
  InputStream(const InputStream&) = delete;
  InputStream& operator=(const InputStream&) = delete;

  // Up to n bytes into dst; fewer only at the end of the data.
  size_t read(char* dst, size_t n) {
    switch (c_) {
      case Compression::kGzip:
        return read_gzip(dst, n);
      case Compression::kZstd:
        return read_zstd(dst, n);
      default:
        return read_raw(dst, n);
    }
  }

  // Everything left. `size_hint` sizes the one allocation a plain file needs (its stat'ed size);
  // compressed data, and a file that grew since, is appended in pieces.
  std::string read_all(uint64_t size_hint) {
    std::string s(size_hint, '\0');
    size_t got = read(s.data(), s.size());
    s.resize(got);
    if (got < size_hint) return s;
    std::vector<char> piece(1 << 20);
    while (size_t n = read(piece.data(), piece.size())) s.append(piece.data(), n);
    return s;
  }

 private:
  size_t read_raw(char* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      size_t k = std::fread(dst + got, 1, n - got, f_);
      if (k == 0) break;
      got += k;
    }
    if (std::ferror(f_))
      throw UserError("file {}: read error: {}", path_.string(), std::strerror(errno));
    return got;
  }

  // Refills the compressed input buffer once it is used up; returns the bytes now in it.
  size_t refill() {
    size_t k = read_raw(in_.data(), in_.size());
    if (k < in_.size()) eof_ = true;
    return k;
  }

  [[noreturn]] void corrupt(const char* kind, std::string_view why) const {
    throw UserError("file {}: corrupt {} data: {}", path_.string(), kind, why);
  }

  size_t read_gzip(char* dst, size_t n) {
    z_stream& z = *zs_;
    z.next_out = reinterpret_cast<Bytef*>(dst);
    z.avail_out = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    const uInt want = z.avail_out;
    while (z.avail_out > 0) {
      if (z.avail_in == 0 && !eof_) {
        z.avail_in = static_cast<uInt>(refill());
        z.next_in = reinterpret_cast<Bytef*>(in_.data());
      }
      if (z.avail_in == 0 && eof_ && member_done_) break;
      if (member_done_) {  // more bytes after a complete member: the next member
        inflateReset(&z);
        member_done_ = false;
      }
      int r = inflate(&z, Z_NO_FLUSH);
      if (r == Z_STREAM_END) {
        member_done_ = true;
      } else if (r == Z_BUF_ERROR && z.avail_in == 0 && eof_) {
        corrupt("gzip", "unexpected end of data (truncated file?)");
      } else if (r != Z_OK) {
        corrupt("gzip", z.msg ? z.msg : zError(r));
      }
    }
    return want - z.avail_out;
  }

  size_t read_zstd(char* dst, size_t n) {
    ZSTD_outBuffer out{dst, n, 0};
    while (out.pos < out.size) {
      if (zin_.pos == zin_.size && !eof_) zin_ = {in_.data(), refill(), 0};
      if (zin_.pos == zin_.size && eof_ && frame_done_) break;
      size_t before = out.pos;
      size_t r = ZSTD_decompressStream(zd_, &out, &zin_);
      if (ZSTD_isError(r)) corrupt("zstd", ZSTD_getErrorName(r));
      frame_done_ = r == 0;
      if (!frame_done_ && zin_.pos == zin_.size && eof_ && out.pos == before)
        corrupt("zstd", "unexpected end of data (truncated file?)");
    }
    return out.pos;
  }

  fs::path path_;
  Compression c_;
  FILE* f_ = nullptr;
  std::vector<char> in_;  // compressed bytes read ahead
  bool eof_ = false;
  std::unique_ptr<z_stream> zs_;
  bool member_done_ = false;  // gzip: the last member ended; no member has started yet
  ZSTD_DCtx* zd_ = nullptr;
  ZSTD_inBuffer zin_{nullptr, 0, 0};
  bool frame_done_ = false;  // zstd: the last frame ended and was flushed
};

// MeCo's document prefix: the template with every "{}" replaced by the metadata.
std::string render_metadata(const std::string& tmpl, std::string_view meta) {
  std::string out;
  for (size_t pos = 0;;) {
    size_t at = tmpl.find("{}", pos);
    if (at == std::string::npos) return out.append(tmpl, pos);
    out.append(tmpl, pos, at - pos).append(meta);
    pos = at + 2;
  }
}

// The tokens of one file's documents (EOT not yet appended); empty documents stay empty and
// are skipped by the writer. With MeCo, meco[i] is docs[i] with its metadata prefix.
struct FileDocs {
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::vector<int32_t>> meco;  // empty without metadata_field, else docs.size()
  uint64_t bytes = 0;                      // decompressed bytes read
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

// What tokenizing needs besides the file.
struct TokenizeCtx {
  const Tokenizer& tok;
  const PrepareOptions& opts;
  int threads;
};

// Tokenizes the lines of one chunk of a JSON-lines file (whole lines; `first_line` is the
// 1-based number of its first) and appends their documents to `out`.
void tokenize_jsonl_chunk(const InputFile& in, std::string_view content, uint64_t first_line,
                          const TokenizeCtx& ctx, FileDocs& out) {
  struct Line {
    std::string_view text;
    uint64_t number;  // 1-based, counting blank lines
  };
  std::vector<Line> lines;
  uint64_t number = first_line - 1;
  for (size_t pos = 0; pos < content.size();) {
    size_t nl = content.find('\n', pos);
    size_t end = nl == std::string::npos ? content.size() : nl;
    ++number;
    std::string_view l(content.data() + pos, end - pos);
    if (l.find_first_not_of(" \t\r\f\v") != std::string_view::npos) lines.push_back({l, number});
    pos = end + 1;
  }
  const std::string& field = ctx.opts.text_field;
  const std::string& mfield = ctx.opts.metadata_field;
  const bool meco = !mfield.empty();
  const size_t base = out.docs.size();
  out.docs.resize(base + lines.size());
  if (meco) out.meco.resize(base + lines.size());
  // A string field of an object, or the reason there is none.
  auto string_field = [](const nlohmann::json& j, const std::string& name, std::string& msg,
                         const char* what) -> const std::string* {
    auto f = j.find(name);
    if (f == j.end()) {
      msg = fmt::format("no {}field \"{}\" in the JSON object", what, name);
    } else if (!f->is_string()) {
      msg =
          fmt::format("{}field \"{}\" is {}, expected a string", what, name, json_type_article(*f));
    } else {
      return &f->get_ref<const std::string&>();
    }
    return nullptr;
  };
  // Errors are collected and the first by line number reported, whatever the thread order.
  size_t first_bad = lines.size();
  std::string first_msg;
  std::exception_ptr first_exc;
  const int64_t n = static_cast<int64_t>(lines.size());
#pragma omp parallel for schedule(dynamic, 256) \
    num_threads(ctx.threads) if (!omp_in_parallel() && n > 1024)
  for (int64_t i = 0; i < n; ++i) {
    const Line& l = lines[i];
    std::string msg;
    std::exception_ptr exc;
    try {
      nlohmann::json j = nlohmann::json::parse(l.text);
      if (!j.is_object()) {
        msg = fmt::format("expected a JSON object with a string field \"{}\", got {}", field,
                          json_type_article(j));
      } else if (const std::string* text = string_field(j, field, msg, "")) {
        if (!meco) {
          out.docs[base + i] = ctx.tok.encode(*text);
        } else if (const std::string* m = string_field(j, mfield, msg, "metadata ")) {
          out.docs[base + i] = ctx.tok.encode(*text);
          if (!text->empty())
            out.meco[base + i] =
                ctx.tok.encode(render_metadata(ctx.opts.metadata_template, *m) + *text);
        }
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

// JSON lines are read and tokenized this many bytes (of whole lines) at a time.
constexpr size_t kJsonlChunkBytes = 16 << 20;

// Tokenizes one file into `out`. With `flush`, a JSON-lines file hands over its documents after
// every chunk (flush takes them and leaves `out.docs` empty), so a large file is never held
// whole, neither its text nor its tokens.
void tokenize_file(const InputFile& in, const TokenizeCtx& ctx, FileDocs& out,
                   const std::function<void(FileDocs&)>& flush = {}) {
  InputStream stream(in.path, in.compression);
  if (!in.jsonl) {
    std::string content = stream.read_all(in.bytes);
    out.bytes = content.size();
    out.docs.push_back(ctx.tok.encode(content));
    if (!ctx.opts.metadata_field.empty())
      out.meco.push_back(
          content.empty()
              ? std::vector<int32_t>{}
              : ctx.tok.encode(render_metadata(ctx.opts.metadata_template, in.meta) + content));
    return;
  }
  std::string buf;  // whole lines not yet tokenized, then the start of a partial one
  uint64_t line = 1;
  for (bool end = false; !end;) {
    size_t have = buf.size();
    buf.resize(have + kJsonlChunkBytes);
    size_t got = stream.read(buf.data() + have, kJsonlChunkBytes);
    buf.resize(have + got);
    out.bytes += got;
    end = got < kJsonlChunkBytes;
    // Whole lines only, unless this is the end; a line longer than a chunk waits for more.
    size_t cut = end ? buf.size() : buf.rfind('\n');
    if (cut == std::string::npos) continue;
    if (!end) ++cut;
    std::string_view whole(buf.data(), cut);
    tokenize_jsonl_chunk(in, whole, line, ctx, out);
    line += static_cast<uint64_t>(std::count(whole.begin(), whole.end(), '\n'));
    buf.erase(0, cut);
    if (flush) flush(out);
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
  if (!o.metadata_field.empty() && o.metadata_template.find("{}") == std::string::npos)
    throw UserError("prepare: metadata template '{}' has no {{}} for the metadata",
                    o.metadata_template);
}

}  // namespace

PrepareReport prepare(const PrepareOptions& opts,
                      std::function<void(uint64_t, uint64_t)> progress) {
  check_options(opts);
  auto tok = make_tokenizer(opts.tokenizer);
  const uint32_t vocab = static_cast<uint32_t>(tok->vocab_size());
  const int32_t eot = tok->eot_id();
  const int threads = opts.threads > 0 ? opts.threads : omp_get_max_threads();
  const bool meco = !opts.metadata_field.empty();
  const TokenizeCtx ctx{.tok = *tok, .opts = opts, .threads = threads};

  std::vector<InputFile> files = collect_inputs(opts.inputs);
  if (files.empty())
    throw UserError(
        "prepare: no input files found (directories are searched for .txt .md .text "
        ".jsonl .ndjson, also with .gz or .zst)");
  uint64_t bytes_total = 0;
  for (const auto& f : files) bytes_total += f.bytes;

  std::error_code ec;
  fs::create_directories(opts.out_dir, ec);
  if (ec)
    throw UserError("output directory {}: cannot create: {}", opts.out_dir.string(), ec.message());
  remove_previous_outputs(opts.out_dir);
  // A previous MeCo set would no longer match the plain shards: it goes too.
  const fs::path meco_dir = opts.out_dir / "meco";
  if (fs::is_directory(meco_dir, ec)) remove_previous_outputs(meco_dir);
  if (meco) {
    fs::create_directories(meco_dir, ec);
    if (ec)
      throw UserError("output directory {}: cannot create: {}", meco_dir.string(), ec.message());
  } else {
    fs::remove(meco_dir, ec);  // only if now empty
  }

  std::vector<fs::path> written;
  try {
    ShardWriter train(opts.out_dir, "train", opts.shard_tokens, vocab, written);
    ShardWriter val(opts.out_dir, "val", opts.shard_tokens, vocab, written);
    ShardWriter meco_train(meco_dir, "train", opts.shard_tokens, vocab, written);  // MeCo only
    const int32_t eot_tok[1] = {eot};
    uint64_t docs = 0, train_docs = 0, val_docs = 0;
    uint64_t bytes_done = 0, text_bytes = 0;  // on disk (for progress); decompressed

    // The newest document is held back until the next arrives (or the input ends), so that
    // the last one can be sent to whichever split the draws left empty.
    std::vector<int32_t> pending, pending_meco;
    bool pending_val = false;
    auto emit = [&](const std::vector<int32_t>& doc, const std::vector<int32_t>& meco_doc,
                    bool to_val) {
      ShardWriter& w = to_val ? val : train;
      w.append(doc);
      w.append(eot_tok);
      if (meco && !to_val) {
        meco_train.append(meco_doc);
        meco_train.append(eot_tok);
      }
      ++(to_val ? val_docs : train_docs);
    };
    // Takes the documents tokenized so far from r (in order), drawing each one's split.
    uint64_t file_docs = 0;
    auto take = [&](FileDocs& r) {
      for (size_t i = 0; i < r.docs.size(); ++i) {
        if (r.docs[i].empty()) continue;
        if (docs > 0) emit(pending, pending_meco, pending_val);
        pending = std::move(r.docs[i]);
        if (meco) pending_meco = std::move(r.meco[i]);
        uint32_t draw = philox4x32(opts.seed, kStreamData, kSplitIndexBase + docs)[0];
        pending_val = u32_to_unit(draw) < opts.val_fraction;
        ++docs;
        ++file_docs;
      }
      r.docs.clear();  // free this file's tokens before the next
      r.meco.clear();
    };

    nlohmann::json sources = nlohmann::json::array();
    for (size_t g0 = 0; g0 < files.size();) {
      size_t g1 = g0 + 1;
      uint64_t gbytes = group_cost(files[g0]);
      while (g1 < files.size() && g1 - g0 < kGroupMaxFiles &&
             gbytes + group_cost(files[g1]) <= kGroupBytes)
        gbytes += group_cost(files[g1++]);
      std::vector<FileDocs> res(g1 - g0);
      const int64_t ng = static_cast<int64_t>(g1 - g0);
      file_docs = 0;
      if (ng == 1) {
        // Alone in its group: write as it is read (the file's own lines run in parallel).
        tokenize_file(files[g0], ctx, res[0], take);
      } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (int64_t k = 0; k < ng; ++k) {
          try {
            tokenize_file(files[g0 + k], ctx, res[k]);
          } catch (...) {
            res[k].error = std::current_exception();
          }
        }
      }
      // In file order: the first failing file is the one reported, whatever the thread count.
      for (int64_t k = 0; k < ng; ++k) {
        FileDocs& r = res[k];
        if (r.error) std::rethrow_exception(r.error);
        if (k > 0) file_docs = 0;
        take(r);
        bytes_done += files[g0 + k].bytes;
        text_bytes += r.bytes;
        nlohmann::json src = {
            {"path", files[g0 + k].path.string()}, {"documents", file_docs}, {"bytes", r.bytes}};
        if (files[g0 + k].compression != Compression::kNone)
          src["compressed_bytes"] = files[g0 + k].bytes;
        sources.push_back(std::move(src));
        if (progress) progress(bytes_done, bytes_total);
      }
      g0 = g1;
    }

    if (docs == 0)
      throw UserError("prepare: no documents in {} input file(s) ({} bytes): nothing to prepare",
                      files.size(), text_bytes);
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
      if (meco) {
        // The same number of tokens off its end; the prefix makes it longer than k.
        pending_meco.push_back(eot);
        std::span<const int32_t> m(pending_meco);
        meco_train.append(m.first(m.size() - std::min<size_t>(k, m.size() - 1)));
      }
      ++train_docs;
      if (k > 0) ++val_docs;
    } else {
      if (opts.val_fraction > 0 && val_docs == 0)
        pending_val = true;
      else if (train_docs == 0)
        pending_val = false;
      emit(pending, pending_meco, pending_val);
    }
    pending = {};
    pending_meco = {};
    train.finish();
    val.finish();
    meco_train.finish();

    PrepareReport rep;
    rep.documents = docs;
    rep.train_tokens = train.tokens();
    rep.val_tokens = val.tokens();
    rep.bytes_read = text_bytes;
    for (const ShardWriter* w : {&train, &val})
      for (const auto& s : w->shards()) rep.shards.push_back(s.path);
    rep.meco_train_tokens = meco_train.tokens();
    for (const auto& s : meco_train.shards()) rep.meco_shards.push_back(s.path);

    auto shard_list = [](std::initializer_list<std::pair<const ShardWriter*, const char*>> ws) {
      auto list = nlohmann::json::array();
      for (auto [w, split] : ws)
        for (const auto& s : w->shards())
          list.push_back(
              {{"file", s.path.filename().string()}, {"split", split}, {"tokens", s.tokens}});
      return list;
    };
    nlohmann::json manifest = {
        {"format", "lmforge-shards"},
        {"format_version", kShardVersion},
        {"tokenizer", tok->name()},
        {"vocab_fingerprint", fmt::format("{:016x}", vocab_fingerprint(*tok))},
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
        {"shards", shard_list({{&train, "train"}, {&val, "val"}})},
    };
    if (!opts.license.empty()) manifest["license"] = opts.license;
    if (meco) {
      manifest["metadata_field"] = opts.metadata_field;
      manifest["metadata_template"] = opts.metadata_template;
      // The MeCo set: the training documents of the plain set, each with its metadata prefix.
      nlohmann::json mm = manifest;
      mm["plain"] = "..";
      mm["val_documents"] = 0;
      mm["val_tokens"] = 0;
      mm["train_tokens"] = rep.meco_train_tokens;
      mm["shards"] = shard_list({{&meco_train, "train"}});
      fs::path mpath = meco_dir / "manifest.json";
      written.push_back(mpath);
      write_file_atomic(mpath, mm.dump(2) + "\n");
    }
    fs::path mpath = opts.out_dir / "manifest.json";
    written.push_back(mpath);
    write_file_atomic(mpath, manifest.dump(2) + "\n");
    return rep;
  } catch (...) {
    // Leave no half dataset behind: every file is complete, but the set would not be.
    for (const auto& p : written) fs::remove(p, ec);
    if (meco) fs::remove(meco_dir, ec);  // only if now empty
    throw;
  }
}

}  // namespace lmf::data
