#pragma once
// Files that are never seen half-written: contents go to PATH.tmp, are synced to disk, and are
// renamed over PATH only when complete (then the directory entry is synced too). A writer that
// is destroyed without commit() removes its temporary file, so a failure leaves whatever was
// at PATH before untouched. Errors are UserErrors naming the file.
#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace lmf {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);  // creates PATH.tmp
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();  // without commit(): closes and removes PATH.tmp

  void write(const void* data, size_t n);                   // appends
  void write_at(uint64_t offset, const void* data, size_t n);  // e.g. a header known only at the end
  void commit();  // fsync, close, rename into place, fsync the directory
  const std::filesystem::path& tmp_path() const { return tmp_; }

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
};

void write_file_atomic(const std::filesystem::path& path, std::string_view contents);
std::string read_file(const std::filesystem::path& path);  // UserError naming the file if unreadable
// fsync a file or directory; directories on filesystems that refuse it are skipped.
void fsync_path(const std::filesystem::path& p, bool is_dir);

}  // namespace lmf
