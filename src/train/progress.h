#pragma once
// Console progress for a training run, on stderr (stdout stays free for the CLI's own output).
//  - On a terminal: one line redrawn in place,
//      step  120/1000 [#######.......]  12%  loss 3.2134  tok/s 12.3k  ETA 1m23s
//    with log lines (message()) printed above it.
//  - Otherwise (a pipe, a log file, TERM=dumb, force_plain): plain lines, at most one every
//    max(1, total/100) steps unless 10 s have passed, and always the last step:
//      step 120/1000 | loss 3.2134 | tok/s 12.3k | ETA 1m23s
// At the last step the ETA gives way to the time taken: "time 5m03s".
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lmf {

using ProgressFields =
    std::vector<std::pair<std::string, std::string>>;  // (label, value), in order

class Progress {
 public:
  // `out` is for tests; a non-terminal `out` always gets plain lines.
  Progress(long total_steps, long start_step, bool force_plain = false, std::FILE* out = stderr);
  ~Progress();  // finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Step `step` (1-based count of completed steps, start_step < step <= total) is done.
  void update(long step, const ProgressFields& fields);
  // A log line printed above the bar (or as a plain line).
  void message(std::string_view line);
  // Ends the bar's line; prints the last update if the plain mode had skipped it. Idempotent.
  void finish();

  bool is_terminal() const { return tty_; }
  // Seconds per step, smoothed; 0 before the first update.
  double seconds_per_step() const { return sec_per_step_; }

  // The bar line for a terminal `width` columns wide (never wider than width - 1, so it cannot
  // wrap and break the redraw), and the plain line. Public for tests.
  std::string bar_line(long step, const ProgressFields& fields, int width) const;
  std::string plain_line(long step, const ProgressFields& fields) const;

 private:
  using Clock = std::chrono::steady_clock;
  std::string eta_text(long step) const;
  void emit(const std::string& s);
  int term_width() const;

  long total_;
  long start_step_;
  std::FILE* out_;
  bool tty_ = false;
  bool finished_ = false;

  Clock::time_point start_time_;
  Clock::time_point last_time_;
  long last_step_;
  double sec_per_step_ = 0;

  // What the next finish() or message() must redraw / print.
  long shown_step_ = -1;  // last step drawn (tty) or printed (plain)
  Clock::time_point shown_time_;
  long pending_step_ = -1;  // last update() received
  ProgressFields pending_fields_;
};

// "12s", "3m05s", "1h02m" ("?" for NaN, infinite or negative).
std::string format_duration(double seconds);
// Three significant digits with a k/M/G/T suffix: "950", "12.3k", "1.05M".
std::string format_count(double x);

}  // namespace lmf
