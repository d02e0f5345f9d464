#include "train/metrics.h"

#include <cerrno>
#include <cstring>
#include <system_error>

#include "core/error.h"
#include "train/checkpoint_dir.h"

namespace lmf {

namespace fs = std::filesystem;

namespace {

// Cuts a file that does not end in '\n' back to its last complete line.
void drop_partial_last_line(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return;
  const std::string text = read_file(path);
  if (text.empty() || text.back() == '\n') return;
  const size_t keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
  fs::resize_file(path, keep, ec);
  if (ec)
    throw UserError("{}: cannot truncate partial last line ({})", path.string(), ec.message());
}

}  // namespace

MetricsLog::MetricsLog(const fs::path& path, bool append) : path_(path) {
  std::error_code ec;
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), ec);
  if (append) drop_partial_last_line(path);
  f_ = std::fopen(path.c_str(), append ? "ab" : "wb");
  if (!f_) throw UserError("{}: cannot open for writing ({})", path.string(), std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const nlohmann::json& record) {
  // replace: a stray invalid UTF-8 byte in a string field must not kill a training run.
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw UserError("{}: cannot write ({})", path_.string(), std::strerror(errno));
}

std::vector<nlohmann::json> read_metrics(const fs::path& path) {
  const std::string text = read_file(path);
  std::vector<nlohmann::json> out;
  size_t pos = 0;
  long line_no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    const bool last =
        nl == std::string::npos || text.find_first_not_of(" \t\r\n", nl) == std::string::npos;
    if (nl == std::string::npos) nl = text.size();
    const std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      if (last) break;  // cut short by a crash
      throw UserError("{}:{}: malformed JSON line", path.string(), line_no);
    }
    if (!j.is_object()) throw UserError("{}:{}: expected a JSON object", path.string(), line_no);
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace lmf
