#pragma once
// Token shard files.
//
// lmforge format (little-endian), a 64-byte header then the tokens:
//   offset  0  char[8]  magic "LMFTOKS\0"
//   offset  8  u32      version = 1
//   offset 12  u32      token_bytes: 2 (uint16 tokens) or 4 (uint32)
//   offset 16  u32      vocab_size (every token is < vocab_size)
//   offset 20  u32      reserved = 0
//   offset 24  u64      token_count
//   offset 32  u64      checksum: FNV-1a 64 of the token bytes as stored
//   offset 40  zero padding to 64
//   offset 64  tokens   (token_count,) of token_bytes each
// Writers pick uint16 when vocab_size <= 65535, else uint32.
//
// llm.c format (karpathy/llm.c dev/data/data_common.py), also read: a 256 x int32 header with
// header[0] = 20240520, header[1] = 1 (uint16 tokens) or 2 (uint32), header[2] = token_count,
// then the tokens. It has no vocab size and no checksum: vocab_size() is 0 and max_token() is
// the only bound we know.
#include <cstdint>
#include <filesystem>
#include <span>

namespace lmf::data {

inline constexpr char kShardMagic[8] = {'L', 'M', 'F', 'T', 'O', 'K', 'S', '\0'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;
inline constexpr int32_t kLlmcMagic = 20240520;
inline constexpr size_t kLlmcHeaderBytes = 256 * sizeof(int32_t);

enum class ShardFormat { kLmforge, kLlmc };

// FNV-1a 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3); `h` chains calls.
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);

// Writes `path` atomically: the data goes to `<path>.tmp`, which is renamed to `path` only when
// complete, so a failure never leaves a partial file under the final name. Every token must
// be in [0, vocab_size). A write error is a UserError naming the file.
void write_shard(const std::filesystem::path& path, std::span<const int32_t> tokens,
                 uint32_t vocab_size);

// A read-only, memory-mapped shard of either format, validated on open: size, magic, version,
// token width, length against the header, checksum, and every token < vocab_size. The
// validation reads the whole file once (about 1 GB/s, FNV-1a is serial). Each failure is a
// UserError that names the file. Movable, not copyable.
class Shard {
 public:
  static Shard open(const std::filesystem::path& path);
  Shard(Shard&& o) noexcept;
  Shard& operator=(Shard&& o) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  uint64_t size() const { return count_; }           // tokens
  uint32_t vocab_size() const { return vocab_; }     // 0 for llm.c shards (unknown)
  uint32_t max_token() const { return max_token_; }  // 0 for an empty shard
  int token_bytes() const { return token_bytes_; }
  ShardFormat format() const { return format_; }
  const std::filesystem::path& path() const { return path_; }

  int32_t operator[](uint64_t i) const {
    return token_bytes_ == 2 ? static_cast<int32_t>(reinterpret_cast<const uint16_t*>(tokens_)[i])
                             : static_cast<int32_t>(reinterpret_cast<const uint32_t*>(tokens_)[i]);
  }
  // out (n,) = tokens [start, start + n); the range must lie inside the shard.
  void read(uint64_t start, uint64_t n, int32_t* out) const;

 private:
  Shard() = default;
  void release();

  std::filesystem::path path_;
  void* map_ = nullptr;  // whole file
  size_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;  // into map_
  uint64_t count_ = 0;
  uint32_t vocab_ = 0;
  uint32_t max_token_ = 0;
  int token_bytes_ = 2;
  ShardFormat format_ = ShardFormat::kLmforge;
};

}  // namespace lmf::data
