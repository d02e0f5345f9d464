#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"

namespace lmf::data {

// The header is written and the tokens are mapped in host byte order.
static_assert(std::endian::native == std::endian::little, "shards are little-endian");

namespace fs = std::filesystem;

namespace {

template <class T>
void put(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <class T>
T get(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Checksum and max token in one pass over the mapped tokens (count,), in blocks so the max
// loop vectorises while FNV runs over the same cache-hot bytes.
template <class T>
void scan_tokens(const unsigned char* p, uint64_t count, uint64_t& hash, uint32_t& max_tok) {
  constexpr uint64_t kBlock = 1 << 14;
  uint64_t h = 0xcbf29ce484222325ull;
  T mx = 0;
  for (uint64_t s = 0; s < count; s += kBlock) {
    uint64_t n = std::min(kBlock, count - s);
    const unsigned char* b = p + s * sizeof(T);
    h = fnv1a64(b, n * sizeof(T), h);
    T bm = 0;
    for (uint64_t i = 0; i < n; ++i) bm = std::max(bm, get<T>(b + i * sizeof(T)));
    mx = std::max(mx, bm);
  }
  hash = h;
  max_tok = mx;
}

// Position of the first token >= bound (count if none); only run when the max says one exists.
template <class T>
uint64_t first_at_least(const unsigned char* p, uint64_t count, uint64_t bound) {
  for (uint64_t i = 0; i < count; ++i)
    if (get<T>(p + i * sizeof(T)) >= bound) return i;
  return count;
}

[[noreturn]] void io_error(const char* what, const fs::path& path) {
  throw UserError("file {}: cannot {}: {}", path.string(), what, std::strerror(errno));
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

void write_shard(const fs::path& path, std::span<const int32_t> tokens, uint32_t vocab_size) {
  LMF_CHECK(vocab_size > 0 && vocab_size <= uint32_t{std::numeric_limits<int32_t>::max()},
            "vocab_size {} out of range", vocab_size);
  const uint32_t tb = vocab_size <= 65535 ? 2 : 4;
  AtomicFile f(path);  // a failure anywhere below leaves no file under `path`
  unsigned char header[kShardHeaderBytes] = {};
  f.write(header, sizeof header);  // placeholder: the checksum is known only at the end
  // Convert in blocks: the checksum is over the stored (narrowed) bytes.
  constexpr size_t kBlock = 1 << 16;
  std::vector<unsigned char> buf(kBlock * tb);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t s = 0; s < tokens.size(); s += kBlock) {
    size_t n = std::min(kBlock, tokens.size() - s);
    for (size_t i = 0; i < n; ++i) {
      int32_t t = tokens[s + i];
      LMF_CHECK(t >= 0 && static_cast<uint32_t>(t) < vocab_size, "token {} at {} not in [0, {}) writing {}", t,
                s + i, vocab_size, path.string());
      if (tb == 2)
        put<uint16_t>(&buf[i * 2], static_cast<uint16_t>(t));
      else
        put<uint32_t>(&buf[i * 4], static_cast<uint32_t>(t));
    }
    h = fnv1a64(buf.data(), n * tb, h);
    f.write(buf.data(), n * tb);
  }
  std::memcpy(header, kShardMagic, 8);
  put<uint32_t>(header + 8, kShardVersion);
  put<uint32_t>(header + 12, tb);
  put<uint32_t>(header + 16, vocab_size);
  put<uint32_t>(header + 20, 0);
  put<uint64_t>(header + 24, tokens.size());
  put<uint64_t>(header + 32, h);
  f.write_at(0, header, sizeof header);
  f.commit();
}

Shard Shard::open(const fs::path& path) {
  Shard s;
  s.path_ = path;
  const std::string name = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_error("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    io_error("stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw UserError("file {}: not a regular file", name);
  }
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    throw UserError("file {}: too small for a shard header ({} bytes, need at least {})", name,
                    file_bytes, kShardHeaderBytes);
  }
  void* m = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) {
    errno = map_errno;
    io_error("mmap", path);
  }
  s.map_ = m;
  s.map_bytes_ = file_bytes;
  ::madvise(m, file_bytes, MADV_SEQUENTIAL);  // the validation pass; a hint only
  const auto* base = static_cast<const unsigned char*>(m);

  // From here `s` owns the mapping: a throw unmaps it in ~Shard.
  uint64_t header_bytes = 0, declared_hash = 0;
  bool has_hash = false;
  if (std::memcmp(base, kShardMagic, 8) == 0) {
    s.format_ = ShardFormat::kLmforge;
    uint32_t version = get<uint32_t>(base + 8);
    if (version != kShardVersion)
      throw UserError("file {}: unsupported shard version {} (this build reads version {})", name,
                      version, kShardVersion);
    uint32_t tb = get<uint32_t>(base + 12);
    if (tb != 2 && tb != 4)
      throw UserError("file {}: token_bytes is {}, expected 2 or 4", name, tb);
    s.token_bytes_ = static_cast<int>(tb);
    s.vocab_ = get<uint32_t>(base + 16);
    if (s.vocab_ == 0 || s.vocab_ > uint32_t{std::numeric_limits<int32_t>::max()})
      throw UserError("file {}: vocab_size {} is out of range", name, s.vocab_);
    s.count_ = get<uint64_t>(base + 24);
    declared_hash = get<uint64_t>(base + 32);
    has_hash = true;
    header_bytes = kShardHeaderBytes;
  } else if (get<int32_t>(base) == kLlmcMagic) {
    if (file_bytes < kLlmcHeaderBytes)
      throw UserError("file {}: too small for an llm.c shard header ({} bytes, need {})", name,
                      file_bytes, kLlmcHeaderBytes);
    s.format_ = ShardFormat::kLlmc;
    int32_t version = get<int32_t>(base + 4);
    if (version != 1 && version != 2)
      throw UserError("file {}: llm.c shard version {} unknown, expected 1 (uint16) or 2 (uint32)",
                      name, version);
    s.token_bytes_ = version == 1 ? 2 : 4;
    int32_t count = get<int32_t>(base + 8);
    if (count < 0)
      throw UserError("file {}: llm.c header has negative token count {}", name, count);
    s.count_ = static_cast<uint64_t>(count);
    header_bytes = kLlmcHeaderBytes;
  } else {
    throw UserError("file {}: not a token shard (bad magic; expected \"LMFTOKS\" or llm.c's {})",
                    name, kLlmcMagic);
  }

  const uint64_t tb = static_cast<uint64_t>(s.token_bytes_);
  const uint64_t room = (file_bytes - header_bytes) / tb;  // whole tokens the file can hold
  if (s.count_ > room || file_bytes != header_bytes + s.count_ * tb) {
    // count_ <= max_count keeps header_bytes + count_ * tb from overflowing in the message.
    const uint64_t max_count = (std::numeric_limits<uint64_t>::max() - header_bytes) / tb;
    if (s.count_ > room && s.count_ > max_count)
      throw UserError("file {}: truncated: header says {} tokens but file has {} bytes", name,
                      s.count_, file_bytes);
    if (s.count_ > room)
      throw UserError("file {}: truncated: header says {} tokens ({} bytes) but file has {} bytes",
                      name, s.count_, header_bytes + s.count_ * tb, file_bytes);
    throw UserError("file {}: {} trailing bytes: header says {} tokens ({} bytes) but file has {}",
                    name, file_bytes - header_bytes - s.count_ * tb, s.count_,
                    header_bytes + s.count_ * tb, file_bytes);
  }
  s.tokens_ = base + header_bytes;

  uint64_t hash = 0;
  if (tb == 2)
    scan_tokens<uint16_t>(s.tokens_, s.count_, hash, s.max_token_);
  else
    scan_tokens<uint32_t>(s.tokens_, s.count_, hash, s.max_token_);
  // Corruption explains out-of-range tokens, so report it first.
  if (has_hash && hash != declared_hash)
    throw UserError("file {}: checksum mismatch (header {:016x}, data {:016x}): file is corrupted",
                    name, declared_hash, hash);
  uint64_t bound = s.vocab_ ? s.vocab_ : uint64_t{std::numeric_limits<int32_t>::max()} + 1;
  if (s.count_ > 0 && s.max_token_ >= bound) {
    uint64_t at = tb == 2 ? first_at_least<uint16_t>(s.tokens_, s.count_, bound)
                          : first_at_least<uint32_t>(s.tokens_, s.count_, bound);
    throw UserError("file {}: token {} at position {} is >= vocab_size {}", name, s[at], at, bound);
  }
  ::madvise(m, file_bytes, MADV_NORMAL);  // undo SEQUENTIAL's early page dropping
  return s;
}

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    tokens_ = std::exchange(o.tokens_, nullptr);
    count_ = std::exchange(o.count_, 0);
    vocab_ = o.vocab_;
    max_token_ = o.max_token_;
    token_bytes_ = o.token_bytes_;
    format_ = o.format_;
  }
  return *this;
}

Shard::~Shard() { release(); }

void Shard::release() {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  tokens_ = nullptr;
}

void Shard::read(uint64_t start, uint64_t n, int32_t* out) const {
  LMF_CHECK(start <= count_ && n <= count_ - start, "read [{}, {}) outside shard {} of {} tokens",
            start, start + n, path_.string(), count_);
  if (token_bytes_ == 2) {
    const unsigned char* p = tokens_ + start * 2;
    for (uint64_t i = 0; i < n; ++i) out[i] = get<uint16_t>(p + i * 2);
  } else {
    const unsigned char* p = tokens_ + start * 4;
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(get<uint32_t>(p + i * 4));
  }
}

}  // namespace lmf::data
