#pragma once
// write_file_atomic and read_file live in core/file_io.h (included here for callers).
// The on-disk layout of a run's checkpoints, and atomic file writes.
//   RUN/checkpoints/step_0000100/   a complete checkpoint (7-digit zero-padded step)
//   RUN/checkpoints/.tmp_step_...   one being written (or left by a crash): never read
// A checkpoint directory only ever appears under its final name once every file in it is on
// disk, so "the latest step_ directory" is always safe to resume from.
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/file_io.h"

namespace lmf {

struct CheckpointRef {
  long step;
  std::filesystem::path dir;
};

// "step_0000100" for step 100.
std::string checkpoint_dir_name(long step);

// Creates RUN/checkpoints/.tmp_step_XXXXXXX (replacing a stale one), calls fill(dir) to write the
// files, fsyncs them and the directory, and renames it to step_XXXXXXX; an existing step_XXXXXXX
// is replaced only once the new one is complete. Then removes the oldest complete checkpoints so
// that at most keep_last remain (keep_last <= 0: keep all); the one just written is never
// removed, even if older ones have higher steps. If fill throws, its temporary directory is
// removed, earlier checkpoints are untouched, and the exception propagates. Returns the final path.
std::filesystem::path write_checkpoint(
    const std::filesystem::path& run_dir, long step, int keep_last,
    const std::function<void(const std::filesystem::path&)>& fill);

// Complete checkpoints (step_<digits> directories) sorted by step; empty if there are none.
std::vector<CheckpointRef> list_checkpoints(const std::filesystem::path& run_dir);
std::optional<CheckpointRef> latest_checkpoint(const std::filesystem::path& run_dir);

// Writes path + ".tmp", fsyncs it, renames it over path, fsyncs the directory. UserError naming
// the file if it cannot be written.
// The whole file; UserError naming the file if it cannot be read.

}  // namespace lmf
