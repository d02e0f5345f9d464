#include "data/bpe_train.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/file_io.h"

namespace lmf::data {

namespace fs = std::filesystem;

namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;        // unit of parallel counting work
constexpr uint64_t kGroupBytes = uint64_t{128} << 20;  // text held in memory at once

bool is_ws(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool is_letter(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
enum class Cls { kLetter, kDigit, kOther, kSpace };
Cls cls(unsigned char c) {
  if (is_letter(c)) return Cls::kLetter;
  if (is_digit(c)) return Cls::kDigit;
  return is_ws(c) ? Cls::kSpace : Cls::kOther;
}

// Length of a GPT-2 contraction ('s 't 're 've 'm 'll 'd) at the start of `t`, else 0.
size_t contraction_len(std::string_view t) {
  if (t.size() < 2 || t[0] != '\'') return 0;
  const char c = t[1];
  if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
  if (t.size() >= 3 &&
      ((c == 'r' && t[2] == 'e') || (c == 'v' && t[2] == 'e') || (c == 'l' && t[2] == 'l')))
    return 3;
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- counting ------------------------------------------------------------------------------

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using PieceCounts = std::unordered_map<std::string, uint64_t, StrHash, std::equal_to<>>;

// One unit of counting work: a byte range of a text, or of a JSON-lines file (whole lines).
struct Chunk {
  std::string_view text;
  const std::string* name = nullptr;  // file, for errors in JSON lines
  uint64_t first_line = 1;            // of `text` in its file (JSON lines)
  bool jsonl = false;
};

// Cuts `text` into ~kChunkBytes pieces. Text cuts fall after a '\n' followed by a printable
// ASCII byte, where every supported split pattern ends a piece; JSON lines cut after any '\n'.
void add_chunks(std::string_view text, const std::string* name, bool jsonl,
                std::vector<Chunk>& out) {
  size_t b = 0;
  uint64_t line = 1;
  while (b < text.size()) {
    size_t e = text.size();
    for (size_t p = b + kChunkBytes - 1; p < text.size();) {
      p = text.find('\n', p);
      if (p == std::string_view::npos) break;
      if (jsonl || (p + 1 < text.size() && text[p + 1] > ' ' && text[p + 1] < 0x7f)) {
        e = p + 1;
        break;
      }
      ++p;
    }
    out.push_back({text.substr(b, e - b), name, line, jsonl});
    if (jsonl) line += static_cast<uint64_t>(std::count(text.begin() + b, text.begin() + e, '\n'));
    b = e;
  }
}

struct Counter {
  const PreTokenizeFn& pretokenize;
  const std::vector<std::string>& specials;
  std::vector<std::string_view> pieces;  // scratch
  PieceCounts counts;
  uint64_t n_pieces = 0, n_bytes = 0;

  // Counts the pieces of `text`, with the special tokens cut out.
  void count_text(std::string_view text) {
    n_bytes += text.size();
    while (!text.empty()) {
      size_t cut = text.size(), cut_len = 0;
      for (const auto& s : specials) {
        const size_t p = text.substr(0, cut + s.size()).find(s);
        if (p != std::string_view::npos && p < cut) cut = p, cut_len = s.size();
      }
      pieces.clear();
      pretokenize(text.substr(0, cut), pieces);
      for (std::string_view p : pieces) {
        auto it = counts.find(p);
        if (it == counts.end()) {
          counts.emplace(std::string(p), 1);
        } else {
          ++it->second;
        }
      }
      n_pieces += pieces.size();
      text.remove_prefix(std::min(text.size(), cut + cut_len));
    }
  }

  void count_chunk(const Chunk& c, const std::string& text_field) {
    if (!c.jsonl) return count_text(c.text);
    uint64_t line = c.first_line;
    for (size_t b = 0; b < c.text.size(); ++line) {
      size_t e = c.text.find('\n', b);
      if (e == std::string_view::npos) e = c.text.size();
      const std::string_view l = c.text.substr(b, e - b);
      b = e + 1;
      if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(l);
      } catch (const nlohmann::json::exception& ex) {
        throw UserError("file {} line {}: not JSON: {}", *c.name, line, ex.what());
      }
      if (!j.is_object()) throw UserError("file {} line {}: not a JSON object", *c.name, line);
      auto f = j.find(text_field);
      if (f == j.end() || !f->is_string())
        throw UserError("file {} line {}: no string field \"{}\"", *c.name, line, text_field);
      count_text(f->get_ref<const std::string&>());
    }
  }
};

// Counts all chunks in parallel; sums into `total`. The first error in chunk order is thrown.
void count_chunks(const std::vector<Chunk>& chunks, const BpeTrainOptions& opts,
                  const PreTokenizeFn& pretokenize, PieceCounts& total, BpeTrainStats& stats) {
  const int threads = opts.threads > 0 ? opts.threads : omp_get_max_threads();
  std::vector<Counter> counters;
  for (int t = 0; t < threads; ++t) counters.push_back({pretokenize, opts.special_tokens, {}, {}});
  std::vector<std::exception_ptr> errors(chunks.size());
  const auto n = static_cast<int64_t>(chunks.size());
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      counters[static_cast<size_t>(omp_get_thread_num())].count_chunk(
          chunks[static_cast<size_t>(i)], opts.text_field);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (auto& c : counters) {
    if (total.empty()) {
      total = std::move(c.counts);
    } else {
      for (auto& [piece, k] : c.counts) total[piece] += k;
    }
    stats.pieces += c.n_pieces;
    stats.bytes += c.n_bytes;
  }
}

// ---- inputs --------------------------------------------------------------------------------

bool is_jsonl_ext(const std::string& ext) { return ext == ".jsonl" || ext == ".ndjson"; }
bool is_corpus_ext(const std::string& ext) {
  return ext == ".txt" || ext == ".md" || ext == ".text" || is_jsonl_ext(ext);
}

// Explicit files in the order given; each directory's corpus files in sorted order.
std::vector<fs::path> collect_inputs(const std::vector<fs::path>& inputs) {
  std::vector<fs::path> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    const auto st = fs::status(in, ec);
    if (ec || !fs::exists(st)) throw UserError("input {}: no such file or directory", in.string());
    if (!fs::is_directory(st)) {
      files.push_back(in);
      continue;
    }
    std::vector<fs::path> found;
    for (fs::recursive_directory_iterator it(in, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code fec;
      if (it->is_regular_file(fec) && is_corpus_ext(it->path().extension().string()))
        found.push_back(it->path());
    }
    if (ec) throw UserError("input {}: cannot list directory: {}", in.string(), ec.message());
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

std::string read_whole(const fs::path& p) {
  std::ifstream f(p, std::ios::binary | std::ios::ate);
  if (!f) throw UserError("file {}: cannot open", p.string());
  const std::streamoff size = f.tellg();
  std::string s(static_cast<size_t>(std::max<std::streamoff>(size, 0)), '\0');
  f.seekg(0);
  if (size < 0 || !f.read(s.data(), size)) throw UserError("file {}: cannot read", p.string());
  return s;
}

// ---- merging -------------------------------------------------------------------------------

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Word {
  std::vector<int32_t> syms;  // (len) token ids
  int64_t count = 0;
};

class Merger {
 public:
  Merger(const PieceCounts& counts, std::vector<std::string>& tokens) : tokens_(tokens) {
    words_.reserve(counts.size());
    for (const auto& [piece, k] : counts) {
      if (piece.size() < 2) continue;  // no pair, never changes
      Word w;
      w.syms.assign(piece.begin(), piece.end());
      for (auto& s : w.syms) s = static_cast<uint8_t>(s);
      w.count = static_cast<int64_t>(k);
      words_.push_back(std::move(w));
    }
    stamp_.assign(words_.size(), -1);
    for (size_t wi = 0; wi < words_.size(); ++wi) {
      const auto& s = words_[wi].syms;
      for (size_t j = 0; j + 1 < s.size(); ++j) add_pair(s[j], s[j + 1], words_[wi].count, wi);
    }
    for (const auto& [key, k] : pair_count_)
      heap_.push({k, static_cast<int32_t>(key >> 32), static_cast<int32_t>(key & 0xffffffffu)});
  }

  // Merges the best pair into a new token; false when no pair occurs min_count times.
  bool merge_next(int64_t min_count, std::vector<std::pair<int32_t, int32_t>>& merges) {
    while (!heap_.empty()) {
      const Entry top = heap_.top();
      heap_.pop();
      const uint64_t key = pair_key(top.a, top.b);
      auto it = pair_count_.find(key);
      const int64_t cur = it == pair_count_.end() ? 0 : it->second;
      if (cur != top.count) {  // stale: counts only fall, so re-queue with the true count
        if (cur > 0) heap_.push({cur, top.a, top.b});
        continue;
      }
      if (cur < min_count) return false;
      apply(top.a, top.b);
      merges.emplace_back(top.a, top.b);
      return true;
    }
    return false;
  }

  size_t unique_words() const { return words_.size(); }

 private:
  struct Entry {
    int64_t count;
    int32_t a, b;
  };
  // Heap order: higher count first, then the lexicographically smaller (left, right) bytes.
  struct Lower {
    const std::vector<std::string>* tokens;
    bool operator()(const Entry& x, const Entry& y) const {
      if (x.count != y.count) return x.count < y.count;
      const auto& t = *tokens;
      const size_t xa = static_cast<size_t>(x.a), ya = static_cast<size_t>(y.a);
      if (x.a != y.a) return t[xa] > t[ya];
      return t[static_cast<size_t>(x.b)] > t[static_cast<size_t>(y.b)];
    }
  };

  void add_pair(int32_t a, int32_t b, int64_t delta, size_t word) {
    const uint64_t key = pair_key(a, b);
    int64_t& c = pair_count_[key];
    c += delta;
    if (delta > 0) {
      auto& w = where_[key];
      if (w.empty() || w.back() != static_cast<int32_t>(word))
        w.push_back(static_cast<int32_t>(word));
    } else if (c == 0) {  // no piece holds it any more
      pair_count_.erase(key);
      where_.erase(key);
    }
  }

  // Replaces every (a, b) by a new token in the pieces that hold it, left to right, and moves
  // the counts of the pairs around each occurrence: pairs away from any occurrence are the same
  // before and after, so only the touched ones are subtracted and the new ones added.
  void apply(int32_t a, int32_t b) {
    const auto z = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(tokens_[static_cast<size_t>(a)] + tokens_[static_cast<size_t>(b)]);
    const uint64_t key = pair_key(a, b);
    std::vector<int32_t> holders;
    if (auto it = where_.find(key); it != where_.end()) holders = std::move(it->second);
    new_pairs_.clear();
    for (int32_t wi : holders) {
      if (stamp_[static_cast<size_t>(wi)] == z) continue;  // listed twice
      stamp_[static_cast<size_t>(wi)] = z;
      Word& w = words_[static_cast<size_t>(wi)];
      const auto& s = w.syms;
      out_.clear();
      is_new_.clear();
      touched_.assign(s.size(), 0);
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out_.push_back(z);
          is_new_.push_back(1);
          touched_[i] = touched_[i + 1] = 1;
          i += 2;
        } else {
          out_.push_back(s[i]);
          is_new_.push_back(0);
          ++i;
        }
      }
      if (out_.size() == s.size()) continue;  // no longer holds the pair
      for (size_t j = 0; j + 1 < s.size(); ++j)
        if (touched_[j] || touched_[j + 1]) add_pair(s[j], s[j + 1], -w.count, 0);
      for (size_t k = 0; k + 1 < out_.size(); ++k) {
        if (!is_new_[k] && !is_new_[k + 1]) continue;
        add_pair(out_[k], out_[k + 1], w.count, static_cast<size_t>(wi));
        new_pairs_.push_back(pair_key(out_[k], out_[k + 1]));
      }
      w.syms.assign(out_.begin(), out_.end());
    }
    LMF_CHECK(!pair_count_.contains(key), "pair ({}, {}) still counted after its merge", a, b);
    std::sort(new_pairs_.begin(), new_pairs_.end());
    new_pairs_.erase(std::unique(new_pairs_.begin(), new_pairs_.end()), new_pairs_.end());
    for (uint64_t k : new_pairs_) {
      auto it = pair_count_.find(k);
      if (it != pair_count_.end())
        heap_.push(
            {it->second, static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xffffffffu)});
    }
  }

  std::vector<std::string>& tokens_;                  // (vocab so far) id -> bytes
  std::vector<Word> words_;                           // (unique pieces of >= 2 bytes)
  std::vector<int32_t> stamp_;                        // (words) last merge that visited the word
  std::unordered_map<uint64_t, int64_t> pair_count_;  // live pairs only
  std::unordered_map<uint64_t, std::vector<int32_t>> where_;  // pair -> words (superset)
  std::priority_queue<Entry, std::vector<Entry>, Lower> heap_{Lower{&tokens_}};
  std::vector<int32_t> out_;
  std::vector<uint8_t> is_new_, touched_;
  std::vector<uint64_t> new_pairs_;
};

void check_options(int vocab_size, const BpeTrainOptions& opts) {
  const auto n_special = static_cast<int64_t>(opts.special_tokens.size());
  if (vocab_size < 256 + n_special)
    throw UserError("bpe training: vocab_size {} is below 256 bytes + {} special tokens",
                    vocab_size, n_special);
  for (size_t i = 0; i < opts.special_tokens.size(); ++i) {
    const auto& s = opts.special_tokens[i];
    if (s.size() < 2)
      throw UserError(
          "bpe training: special token \"{}\" must be at least 2 bytes (a single byte "
          "already has a token)",
          s);
    for (size_t j = 0; j < i; ++j)
      if (opts.special_tokens[j] == s)
        throw UserError("bpe training: special token \"{}\" is given twice", s);
  }
}

BpeTrainResult merge_counts(const PieceCounts& counts, int vocab_size, const BpeTrainOptions& opts,
                            BpeTrainStats stats) {
  const auto t0 = std::chrono::steady_clock::now();
  BpeTrainResult r;
  r.tokens.reserve(static_cast<size_t>(vocab_size));
  for (int b = 0; b < 256; ++b) r.tokens.emplace_back(1, static_cast<char>(b));
  const int n_merges = vocab_size - 256 - static_cast<int>(opts.special_tokens.size());
  Merger m(counts, r.tokens);
  const int64_t min_count = std::max<int64_t>(1, opts.min_frequency);
  while (static_cast<int>(r.merges.size()) < n_merges && m.merge_next(min_count, r.merges)) {
    if (opts.log && r.merges.size() % 1000 == 0)
      opts.log(fmt::format("merge {}/{} ({:.1f} s)", r.merges.size(), n_merges, seconds_since(t0)));
  }
  for (const auto& s : opts.special_tokens) {
    if (s == "<|endoftext|>") r.eot_id = static_cast<int32_t>(r.tokens.size());
    r.tokens.push_back(s);
  }
  r.n_special = static_cast<int32_t>(opts.special_tokens.size());
  stats.unique_pieces = counts.size();
  stats.merge_seconds = seconds_since(t0);
  r.stats = stats;
  if (opts.log)
    opts.log(fmt::format("{} merges in {:.1f} s; vocab {}", r.merges.size(), stats.merge_seconds,
                         r.tokens.size()));
  return r;
}

const PreTokenizeFn& pretokenizer_of(const BpeTrainOptions& opts) {
  static const PreTokenizeFn kSimple = simple_pretokenize;
  return opts.pretokenize ? opts.pretokenize : kSimple;
}

}  // namespace

void simple_pretokenize(std::string_view t, std::vector<std::string_view>& out) {
  const size_t n = t.size();
  for (size_t i = 0; i < n;) {
    const auto c = static_cast<unsigned char>(t[i]);
    if (const size_t k = contraction_len(t.substr(i))) {
      out.push_back(t.substr(i, k));
      i += k;
      continue;
    }
    // ' '? then a run of one class (letters, digits or other).
    const size_t j =
        c == ' ' && i + 1 < n && !is_ws(static_cast<unsigned char>(t[i + 1])) ? i + 1 : i;
    if (!is_ws(static_cast<unsigned char>(t[j]))) {
      const Cls k = cls(static_cast<unsigned char>(t[j]));
      size_t e = j + 1;
      while (e < n && cls(static_cast<unsigned char>(t[e])) == k) ++e;
      out.push_back(t.substr(i, e - i));
      i = e;
      continue;
    }
    // Whitespace: \s+(?!\S) leaves the last one for the next piece when text follows; a space
    // becomes that piece's prefix (next iteration), any other whitespace stands alone (\s+).
    size_t e = i;
    while (e < n && is_ws(static_cast<unsigned char>(t[e]))) ++e;
    if (e == n) {
      out.push_back(t.substr(i));
      break;
    }
    if (e - i >= 2) {
      out.push_back(t.substr(i, e - 1 - i));
      i = e - 1;
    }
    if (t[i] != ' ') {
      out.push_back(t.substr(i, 1));
      ++i;
    }
  }
}

BpeTrainResult train_bpe(const std::vector<fs::path>& files_or_dirs, int vocab_size,
                         const BpeTrainOptions& opts) {
  check_options(vocab_size, opts);
  const auto t0 = std::chrono::steady_clock::now();
  const auto files = collect_inputs(files_or_dirs);
  if (files.empty())
    throw UserError("bpe training: no input files (.txt .md .text .jsonl .ndjson)");
  BpeTrainStats stats;
  stats.files = files.size();
  PieceCounts total;
  // Groups of files up to kGroupBytes are read, then counted in parallel, to bound memory.
  for (size_t f0 = 0; f0 < files.size();) {
    std::vector<std::string> contents, names;
    uint64_t group_bytes = 0;
    size_t f1 = f0;
    for (; f1 < files.size() && (f1 == f0 || group_bytes < kGroupBytes); ++f1) {
      contents.push_back(read_whole(files[f1]));
      names.push_back(files[f1].string());
      group_bytes += contents.back().size();
    }
    std::vector<Chunk> chunks;
    for (size_t i = 0; i < contents.size(); ++i)
      add_chunks(contents[i], &names[i], is_jsonl_ext(files[f0 + i].extension().string()), chunks);
    count_chunks(chunks, opts, pretokenizer_of(opts), total, stats);
    f0 = f1;
    if (opts.log)
      opts.log(fmt::format("counted {}/{} files, {:.1f} MB, {} unique pieces ({:.1f} s)", f0,
                           files.size(), static_cast<double>(stats.bytes) / 1e6, total.size(),
                           seconds_since(t0)));
  }
  stats.count_seconds = seconds_since(t0);
  return merge_counts(total, vocab_size, opts, stats);
}

BpeTrainResult train_bpe_texts(const std::vector<std::string>& documents, int vocab_size,
                               const BpeTrainOptions& opts) {
  check_options(vocab_size, opts);
  const auto t0 = std::chrono::steady_clock::now();
  static const std::string kName = "<memory>";
  std::vector<Chunk> chunks;
  for (const auto& d : documents) add_chunks(d, &kName, false, chunks);
  BpeTrainStats stats;
  PieceCounts total;
  count_chunks(chunks, opts, pretokenizer_of(opts), total, stats);
  stats.count_seconds = seconds_since(t0);
  return merge_counts(total, vocab_size, opts, stats);
}

// ---- tokenizer.json ------------------------------------------------------------------------

const std::string& byte_to_unicode(uint8_t b) {
  static const std::array<std::string, 256> kTable = [] {
    std::array<std::string, 256> t;
    int extra = 0;
    for (int x = 0; x < 256; ++x) {
      const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
      const int cp = printable ? x : 256 + extra++;
      // UTF-8 of a code point below U+0800.
      t[static_cast<size_t>(x)] = cp < 0x80 ? std::string(1, static_cast<char>(cp))
                                            : std::string{static_cast<char>(0xC0 | (cp >> 6)),
                                                          static_cast<char>(0x80 | (cp & 0x3F))};
    }
    return t;
  }();
  return kTable[b];
}

std::string bytes_to_unicode_string(std::string_view bytes) {
  std::string s;
  s.reserve(bytes.size() * 2);
  for (char c : bytes) s += byte_to_unicode(static_cast<uint8_t>(c));
  return s;
}

void save_hf_tokenizer_json(const BpeTrainResult& r, const fs::path& path) {
  using nlohmann::ordered_json;
  const size_t n_ordinary = r.tokens.size() - static_cast<size_t>(r.n_special);
  ordered_json added = ordered_json::array();
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < r.tokens.size(); ++id) {
    const bool special = id >= n_ordinary;
    std::string key = special ? r.tokens[id] : bytes_to_unicode_string(r.tokens[id]);
    if (vocab.contains(key))
      throw UserError("file {}: token {} \"{}\" appears twice in the vocabulary", path.string(), id,
                      key);
    vocab[key] = id;
    if (special)
      added.push_back({{"id", id},
                       {"content", r.tokens[id]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", true},
                       {"special", true}});
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [a, b] : r.merges)
    merges.push_back(bytes_to_unicode_string(r.tokens[static_cast<size_t>(a)]) + " " +
                     bytes_to_unicode_string(r.tokens[static_cast<size_t>(b)]));
  auto byte_level = [](bool trim) {
    return ordered_json{{"type", "ByteLevel"},
                        {"add_prefix_space", false},
                        {"trim_offsets", trim},
                        {"use_regex", true}};
  };
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = std::move(added);
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = byte_level(true);
  j["post_processor"] = byte_level(false);
  j["decoder"] = byte_level(true);
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}};
  std::string text;
  try {
    text = j.dump(2);
  } catch (const nlohmann::json::exception& e) {  // a special token that is not UTF-8
    throw UserError("file {}: cannot write tokenizer.json: {}", path.string(), e.what());
  }
  text += '\n';
  write_file_atomic(path, text);
}

}  // namespace lmf::data
