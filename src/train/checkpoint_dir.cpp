#include "train/checkpoint_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "core/error.h"

namespace lmf {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kStepPrefix = "step_";
constexpr std::string_view kTmpPrefix = ".tmp_";
constexpr std::string_view kOldPrefix = ".old_";

[[noreturn]] void fail(const fs::path& p, std::string_view what, const std::error_code& ec) {
  throw UserError("{}: cannot {} ({})", p.string(), what, ec.message());
}

std::error_code errno_code() { return {errno, std::generic_category()}; }

void fsync_path(const fs::path& p, bool is_dir) {
  const int fd = ::open(p.c_str(), (is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail(p, "open for fsync", errno_code());
  const int rc = ::fsync(fd);
  const auto ec = errno_code();
  ::close(fd);
  // Some filesystems refuse fsync on directories; the files themselves are what must be durable.
  if (rc != 0 &&
      !(is_dir && (ec == std::errc::invalid_argument || ec == std::errc::operation_not_supported)))
    fail(p, "fsync", ec);
}

void remove_all_or_fail(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) fail(p, "remove", ec);
}

// step_<digits> -> step; anything else (including .tmp_step_...) -> nullopt.
std::optional<long> parse_step_name(const std::string& name) {
  if (!name.starts_with(kStepPrefix) || name.size() == kStepPrefix.size() ||
      name.size() > kStepPrefix.size() + 18)
    return std::nullopt;
  long step = 0;
  for (size_t i = kStepPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

}  // namespace

std::string checkpoint_dir_name(long step) {
  LMF_CHECK(step >= 0, "checkpoint step {} is negative", step);
  return fmt::format("{}{:07d}", kStepPrefix, step);
}

fs::path write_checkpoint(const fs::path& run_dir, long step, int keep_last,
                          const std::function<void(const fs::path&)>& fill) {
  const fs::path root = run_dir / "checkpoints";
  const std::string name = checkpoint_dir_name(step);
  const fs::path tmp = root / (std::string(kTmpPrefix) + name);
  const fs::path final_dir = root / name;
  const fs::path old = root / (std::string(kOldPrefix) + name);

  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) fail(root, "create directory", ec);
  remove_all_or_fail(tmp);  // left by a crash mid-write
  fs::create_directory(tmp, ec);
  if (ec) fail(tmp, "create directory", ec);

  try {
    fill(tmp);
    // Every file must be on disk before the rename publishes the directory.
    for (const auto& e : fs::recursive_directory_iterator(tmp)) {
      if (e.is_regular_file())
        fsync_path(e.path(), false);
      else if (e.is_directory())
        fsync_path(e.path(), true);
    }
    fsync_path(tmp, true);
  } catch (...) {
    fs::remove_all(tmp, ec);  // best effort; list_checkpoints ignores it anyway
    throw;
  }

  if (fs::exists(final_dir)) {
    // Rewriting a step (e.g. after resuming from an earlier one): the old copy moves aside only
    // now that the new one is complete. A crash between the two renames loses this step (both
    // copies sit under ignored names) but never exposes a partial one.
    remove_all_or_fail(old);
    fs::rename(final_dir, old, ec);
    if (ec) fail(final_dir, "move aside", ec);
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) fail(tmp, fmt::format("rename to {}", final_dir.filename().string()), ec);
  fsync_path(root, true);
  fs::remove_all(old, ec);  // best effort: a leftover .old_ directory is ignored by readers

  if (keep_last > 0) {
    std::vector<CheckpointRef> others;
    for (auto& c : list_checkpoints(run_dir))
      if (c.step != step) others.push_back(std::move(c));
    // Sorted by step: drop from the front until keep_last remain, counting the new one.
    const size_t keep_others = static_cast<size_t>(keep_last) - 1;
    for (size_t i = 0; i + keep_others < others.size(); ++i) remove_all_or_fail(others[i].dir);
  }
  return final_dir;
}

std::vector<CheckpointRef> list_checkpoints(const fs::path& run_dir) {
  const fs::path root = run_dir / "checkpoints";
  std::vector<CheckpointRef> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  fs::directory_iterator it(root, ec);
  if (ec) fail(root, "list", ec);
  for (const auto& e : it) {
    if (!e.is_directory(ec)) continue;
    if (auto step = parse_step_name(e.path().filename().string())) out.push_back({*step, e.path()});
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointRef& a, const CheckpointRef& b) { return a.step < b.step; });
  return out;
}

std::optional<CheckpointRef> latest_checkpoint(const fs::path& run_dir) {
  auto all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

void write_file_atomic(const fs::path& path, std::string_view contents) {
  fs::path tmp = path;
  tmp += ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(tmp, "create", errno_code());
  const char* p = contents.data();
  size_t n = contents.size();
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      const auto ec = errno_code();
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(tmp, "write", ec);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  const bool synced = ::fsync(fd) == 0;
  auto ec = errno_code();
  const bool closed = ::close(fd) == 0;
  if (synced && !closed) ec = errno_code();
  if (!synced || !closed) {
    ::unlink(tmp.c_str());
    fail(tmp, "write", ec);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const auto ec = errno_code();
    ::unlink(tmp.c_str());
    fail(path, "replace", ec);
  }
  fs::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  fsync_path(dir, true);
}

std::string read_file(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw UserError("{}: cannot read (is a directory)", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "read", errno_code());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(path, "read", errno_code());
  return std::move(ss).str();
}

}  // namespace lmf
