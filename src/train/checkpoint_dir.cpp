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
#include "core/file_io.h"

namespace lmf {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kStepPrefix = "step_";
constexpr std::string_view kTmpPrefix = ".tmp_";
constexpr std::string_view kOldPrefix = ".old_";

[[noreturn]] void fail(const fs::path& p, std::string_view what, const std::error_code& ec) {
  throw UserError("{}: cannot {} ({})", p.string(), what, ec.message());
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

}  // namespace lmf
