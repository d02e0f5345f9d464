#pragma once
// Metrics as JSON lines: one object per line, e.g. {"step": 100, "train_loss": 3.21, "lr": 6e-4}.
// Each line is written and flushed whole, so a crash can only cut the last line short; readers
// and appenders treat such a line as never written.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

namespace lmf {

class MetricsLog {
 public:
  // append = false starts a new file; append = true continues one (a resumed run), first
  // dropping a partial last line left by a crash so the next record starts on a line of its own.
  // Creates missing parent directories. UserError naming the file if it cannot be opened.
  MetricsLog(const std::filesystem::path& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // One line, flushed to the OS (not fsynced: losing the last records in a power cut is fine).
  // NaN and Inf become null, as JSON has no spelling for them.
  void write(const nlohmann::json& record);
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* f_ = nullptr;
};

// Every record in the file, in order. A last line that does not parse (cut short by a crash) is
// skipped; a bad line anywhere else, or a line that is not a JSON object, is a UserError naming
// the file and line number.
std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path);

}  // namespace lmf
