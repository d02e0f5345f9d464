#include "data/sp_tokenizer.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <queue>

#include "core/error.h"

namespace lmf::data {

namespace {

// Longest piece we accept: llama2.c sizes its buffers by max_token_length, and a real vocabulary
// has pieces of a few dozen bytes; anything near this is a wrong file, not a tokenizer.
constexpr int32_t kMaxPieceBytes = 1 << 16;
// llama2.c only merges pairs scoring above its initial best_score.
constexpr float kNoMerge = -1e10f;

std::string read_all(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw UserError("file {}: cannot open the tokenizer", path.string());
  const std::streamoff size = f.tellg();
  if (size < 0) throw UserError("file {}: cannot read the tokenizer", path.string());
  std::string data(static_cast<size_t>(size), '\0');
  f.seekg(0);
  if (!f.read(data.data(), size))
    throw UserError("file {}: cannot read the tokenizer", path.string());
  return data;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0xNN>" -> NN, else -1.
int byte_piece_value(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  const int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

std::unique_ptr<SpTokenizer> SpTokenizer::load(const std::filesystem::path& path, int vocab_size) {
  const std::string data = read_all(path);
  const std::string name = path.string();
  size_t pos = 0;
  auto read_i32 = [&](const char* what, size_t token) {
    if (data.size() - pos < 4)
      throw UserError("file {}: truncated in {} of token {} at byte {} (file size {})", name, what,
                      token, pos, data.size());
    int32_t v;
    std::memcpy(&v, data.data() + pos, 4);
    pos += 4;
    return v;
  };
  if (data.size() < 4)
    throw UserError("file {}: {} bytes, too short for a llama2.c tokenizer header", name,
                    data.size());
  std::unique_ptr<SpTokenizer> t(new SpTokenizer());
  t->max_token_length_ = read_i32("header", 0);
  if (t->max_token_length_ <= 0 || t->max_token_length_ > kMaxPieceBytes)
    throw UserError("file {}: max_token_length {} is not in [1, {}]: not a llama2.c tokenizer",
                    name, t->max_token_length_, kMaxPieceBytes);
  if (vocab_size >= 0 && vocab_size < kMinVocab)
    throw UserError("file {}: vocab_size {} is below {} (3 specials + 256 bytes)", name, vocab_size,
                    kMinVocab);
  // Each token needs at least 8 bytes, which bounds any count read from a file of this size.
  if (vocab_size > 0 && static_cast<size_t>(vocab_size) > (data.size() - 4) / 8)
    throw UserError("file {}: {} bytes cannot hold {} tokens", name, data.size(), vocab_size);
  const size_t want = vocab_size >= 0 ? static_cast<size_t>(vocab_size) : (data.size() - 4) / 8;
  t->pieces_.reserve(want);
  t->scores_.reserve(want);
  while (vocab_size >= 0 ? t->pieces_.size() < want : pos < data.size()) {
    const size_t id = t->pieces_.size();
    if (pos == data.size())
      throw UserError("file {}: ends after {} tokens, vocab_size {} asked for", name, id, want);
    float score;
    if (data.size() - pos < 4)
      throw UserError("file {}: truncated in the score of token {} at byte {} (file size {})", name,
                      id, pos, data.size());
    std::memcpy(&score, data.data() + pos, 4);
    pos += 4;
    const int32_t len = read_i32("the length", id);
    if (len < 0 || len > t->max_token_length_)
      throw UserError("file {}: token {} has length {}, not in [0, max_token_length {}]", name, id,
                      len, t->max_token_length_);
    if (data.size() - pos < static_cast<size_t>(len))
      throw UserError("file {}: truncated in the {} bytes of token {} at byte {} (file size {})",
                      name, len, id, pos, data.size());
    t->pieces_.emplace_back(data.data() + pos, static_cast<size_t>(len));
    t->scores_.push_back(score);
    pos += static_cast<size_t>(len);
  }
  if (pos != data.size())
    throw UserError("file {}: {} trailing bytes after the {} tokens asked for", name,
                    data.size() - pos, t->pieces_.size());
  if (t->pieces_.size() < static_cast<size_t>(kMinVocab))
    throw UserError("file {}: holds {} tokens, fewer than {} (3 specials + 256 bytes)", name,
                    t->pieces_.size(), kMinVocab);
  for (int b = 0; b < 256; ++b) {
    if (byte_piece_value(t->pieces_[static_cast<size_t>(b + kByteOffset)]) != b)
      throw UserError("file {}: token {} is \"{}\", expected the byte piece <0x{:02X}>", name,
                      b + kByteOffset, t->pieces_[static_cast<size_t>(b + kByteOffset)], b);
  }
  t->ids_.reserve(t->pieces_.size());
  for (size_t i = 0; i < t->pieces_.size(); ++i)
    t->ids_.emplace(t->pieces_[i], static_cast<int32_t>(i));  // keeps the first on duplicates
  return t;
}

int SpTokenizer::find(std::string_view piece) const {
  auto it = ids_.find(std::string(piece));
  return it == ids_.end() ? -1 : it->second;
}

int SpTokenizer::merged_id(int32_t a, int32_t b, std::string& buf) const {
  const std::string& pa = pieces_[static_cast<size_t>(a)];
  const std::string& pb = pieces_[static_cast<size_t>(b)];
  if (pa.size() + pb.size() > static_cast<size_t>(max_token_length_)) return -1;
  buf.assign(pa);
  buf.append(pb);
  auto it = ids_.find(buf);
  if (it == ids_.end() || !(scores_[static_cast<size_t>(it->second)] > kNoMerge)) return -1;
  return it->second;
}

void SpTokenizer::initial_ids(std::string_view text, bool bos, std::vector<int32_t>& out) const {
  out.clear();
  out.reserve(text.size() + 2);
  if (bos) out.push_back(kBos);
  if (!text.empty()) {
    const int space = find(" ");
    out.push_back(space >= 0 ? space : ' ' + kByteOffset);
  }
  // llama2.c's grouping: a lead byte takes up to 3 following continuation bytes; stray
  // continuation bytes group the same way. Groups that are not tokens fall back to bytes.
  std::string buf;
  for (size_t c = 0; c < text.size(); ++c) {
    if ((static_cast<unsigned char>(text[c]) & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[c]);
    const bool next_cont =
        c + 1 < text.size() && (static_cast<unsigned char>(text[c + 1]) & 0xC0) == 0x80;
    if (next_cont && buf.size() < 4) continue;
    auto it = ids_.find(buf);
    if (it != ids_.end()) {
      out.push_back(it->second);
    } else {
      for (char ch : buf) out.push_back(static_cast<unsigned char>(ch) + kByteOffset);
    }
    buf.clear();
  }
}

std::vector<int32_t> SpTokenizer::encode_reference(std::string_view text, bool bos,
                                                   bool eos) const {
  std::vector<int32_t> t;
  initial_ids(text, bos, t);
  std::string buf;
  for (;;) {
    float best_score = kNoMerge;
    int best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      const int id = merged_id(t[i], t[i + 1], buf);
      if (id != -1 && scores_[static_cast<size_t>(id)] > best_score) {
        best_score = scores_[static_cast<size_t>(id)];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id == -1) break;
    t[best_idx] = best_id;
    t.erase(t.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
  }
  if (eos) t.push_back(kEos);
  return t;
}

std::vector<int32_t> SpTokenizer::encode(std::string_view text, bool bos, bool eos) const {
  std::vector<int32_t> tok;  // (n) token of each node; a merge keeps the left node
  initial_ids(text, bos, tok);
  const int32_t n = static_cast<int32_t>(tok.size());
  std::vector<int32_t> next(static_cast<size_t>(n)), prev(static_cast<size_t>(n));  // (n)
  for (int32_t i = 0; i < n; ++i) {
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
    prev[static_cast<size_t>(i)] = i - 1;
  }
  // One entry per adjacent pair ever formed. An entry is stale once either node has changed
  // token or they are no longer neighbours; stale entries are skipped when popped. Node indices
  // keep sequence order, so "smallest left index" is llama2.c's "leftmost" tie-break.
  struct Cand {
    float score;
    int32_t left, right, left_tok, right_tok, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  std::string buf;
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const int32_t lt = tok[static_cast<size_t>(l)], rt = tok[static_cast<size_t>(r)];
    const int id = merged_id(lt, rt, buf);
    if (id >= 0) heap.push({scores_[static_cast<size_t>(id)], l, r, lt, rt, id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i, i + 1);
  std::vector<uint8_t> alive(static_cast<size_t>(n), 1);  // (n)
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const auto l = static_cast<size_t>(c.left), r = static_cast<size_t>(c.right);
    if (!alive[l] || !alive[r] || next[l] != c.right || tok[l] != c.left_tok ||
        tok[r] != c.right_tok)
      continue;
    tok[l] = c.merged;
    alive[r] = 0;
    next[l] = next[r];
    if (next[r] >= 0) prev[static_cast<size_t>(next[r])] = c.left;
    push(prev[l], c.left);
    push(c.left, next[l]);
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n) + 1);
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = next[static_cast<size_t>(i)])
    out.push_back(tok[static_cast<size_t>(i)]);
  if (eos) out.push_back(kEos);
  return out;
}

std::string SpTokenizer::decode_impl(std::span<const int32_t> ids, Specials specials) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw UserError("token id {} is out of range for the llama2c tokenizer (vocab_size {})", id,
                      vocab_size());
    if (id == kBos || id == kEos) {
      if (specials == Specials::kShow) out += id == kBos ? "<s>" : "</s>";
    } else {
      std::string_view p = pieces_[static_cast<size_t>(id)];
      if (prev == kBos && !p.empty() && p[0] == ' ') p.remove_prefix(1);
      const int byte = byte_piece_value(p);
      if (byte >= 0) {
        out.push_back(static_cast<char>(byte));
      } else {
        out += p;
      }
    }
    prev = id;
  }
  return out;
}

}  // namespace lmf::data
