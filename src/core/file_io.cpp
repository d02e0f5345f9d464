#include "core/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <system_error>

#include "core/error.h"

namespace lmf {

namespace fs = std::filesystem;

namespace {

std::error_code errno_code() { return {errno, std::generic_category()}; }

[[noreturn]] void fail(const fs::path& p, std::string_view what, const std::error_code& ec) {
  throw UserError("{}: cannot {} ({})", p.string(), what, ec.message());
}

}  // namespace

void fsync_path(const fs::path& p, bool is_dir) {
  const int fd = ::open(p.c_str(), (is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail(p, "open for fsync", errno_code());
  const int rc = ::fsync(fd);
  const auto ec = errno_code();
  ::close(fd);
  // Some filesystems refuse fsync on directories; the files themselves are what must be durable.
  if (rc != 0 && !(is_dir && (ec == std::errc::invalid_argument || ec == std::errc::operation_not_supported)))
    fail(p, "fsync", ec);
}

AtomicFile::AtomicFile(fs::path path) : path_(std::move(path)), tmp_(path_) {
  tmp_ += ".tmp";
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(tmp_, "create", errno_code());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  const auto* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, c, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(tmp_, "write", errno_code());
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t n) {
  const auto* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, c, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(tmp_, "write", errno_code());
    }
    c += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

void AtomicFile::commit() {
  LMF_CHECK(fd_ >= 0, "AtomicFile::commit twice ({})", path_.string());
  if (::fsync(fd_) != 0) fail(tmp_, "sync to disk", errno_code());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const auto ec = errno_code();
    ::unlink(tmp_.c_str());
    fail(tmp_, "write", ec);
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const auto ec = errno_code();
    ::unlink(tmp_.c_str());
    fail(path_, "replace", ec);
  }
  fs::path dir = path_.parent_path();
  fsync_path(dir.empty() ? fs::path(".") : dir, true);
}

void write_file_atomic(const fs::path& path, std::string_view contents) {
  AtomicFile f(path);
  f.write(contents.data(), contents.size());
  f.commit();
}

std::string read_file(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw UserError("{}: cannot read (is a directory)", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "read", errno_code());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(path, "read", errno_code());
  return std::move(ss).str();
}

}  // namespace lmf
