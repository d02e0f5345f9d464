#include "data/bpe.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/error.h"

namespace lmf::data {

namespace {

constexpr int32_t kNoRank = INT32_MAX;
// Pieces up to this many bytes merge with an in-place scan (O(n^2), tiny constants); longer
// ones (long runs of spaces, digits in r50k, base64 blobs) with a heap, O(n log n).
constexpr size_t kScanMax = 128;
// Per-thread cache bounds: cleared wholesale when either is reached.
constexpr size_t kCacheMaxPieces = 1 << 16;
constexpr size_t kCacheMaxPieceBytes = 256;

// Open-addressing map from byte strings (stored in one arena) to ids: the rank lookup sits in
// the innermost merge loop, where std::unordered_map<std::string> costs a node chase per probe.
class BytesMap {
 public:
  void build(const std::vector<std::pair<std::string, int32_t>>& kv) {
    size_t cap = 16;
    while (cap < kv.size() * 2) cap *= 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    size_t total = 0;
    for (const auto& [k, v] : kv) total += k.size();
    arena_.clear();
    arena_.reserve(total);
    for (const auto& [k, v] : kv) {
      const uint64_t h = hash(k);
      size_t i = h & mask_;
      while (slots_[i].id >= 0) i = (i + 1) & mask_;
      slots_[i] = Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(k.size()), v};
      arena_ += k;
    }
  }
  int32_t find(std::string_view k) const {
    const uint64_t h = hash(k);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (s.hash == h && s.len == k.size() && arena_.compare(s.off, s.len, k) == 0) return s.id;
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0, len = 0;
    int32_t id = -1;
  };
  static uint64_t hash(std::string_view k) { return std::hash<std::string_view>{}(k); }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t mask_ = 0;
};

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct PieceCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, SvHash, std::equal_to<>> map;
  std::vector<int32_t> ids;  // (offset, count) in map index this
};

std::atomic<uint64_t> g_instances{0};

// The result of merging two adjacent parts: its priority (lower first) and its token.
struct Merge {
  int32_t rank = kNoRank;
  int32_t id = -1;
};

}  // namespace

struct BpeTokenizer::Tables {
  BytesMap tok;                              // ordinary token bytes -> id
  std::vector<std::string> bytes;            // id -> bytes (ordinary and special)
  std::vector<uint8_t> kind;                 // id -> 0 unassigned, 1 ordinary, 2 special
  int32_t byte_id[256];                      // single byte -> id
  std::unordered_map<uint64_t, Merge> pair;  // merges mode: (left<<32|right) -> merge

  Merge merge_of(int32_t left, int32_t right, std::string_view joined, bool merges_mode) const {
    if (merges_mode) {
      auto it = pair.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
                          static_cast<uint32_t>(right));
      return it == pair.end() ? Merge{} : it->second;
    }
    const int32_t id = tok.find(joined);
    return id < 0 ? Merge{} : Merge{id, id};
  }
};

BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer::BpeTokenizer(BpeSpec spec)
    : t_(std::make_unique<Tables>()),
      pre_(spec.pattern, spec.source.empty() ? spec.name : spec.source),
      specials_(std::move(spec.specials)),
      name_(std::move(spec.name)),
      eot_id_(spec.eot_id),
      merges_mode_(!spec.merges.empty()),
      whole_piece_first_(spec.whole_piece_first),
      add_prefix_space_(spec.add_prefix_space),
      instance_(++g_instances) {
  const std::string& src = spec.source.empty() ? name_ : spec.source;
  int32_t max_id = -1;
  for (const auto& [b, id] : spec.tokens) {
    if (id < 0) throw UserError("{}: token id {} is negative", src, id);
    if (b.empty()) throw UserError("{}: token {} has no bytes", src, id);
    max_id = std::max(max_id, id);
  }
  for (const auto& [s, id] : specials_) {
    if (id < 0) throw UserError("{}: special token \"{}\" has negative id {}", src, s, id);
    max_id = std::max(max_id, id);
  }
  vocab_size_ = std::max(max_id + 1, spec.vocab_size);
  t_->bytes.assign(vocab_size_, {});
  t_->kind.assign(vocab_size_, 0);
  for (const auto& [b, id] : spec.tokens) {
    if (t_->kind[id]) throw UserError("{}: token id {} is assigned twice", src, id);
    t_->kind[id] = 1;
    t_->bytes[id] = b;
  }
  for (const auto& [s, id] : specials_) {
    if (t_->kind[id] == 1) throw UserError("{}: special \"{}\" reuses ordinary id {}", src, s, id);
    t_->kind[id] = 2;
    t_->bytes[id] = s;
  }
  t_->tok.build(spec.tokens);
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    t_->byte_id[b] = t_->tok.find(std::string_view(&c, 1));
    if (t_->byte_id[b] < 0)
      throw UserError("{}: byte 0x{:02x} has no token (a byte-level BPE needs all 256)", src, b);
  }
  if (spec.tokens.size() != static_cast<size_t>(std::count(t_->kind.begin(), t_->kind.end(), 1)))
    throw UserError("{}: the same token bytes appear under two ids", src);
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const auto [a, b] = spec.merges[r];
    if (a < 0 || b < 0 || a >= vocab_size_ || b >= vocab_size_ || t_->kind[a] != 1 ||
        t_->kind[b] != 1)
      throw UserError("{}: merge {} refers to an unknown token ({}, {})", src, r, a, b);
    const int32_t id = t_->tok.find(t_->bytes[a] + t_->bytes[b]);
    if (id < 0) throw UserError("{}: merge {} makes a token that is not in the vocabulary", src, r);
    const uint64_t key = (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b);
    t_->pair.try_emplace(key, Merge{static_cast<int32_t>(r), id});  // first occurrence wins
  }
  if (eot_id_ < 0 || eot_id_ >= vocab_size_ || t_->kind[eot_id_] != 2)
    throw UserError("{}: end-of-text id {} is not a special token", src, eot_id_);
}

std::optional<int32_t> BpeTokenizer::token_id(std::string_view bytes) const {
  const int32_t id = t_->tok.find(bytes);
  if (id < 0) return std::nullopt;
  return id;
}

std::string_view BpeTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size_ || t_->kind[id] == 0)
    throw UserError("token id {} is not assigned in tokenizer {} (vocab_size {})", id, name_,
                    vocab_size_);
  return t_->bytes[id];
}

bool BpeTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size_ && t_->kind[id] == 2;
}

std::vector<int32_t> BpeTokenizer::bpe_merge_reference(std::string_view piece) const {
  // js-tiktoken: parts start as single bytes; repeatedly merge the pair with the lowest
  // priority, the leftmost on a tie, until no pair merges.
  if (whole_piece_first_) {
    if (auto id = token_id(piece)) return {*id};
  }
  struct Part {
    size_t start, end;
    int32_t id;
  };
  std::vector<Part> parts;
  for (size_t i = 0; i < piece.size(); ++i)
    parts.push_back({i, i + 1, t_->byte_id[static_cast<unsigned char>(piece[i])]});
  while (parts.size() > 1) {
    Merge best;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const Merge m = t_->merge_of(parts[i].id, parts[i + 1].id,
                                   piece.substr(parts[i].start, parts[i + 1].end - parts[i].start),
                                   merges_mode_);
      if (m.rank < best.rank) best = m, best_i = i;
    }
    if (best.rank == kNoRank) break;
    parts[best_i] = {parts[best_i].start, parts[best_i + 1].end, best.id};
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
  }
  std::vector<int32_t> ids;
  for (const Part& p : parts) ids.push_back(p.id);
  return ids;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  const size_t n = piece.size();
  if (n == 0) return;
  if (n == 1) {
    out.push_back(t_->byte_id[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (whole_piece_first_) {
    const int32_t id = t_->tok.find(piece);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const Tables& t = *t_;
  auto byte_id = [&](size_t i) { return t.byte_id[static_cast<unsigned char>(piece[i])]; };
  if (n <= kScanMax) {
    // In place: part i covers [start[i], start[i+1]), is token id[i], and m[i] is the merge of
    // parts i and i+1. A merge at i changes m[i-1] and m[i] only.
    uint32_t start[kScanMax + 1];
    int32_t id[kScanMax];
    Merge m[kScanMax];
    size_t len = n;
    for (size_t i = 0; i < n; ++i) start[i] = static_cast<uint32_t>(i), id[i] = byte_id(i);
    start[n] = static_cast<uint32_t>(n);
    auto merge_at = [&](size_t i) {
      return i + 1 < len ? t.merge_of(id[i], id[i + 1],
                                      piece.substr(start[i], start[i + 2] - start[i]), merges_mode_)
                         : Merge{};
    };
    for (size_t i = 0; i + 1 < len; ++i) m[i] = merge_at(i);
    for (;;) {
      size_t best = len;
      int32_t best_rank = kNoRank;
      for (size_t i = 0; i + 1 < len; ++i)
        if (m[i].rank < best_rank) best_rank = m[i].rank, best = i;
      if (best == len) break;
      id[best] = m[best].id;
      // Remove part best+1.
      for (size_t j = best + 1; j + 1 < len; ++j) id[j] = id[j + 1];
      for (size_t j = best + 1; j + 2 < len; ++j) m[j] = m[j + 1];
      for (size_t j = best + 1; j < len; ++j) start[j] = start[j + 1];
      --len;
      if (best > 0) m[best - 1] = merge_at(best - 1);
      m[best] = merge_at(best);
    }
    out.insert(out.end(), id, id + len);
    return;
  }
  // Heap: parts are linked by byte position; a part keeps the position of its first byte. A
  // heap entry is stale once either part changed (version) or died.
  std::vector<int32_t> id(n);
  std::vector<uint32_t> nxt(n), prv(n), ver(n, 0);
  for (size_t i = 0; i < n; ++i) {
    id[i] = byte_id(i);
    nxt[i] = static_cast<uint32_t>(i + 1);
    prv[i] = static_cast<uint32_t>(i - 1);  // wraps for i == 0; never read there
  }
  const auto end = static_cast<uint32_t>(n);
  struct Entry {
    int32_t rank;
    uint32_t left;
    uint32_t vl, vr;
    int32_t id;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  auto push = [&](uint32_t i) {
    const uint32_t j = nxt[i];
    if (j == end) return;
    const uint32_t k = nxt[j];
    const Merge mg = t.merge_of(id[i], id[j], piece.substr(i, k - i), merges_mode_);
    if (mg.rank != kNoRank) heap.push({mg.rank, i, ver[i], ver[j], mg.id});
  };
  for (uint32_t i = 0; i + 1 < n; ++i) push(i);
  std::vector<uint8_t> dead(n, 0);
  while (!heap.empty()) {
    const Entry e = heap.top();
    heap.pop();
    const uint32_t i = e.left;
    if (dead[i] || ver[i] != e.vl) continue;
    const uint32_t j = nxt[i];
    if (j == end || ver[j] != e.vr) continue;
    id[i] = e.id;
    ++ver[i];
    dead[j] = 1;
    nxt[i] = nxt[j];
    if (nxt[i] != end) prv[nxt[i]] = i;
    if (i > 0) push(prv[i]);
    push(i);
  }
  for (uint32_t i = 0; i != end; i = nxt[i]) out.push_back(id[i]);
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  thread_local std::vector<std::string_view> pieces;
  thread_local PieceCache cache;
  if (cache.owner != instance_) {
    cache.map.clear();
    cache.ids.clear();
    cache.owner = instance_;
  }
  std::string prefixed;
  if (add_prefix_space_ && text.front() != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed += ' ';
    prefixed += text;
    text = prefixed;
  }
  pieces.clear();
  pre_.split(text, pieces);
  for (std::string_view p : pieces) {
    if (p.size() <= 1 || p.size() > kCacheMaxPieceBytes) {
      encode_piece(p, out);
      continue;
    }
    if (whole_piece_first_) {
      const int32_t id = t_->tok.find(p);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    if (auto it = cache.map.find(p); it != cache.map.end()) {
      const auto [off, cnt] = it->second;
      out.insert(out.end(), cache.ids.begin() + off, cache.ids.begin() + off + cnt);
      continue;
    }
    const size_t before = out.size();
    encode_piece(p, out);
    if (cache.map.size() >= kCacheMaxPieces) {
      cache.map.clear();
      cache.ids.clear();
    }
    const auto off = static_cast<uint32_t>(cache.ids.size());
    cache.ids.insert(cache.ids.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
    cache.map.emplace(std::string(p), std::pair{off, static_cast<uint32_t>(out.size() - before)});
  }
  pieces.clear();
}

std::vector<int32_t> BpeTokenizer::encode_ordinary(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  encode_text(text, out);
  return out;
}

std::vector<int32_t> BpeTokenizer::encode_with_special(std::string_view text,
                                                       std::span<const std::string> allowed) const {
  // tiktoken: the earliest occurrence of an allowed special wins; at one position, the first
  // in the specials list.
  std::vector<std::pair<std::string_view, int32_t>> sp;
  for (const auto& [s, id] : specials_)
    if (std::find(allowed.begin(), allowed.end(), s) != allowed.end()) sp.emplace_back(s, id);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  std::vector<size_t> next(sp.size());
  for (size_t k = 0; k < sp.size(); ++k) next[k] = text.find(sp[k].first);
  size_t pos = 0;
  for (;;) {
    size_t best = std::string_view::npos, bk = 0;
    for (size_t k = 0; k < sp.size(); ++k) {
      if (next[k] != std::string_view::npos && next[k] < pos) next[k] = text.find(sp[k].first, pos);
      if (next[k] < best) best = next[k], bk = k;
    }
    if (best == std::string_view::npos) {
      encode_text(text.substr(pos), out);
      return out;
    }
    encode_text(text.substr(pos, best - pos), out);
    out.push_back(sp[bk].second);
    pos = best + sp[bk].first.size();
  }
}

std::vector<int32_t> BpeTokenizer::encode_with_special(std::string_view text) const {
  std::vector<std::string> all;
  for (const auto& [s, id] : specials_) all.push_back(s);
  return encode_with_special(text, all);
}

std::string BpeTokenizer::decode_impl(std::span<const int32_t> ids, Specials specials) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_ || t_->kind[id] == 0)
      throw UserError("token id {} is not assigned in tokenizer {} (vocab_size {})", id, name_,
                      vocab_size_);
    if (t_->kind[id] == 2 && specials == Specials::kSkip) continue;
    out += t_->bytes[id];
  }
  return out;
}

}  // namespace lmf::data

// ---- loaders -------------------------------------------------------------------------------

namespace lmf::data {

namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& p, std::string_view what) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec))
    throw UserError("file {}: not found or not a regular file (expected {})", p.string(), what);
  FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) throw UserError("file {}: cannot open (expected {})", p.string(), what);
  std::string s;
  char buf[1 << 16];
  size_t k;
  while ((k = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, k);
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err) throw UserError("file {}: read error", p.string());
  return s;
}

// Standard base64 (tiktoken files, js-tiktoken modules); false on a malformed string.
bool base64_decode(std::string_view in, std::string& out) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(a[i])] = static_cast<int8_t>(i);
    return t;
  }();
  out.clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = 0, ++pad;
        continue;
      }
      if (pad) return false;
      v[k] = table[static_cast<unsigned char>(c)];
      if (v[k] < 0) return false;
    }
    const uint32_t w = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<char>(w >> 16));
    if (pad < 2) out.push_back(static_cast<char>((w >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(w & 0xff));
  }
  return true;
}

struct TiktokenInfo {
  std::string_view name;
  SplitPattern pattern;
  std::vector<std::pair<std::string, int32_t>> specials;
  int vocab_size;
};

// tiktoken_ext/openai_public.py (and js-tiktoken's rank modules).
std::optional<TiktokenInfo> tiktoken_info(std::string_view name) {
  if (name == "gpt2" || name == "r50k_base")
    return TiktokenInfo{name, SplitPattern::kGpt2, {{"<|endoftext|>", 50256}}, 50257};
  if (name == "p50k_base")
    return TiktokenInfo{name, SplitPattern::kGpt2, {{"<|endoftext|>", 50256}}, 50281};
  if (name == "cl100k_base")
    return TiktokenInfo{name,
                        SplitPattern::kCl100k,
                        {{"<|endoftext|>", 100257},
                         {"<|fim_prefix|>", 100258},
                         {"<|fim_middle|>", 100259},
                         {"<|fim_suffix|>", 100260},
                         {"<|endofprompt|>", 100276}},
                        100277};
  if (name == "o200k_base")
    return TiktokenInfo{name,
                        SplitPattern::kO200k,
                        {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}},
                        200019};
  return std::nullopt;
}

// Calls fn(line_number, line) for each non-empty line of s ('\n' or "\r\n" endings).
template <class Fn>
void for_each_line(const std::string& s, Fn&& fn) {
  size_t pos = 0, line = 0;
  while (pos < s.size()) {
    size_t eol = s.find('\n', pos);
    if (eol == std::string::npos) eol = s.size();
    std::string_view l(s.data() + pos, eol - pos);
    pos = eol + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (!l.empty()) fn(line, l);
  }
}

// A non-negative decimal that fits int32_t, or -1.
int64_t parse_rank(std::string_view d) {
  if (d.empty() || d.size() > 10) return -1;
  int64_t v = 0;
  for (char c : d) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v > INT32_MAX ? -1 : v;
}

// Lines "base64 rank".
std::vector<std::pair<std::string, int32_t>> parse_tiktoken_file(const fs::path& p) {
  const std::string s = read_file(p, "a .tiktoken rank file");
  std::vector<std::pair<std::string, int32_t>> out;
  std::string bytes;
  for_each_line(s, [&](size_t line, std::string_view l) {
    const size_t sp = l.find(' ');
    const int64_t rank = sp == std::string_view::npos ? -1 : parse_rank(l.substr(sp + 1));
    if (rank < 0 || !base64_decode(l.substr(0, sp), bytes))
      throw UserError("file {}: line {}: expected \"<base64 token> <rank>\"", p.string(), line);
    out.emplace_back(bytes, static_cast<int32_t>(rank));
  });
  if (out.empty())
    throw UserError("file {}: no ranks (expected lines \"<base64 token> <rank>\")", p.string());
  return out;
}

// A js-tiktoken rank module: `export default {...};` or `module.exports = {...};` around JSON
// with pat_str, special_tokens and bpe_ranks, the last as lines "<x> <first rank> b64 b64 ...".
nlohmann::json parse_js_module(const fs::path& p) {
  const std::string s = read_file(p, "a js-tiktoken rank module");
  const size_t a = s.find('{'), b = s.rfind('}');
  const auto j =
      a == std::string::npos || b == std::string::npos || b < a
          ? nlohmann::json()
          : nlohmann::json::parse(s.begin() + static_cast<std::ptrdiff_t>(a),
                                  s.begin() + static_cast<std::ptrdiff_t>(b) + 1, nullptr, false);
  if (!j.is_object() || !j.contains("bpe_ranks") || !j["bpe_ranks"].is_string() ||
      !j.contains("pat_str") || !j["pat_str"].is_string())
    throw UserError(
        "file {}: expected a js-tiktoken rank module (an object with \"pat_str\" and "
        "\"bpe_ranks\" strings)",
        p.string());
  return j;
}

std::vector<std::pair<std::string, int32_t>> parse_bpe_ranks(const std::string& s,
                                                             const fs::path& p) {
  std::vector<std::pair<std::string, int32_t>> out;
  std::string bytes;
  for_each_line(s, [&](size_t line, std::string_view l) {
    // Fields: a tag, the first rank, then tokens whose ranks count up from it.
    auto bad = [&] {
      return UserError("file {}: bpe_ranks line {}: expected \"<tag> <first rank> <base64>...\"", p.string(),
                       line);
    };
    size_t f = 0, field_no = 0;
    int64_t rank = -1;
    for (size_t i = 0; i <= l.size(); ++i) {
      if (i < l.size() && l[i] != ' ') continue;
      const std::string_view field = l.substr(f, i - f);
      f = i + 1;
      if (field.empty()) continue;
      if (field_no++ == 0) continue;  // the tag
      if (rank == -1) {
        if ((rank = parse_rank(field)) < 0) throw bad();
        continue;
      }
      if (rank > INT32_MAX || !base64_decode(field, bytes)) throw bad();
      out.emplace_back(bytes, static_cast<int32_t>(rank++));
    }
    if (rank < 0) throw bad();
  });
  if (out.empty()) throw UserError("file {}: bpe_ranks is empty", p.string());
  return out;
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100...
struct ByteLevel {
  std::array<int32_t, 256> to_cp{};
  std::unordered_map<int32_t, uint8_t> from_cp;
  ByteLevel() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      to_cp[b] = printable ? b : 256 + n++;
      from_cp[to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
  // A token string from encoder.json / tokenizer.json back to its bytes.
  bool decode(std::string_view s, std::string& out) const {
    out.clear();
    for (size_t i = 0; i < s.size();) {
      const auto c = static_cast<unsigned char>(s[i]);
      int32_t cp;
      size_t len;
      if (c < 0x80)
        cp = c, len = 1;
      else if ((c & 0xe0) == 0xc0)
        cp = c & 0x1f, len = 2;
      else
        return false;  // byte-level characters are all below U+0800
      if (i + len > s.size()) return false;
      for (size_t k = 1; k < len; ++k) {
        const auto d = static_cast<unsigned char>(s[i + k]);
        if ((d & 0xc0) != 0x80) return false;
        cp = (cp << 6) | (d & 0x3f);
      }
      auto it = from_cp.find(cp);
      if (it == from_cp.end()) return false;
      out.push_back(static_cast<char>(it->second));
      i += len;
    }
    return !out.empty();
  }
};

const ByteLevel& byte_level() {
  static const ByteLevel bl;
  return bl;
}

nlohmann::json parse_json_file(const fs::path& p, std::string_view what) {
  const std::string s = read_file(p, what);
  auto j = nlohmann::json::parse(s, nullptr, false);
  if (j.is_discarded()) throw UserError("file {}: not valid JSON (expected {})", p.string(), what);
  return j;
}

}  // namespace

std::vector<std::string> known_tiktoken_encodings() {
  return {"gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"};
}

bool is_tiktoken_encoding(std::string_view name) { return tiktoken_info(name).has_value(); }

std::unique_ptr<BpeTokenizer> make_tiktoken(std::string_view name, const fs::path& ranks_file) {
  auto info = tiktoken_info(name);
  if (!info)
    throw UserError(
        "unknown tiktoken encoding \"{}\" (known: gpt2, r50k_base, p50k_base, "
        "cl100k_base, o200k_base)",
        name);
  BpeSpec spec;
  spec.name = std::string(name);
  spec.source = "file " + ranks_file.string();
  spec.pattern = js_regex_to_pcre(split_pattern_js(info->pattern));
  spec.specials = info->specials;
  spec.eot_id = info->specials.front().second;
  spec.vocab_size = info->vocab_size;
  const std::string ext = ranks_file.extension().string();
  if (ext == ".js" || ext == ".cjs" || ext == ".mjs" || ext == ".json") {
    const auto j = parse_js_module(ranks_file);
    if (j["pat_str"].get<std::string>() != split_pattern_js(info->pattern))
      throw UserError("file {}: its pat_str is not the {} pattern lmforge knows",
                      ranks_file.string(), name);
    if (j.contains("special_tokens")) {
      for (const auto& [s, id] : info->specials) {
        const auto& st = j["special_tokens"];
        if (!st.is_object() || !st.contains(s) || st[s] != id)
          throw UserError("file {}: expected special token {} = {} for {}", ranks_file.string(), s,
                          id, name);
      }
    }
    spec.tokens = parse_bpe_ranks(j["bpe_ranks"].get<std::string>(), ranks_file);
  } else {
    spec.tokens = parse_tiktoken_file(ranks_file);
  }
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

std::unique_ptr<BpeTokenizer> load_gpt2(const fs::path& encoder_json, const fs::path& vocab_bpe) {
  const auto enc = parse_json_file(encoder_json, "GPT-2 encoder.json (token string -> id)");
  if (!enc.is_object() || enc.empty())
    throw UserError("file {}: expected a JSON object mapping token strings to ids",
                    encoder_json.string());
  BpeSpec spec;
  spec.name = "gpt2";
  spec.source = "file " + encoder_json.string();
  spec.pattern = js_regex_to_pcre(split_pattern_js(SplitPattern::kGpt2));
  std::unordered_map<std::string, int32_t> by_str;
  std::string bytes;
  for (const auto& [k, v] : enc.items()) {
    if (!v.is_number_integer())
      throw UserError("file {}: token \"{}\" has a non-integer id", encoder_json.string(), k);
    const auto id = v.get<int32_t>();
    if (k == "<|endoftext|>") {
      spec.specials.emplace_back(k, id);
      spec.eot_id = id;
      continue;
    }
    if (!byte_level().decode(k, bytes))
      throw UserError("file {}: token \"{}\" is not in GPT-2's byte-level alphabet",
                      encoder_json.string(), k);
    spec.tokens.emplace_back(bytes, id);
    by_str.emplace(k, id);
  }
  if (spec.eot_id < 0)
    throw UserError("file {}: expected an \"<|endoftext|>\" entry", encoder_json.string());
  const std::string m = read_file(vocab_bpe, "GPT-2 vocab.bpe (merges, one \"a b\" per line)");
  size_t pos = 0, line = 0;
  while (pos < m.size()) {
    size_t eol = m.find('\n', pos);
    if (eol == std::string::npos) eol = m.size();
    std::string_view l(m.data() + pos, eol - pos);
    pos = eol + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty() || (line == 1 && l.starts_with("#version"))) continue;
    const size_t sp = l.find(' ');
    auto a =
        sp == std::string_view::npos ? by_str.end() : by_str.find(std::string(l.substr(0, sp)));
    auto b =
        sp == std::string_view::npos ? by_str.end() : by_str.find(std::string(l.substr(sp + 1)));
    if (a == by_str.end() || b == by_str.end())
      throw UserError("file {}: line {}: expected a merge \"a b\" of two tokens in {}",
                      vocab_bpe.string(), line, encoder_json.filename().string());
    spec.merges.emplace_back(a->second, b->second);
  }
  if (spec.merges.empty()) throw UserError("file {}: no merges", vocab_bpe.string());
  // tiktoken's r50k_base checks a piece against the whole vocabulary before merging; GPT-2's
  // own encoder gives the same ids, and js-tiktoken is our reference.
  spec.whole_piece_first = true;
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

std::unique_ptr<BpeTokenizer> load_hf_tokenizer_json(const fs::path& file) {
  const std::string f = file.string();
  const auto j = parse_json_file(file, "a Hugging Face tokenizer.json");
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw UserError("file {}: expected a Hugging Face tokenizer.json (no \"model\" object)", f);
  const auto& model = j["model"];
  if (model.value("type", std::string()) != "BPE")
    throw UserError("file {}: expected model.type \"BPE\", got {}", f,
                    model.contains("type") ? model["type"].dump() : std::string("none"));
  if (!model.contains("vocab") || !model["vocab"].is_object() || !model.contains("merges") ||
      !model["merges"].is_array())
    throw UserError("file {}: expected model.vocab (object) and model.merges (array)", f);
  // "" is how GPT-2's own tokenizer.json (and Hugging Face's trainer) say "no prefix/suffix".
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix", "dropout"})
    if (model.contains(k) && !model[k].is_null() && !(model[k].is_string() && model[k].get<std::string>().empty()))
      throw UserError("file {}: model.{} is not supported (expected null or \"\")", f, k);
  if (model.value("byte_fallback", false))
    throw UserError("file {}: model.byte_fallback is not supported (expected a byte-level BPE)", f);
  if (j.contains("normalizer") && !j["normalizer"].is_null())
    throw UserError("file {}: a normalizer is not supported (expected \"normalizer\": null)", f);

  BpeSpec spec;
  spec.name = "hf:" + file.parent_path().filename().string();
  spec.source = "file " + f;
  // Pre-tokenizer: ByteLevel (its own GPT-2 regex), or Sequence[Split(Regex), ByteLevel].
  const auto& pt = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : nlohmann::json();
  auto bad_pt = [&] {
    return UserError(
        "file {}: expected pre_tokenizer ByteLevel or Sequence [Split (Regex, "
        "Isolated), ByteLevel (use_regex false)], got {}",
        f, pt.dump().substr(0, 200));
  };
  auto take_byte_level = [&](const nlohmann::json& bl, bool regex_given) {
    spec.add_prefix_space = bl.value("add_prefix_space", false);
    if (bl.value("use_regex", true)) {
      if (regex_given) throw bad_pt();
      spec.pattern = js_regex_to_pcre(split_pattern_js(SplitPattern::kGpt2));
    } else if (!regex_given) {
      throw bad_pt();
    }
  };
  if (pt.is_object() && pt.value("type", "") == "ByteLevel") {
    take_byte_level(pt, false);
  } else if (pt.is_object() && pt.value("type", "") == "Sequence" && pt.contains("pretokenizers") &&
             pt["pretokenizers"].is_array() && pt["pretokenizers"].size() == 2) {
    const auto& sp = pt["pretokenizers"][0];
    const auto& bl = pt["pretokenizers"][1];
    if (!sp.is_object() || sp.value("type", "") != "Split" || !sp.contains("pattern") ||
        !sp["pattern"].is_object() || !sp["pattern"].contains("Regex") ||
        !sp["pattern"]["Regex"].is_string() || sp.value("behavior", "") != "Isolated" ||
        sp.value("invert", false) || !bl.is_object() || bl.value("type", "") != "ByteLevel")
      throw bad_pt();
    spec.pattern = sp["pattern"]["Regex"].get<std::string>();
    take_byte_level(bl, true);
  } else {
    throw bad_pt();
  }

  std::unordered_map<std::string, int32_t> by_str;
  std::unordered_map<int32_t, std::string> added;
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const auto& t : j["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string())
        throw UserError("file {}: expected added_tokens entries {{\"id\": int, \"content\": str}}",
                        f);
      added[t["id"].get<int32_t>()] = t["content"].get<std::string>();
    }
  std::string bytes;
  for (const auto& [k, v] : model["vocab"].items()) {
    if (!v.is_number_integer())
      throw UserError("file {}: vocab entry \"{}\" has a non-integer id", f, k);
    const auto id = v.get<int32_t>();
    if (added.contains(id)) continue;  // a special, even where the vocab also lists it
    if (!byte_level().decode(k, bytes))
      throw UserError("file {}: vocab entry \"{}\" is not in the byte-level alphabet", f, k);
    spec.tokens.emplace_back(bytes, id);
    by_str.emplace(k, id);
  }
  for (const auto& [id, s] : added) spec.specials.emplace_back(s, id);
  std::sort(spec.specials.begin(), spec.specials.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  size_t r = 0;
  for (const auto& m : model["merges"]) {
    std::string a, b;
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp != std::string::npos) a = s.substr(0, sp), b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>(), b = m[1].get<std::string>();
    }
    auto ia = by_str.find(a), ib = by_str.find(b);
    if (ia == by_str.end() || ib == by_str.end())
      throw UserError("file {}: model.merges[{}]: expected \"a b\" or [a, b] naming vocab tokens",
                      f, r);
    spec.merges.emplace_back(ia->second, ib->second);
    ++r;
  }
  if (spec.merges.empty()) throw UserError("file {}: model.merges is empty", f);
  spec.whole_piece_first = model.value("ignore_merges", false);
  for (std::string_view eot : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>"})
    for (const auto& [s, id] : spec.specials)
      if (spec.eot_id < 0 && s == eot) spec.eot_id = id;
  if (spec.eot_id < 0)
    throw UserError(
        "file {}: no end-of-text token among added_tokens (expected one of "
        "<|endoftext|>, <|end_of_text|>, </s>, <eos>, <|im_end|>)",
        f);
  return std::make_unique<BpeTokenizer>(std::move(spec));
}

std::unique_ptr<BpeTokenizer> load_bpe(const fs::path& path) {
  std::error_code ec;
  const std::string p = path.string();
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "tokenizer.json", ec))
      return load_hf_tokenizer_json(path / "tokenizer.json");
    if (fs::exists(path / "encoder.json", ec))
      return load_gpt2(path / "encoder.json", path / "vocab.bpe");
    throw UserError("file {}: a directory without tokenizer.json or encoder.json + vocab.bpe", p);
  }
  if (!fs::exists(path, ec))
    throw UserError(
        "file {}: not found (expected a BPE tokenizer: tokenizer.json, encoder.json + "
        "vocab.bpe, <encoding>.tiktoken or a js-tiktoken rank module)",
        p);
  const std::string fname = path.filename().string();
  const std::string stem = path.stem().string();
  const std::string ext = path.extension().string();
  if (fname == "encoder.json") return load_gpt2(path, path.parent_path() / "vocab.bpe");
  if (fname == "vocab.bpe") return load_gpt2(path.parent_path() / "encoder.json", path);
  if (ext == ".tiktoken" || ext == ".js" || ext == ".cjs" || ext == ".mjs") {
    if (!is_tiktoken_encoding(stem))
      throw UserError(
          "file {}: a rank file must be named for its encoding (gpt2, r50k_base, "
          "p50k_base, cl100k_base, o200k_base)",
          p);
    return make_tiktoken(stem, path);
  }
  if (ext == ".json") return load_hf_tokenizer_json(path);
  throw UserError(
      "file {}: unknown tokenizer format (expected tokenizer.json, encoder.json + "
      "vocab.bpe, <encoding>.tiktoken or a js-tiktoken rank module .js/.cjs)",
      p);
}

fs::path default_tokref_dir() {
  if (const char* e = std::getenv("LMF_TOKREF_DIR"); e && *e) return e;
  return "data/tokref";
}

std::unique_ptr<BpeTokenizer> make_named_bpe(std::string_view name, const fs::path& tokref_dir) {
  if (!is_tiktoken_encoding(name))
    throw UserError(
        "unknown tiktoken encoding \"{}\" (known: gpt2, r50k_base, p50k_base, "
        "cl100k_base, o200k_base)",
        name);
  const fs::path f =
      tokref_dir / "node_modules/js-tiktoken/dist/ranks" / (std::string(name) + ".js");
  std::error_code ec;
  if (!fs::exists(f, ec))
    throw UserError(
        "file {}: not found; run scripts/fetch_tokenizer_refs.sh {} (or set "
        "LMF_TOKREF_DIR)",
        f.string(), tokref_dir.string());
  return make_tiktoken(name, f);
}

}  // namespace lmf::data
