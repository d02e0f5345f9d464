#include "train/progress.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace lmf {

namespace {

// Redraws faster than this are invisible and cost a syscall per step on fast runs.
constexpr double kRedrawSeconds = 0.1;
constexpr double kPlainEverySeconds = 10.0;
// Per-step smoothing of the step time: about the last 20 steps dominate the ETA.
constexpr double kStepTimeDecay = 0.95;
constexpr int kDefaultWidth = 100;
constexpr int kMaxBarWidth = 50;
constexpr int kMinBarWidth = 10;

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int num_digits(long v) { return static_cast<int>(std::to_string(std::max(v, 0L)).size()); }

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  // Round once, so 59.7 s shows as "1m00s" rather than "60s".
  const long long s = std::llround(seconds);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  const long long m = (s + 30) / 60;  // to the nearest minute
  return fmt::format("{}h{:02d}m", m / 60, m % 60);
}

std::string format_count(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x < 0) return fmt::format("-{}", format_count(-x));
  static constexpr const char* kSuffix[] = {"", "k", "M", "G", "T", "P"};
  size_t i = 0;
  double v = x;
  while (v >= 999.5 && i + 1 < std::size(kSuffix)) {
    v /= 1000;
    ++i;
  }
  // Three significant digits; rounding can reach the next power of ten (9.999 -> "10.0").
  std::string s;
  if (i == 0 && v == std::floor(v))
    s = fmt::format("{:.0f}", v);
  else if (v < 9.995)
    s = fmt::format("{:.2f}", v);
  else if (v < 99.95)
    s = fmt::format("{:.1f}", v);
  else
    s = fmt::format("{:.0f}", v);
  return s + kSuffix[i];
}

Progress::Progress(long total_steps, long start_step, bool force_plain, std::FILE* out)
    : total_(total_steps), start_step_(start_step), out_(out), last_step_(start_step) {
  const char* term = std::getenv("TERM");
  tty_ = !force_plain && ::isatty(::fileno(out_)) && !(term && std::strcmp(term, "dumb") == 0);
  start_time_ = last_time_ = shown_time_ = Clock::now();
}

Progress::~Progress() { finish(); }

int Progress::term_width() const {
  winsize ws{};
  if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return kDefaultWidth;
}

std::string Progress::eta_text(long step) const {
  if (step >= total_)
    return fmt::format("time {}", format_duration(seconds_between(start_time_, Clock::now())));
  if (sec_per_step_ <= 0) return "ETA ?";
  return fmt::format("ETA {}", format_duration(static_cast<double>(total_ - step) * sec_per_step_));
}

std::string Progress::bar_line(long step, const ProgressFields& fields, int width) const {
  const int digits = num_digits(total_);
  const std::string left = fmt::format("step {:>{}}/{} ", step, digits, total_);
  const double frac = total_ > 0 ? std::clamp(static_cast<double>(step) / total_, 0.0, 1.0) : 0.0;
  std::string right = fmt::format(" {:>3}%", static_cast<int>(frac * 100));
  for (const auto& [label, value] : fields) right += fmt::format("  {} {}", label, value);
  right += fmt::format("  {}", eta_text(step));

  const int room = width - 1 - static_cast<int>(left.size() + right.size()) - 2;  // 2 for "[]"
  std::string line = left;
  if (room >= kMinBarWidth) {
    const int bar = std::min(room, kMaxBarWidth);
    const int filled = static_cast<int>(frac * bar);
    line += fmt::format("[{}{}]", std::string(filled, '#'), std::string(bar - filled, '.'));
  }
  line += right;
  if (static_cast<int>(line.size()) > width - 1) line.resize(std::max(width - 1, 0));
  return line;
}

std::string Progress::plain_line(long step, const ProgressFields& fields) const {
  std::string line = fmt::format("step {}/{}", step, total_);
  for (const auto& [label, value] : fields) line += fmt::format(" | {} {}", label, value);
  return fmt::format("{} | {}", line, eta_text(step));
}

void Progress::emit(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), out_);
  std::fflush(out_);
}

void Progress::update(long step, const ProgressFields& fields) {
  const auto now = Clock::now();
  if (step > last_step_) {
    const double per_step =
        seconds_between(last_time_, now) / static_cast<double>(step - last_step_);
    const double keep = std::pow(kStepTimeDecay, static_cast<double>(step - last_step_));
    sec_per_step_ = sec_per_step_ == 0 ? per_step : keep * sec_per_step_ + (1 - keep) * per_step;
    last_step_ = step;
    last_time_ = now;
  }
  pending_step_ = step;
  pending_fields_ = fields;
  finished_ = false;

  const bool first = shown_step_ < 0;
  const bool last = step >= total_;
  const double since_shown = seconds_between(shown_time_, now);
  bool show;
  if (tty_) {
    show = first || last || since_shown >= kRedrawSeconds;
  } else {
    const long every = std::max(1L, total_ / 100);
    show = first || last || step - shown_step_ >= every || since_shown >= kPlainEverySeconds;
  }
  if (!show) return;
  if (tty_)
    emit(fmt::format("\r{}\x1b[K", bar_line(step, fields, term_width())));
  else
    emit(plain_line(step, fields) + "\n");
  shown_step_ = step;
  shown_time_ = now;
}

void Progress::message(std::string_view line) {
  if (tty_) {
    std::string s = "\r\x1b[K";
    s += line;
    s += "\n";
    if (pending_step_ >= 0 && !finished_)
      s += bar_line(pending_step_, pending_fields_, term_width());
    emit(s);
  } else {
    emit(std::string(line) + "\n");
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (pending_step_ < 0) return;
  if (tty_) {
    emit(fmt::format("\r{}\x1b[K\n", bar_line(pending_step_, pending_fields_, term_width())));
  } else if (pending_step_ != shown_step_) {
    emit(plain_line(pending_step_, pending_fields_) + "\n");
  }
  shown_step_ = pending_step_;
}

}  // namespace lmf
