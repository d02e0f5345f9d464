#include "train/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "train/checkpoint_dir.h"

namespace lmf {

namespace {

constexpr int kWidth = 800, kHeight = 500;
// Plot area, in SVG pixels (y grows downwards).
constexpr double kLeft = 75, kRight = 780, kTop = 45, kBottom = 445;
constexpr const char* kTrainColor = "#9ecae1";
constexpr const char* kEmaColor = "#1f77b4";
constexpr const char* kValColor = "#d62728";

struct Point {
  double x, y;
};

struct Axis {
  double lo, hi, step;
};

// Tick spacing 1, 2 or 5 x 10^k giving about `target` intervals; the range is widened to whole
// ticks so the data never touches the frame between two labels.
Axis nice_axis(double lo, double hi, int target, bool integer) {
  if (!(hi > lo)) {
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  double step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  if (integer) step = std::max(step, 1.0);
  // The small slack keeps a bound that is already a whole tick from growing by one more.
  return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step, step};
}

std::vector<double> ticks(const Axis& a) {
  std::vector<double> t;
  const long n = std::lround((a.hi - a.lo) / a.step);
  for (long i = 0; i <= n; ++i) t.push_back(a.lo + static_cast<double>(i) * a.step);
  return t;
}

std::string tick_label(double v, double step) {
  if (std::abs(v) < step * 1e-6) v = 0;  // no "-0"
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, decimals);
}

// step -> value for every record carrying a finite number under `key`; std::map sorts by step and
// lets a later record (a resumed run re-logging a step) replace an earlier one.
std::vector<Point> series(const std::vector<nlohmann::json>& metrics, const char* key) {
  std::map<double, double> by_step;
  for (const auto& r : metrics) {
    if (!r.is_object()) continue;
    auto s = r.find("step");
    auto v = r.find(key);
    if (s == r.end() || v == r.end() || !s->is_number() || !v->is_number()) continue;
    const double x = s->get<double>(), y = v->get<double>();
    if (std::isfinite(x) && std::isfinite(y)) by_step[x] = y;
  }
  std::vector<Point> out;
  for (const auto& [x, y] : by_step) out.push_back({x, y});
  return out;
}

// Exponential moving average, debiased as in Adam / TensorBoard so the first points are not pulled
// towards zero. Window of about 2% of the run, i.e. smooth at any run length.
std::vector<Point> ema(const std::vector<Point>& pts) {
  const double window = std::max(1.0, static_cast<double>(pts.size()) / 50);
  const double beta = 1 - 1 / window;
  std::vector<Point> out;
  double m = 0, weight = 0;
  for (const auto& p : pts) {
    m = beta * m + (1 - beta) * p.y;
    weight = beta * weight + (1 - beta);
    out.push_back({p.x, m / weight});
  }
  return out;
}

struct Frame {
  Axis x, y;
  double px(double v) const { return kLeft + (v - x.lo) / (x.hi - x.lo) * (kRight - kLeft); }
  double py(double v) const { return kBottom - (v - y.lo) / (y.hi - y.lo) * (kBottom - kTop); }
};

// Long runs have more points than pixels: keep, per pixel column, the lowest and highest point
// (in step order), which draws the same picture as all of them.
std::vector<Point> to_pixels(const std::vector<Point>& pts, const Frame& f) {
  std::vector<Point> px;
  for (const auto& p : pts) px.push_back({f.px(p.x), f.py(p.y)});
  if (px.size() <= 2 * static_cast<size_t>(kRight - kLeft)) return px;
  std::vector<Point> out;
  size_t i = 0;
  while (i < px.size()) {
    const long col = std::lround(px[i].x);
    size_t lo = i, hi = i, j = i;
    for (; j < px.size() && std::lround(px[j].x) == col; ++j) {
      if (px[j].y < px[lo].y) lo = j;
      if (px[j].y > px[hi].y) hi = j;
    }
    out.push_back(px[std::min(lo, hi)]);
    if (lo != hi) out.push_back(px[std::max(lo, hi)]);
    i = j;
  }
  return out;
}

std::string polyline(const std::vector<Point>& px, const char* color, double width,
                     const char* cls) {
  std::string pts;
  for (const auto& p : px) pts += fmt::format("{}{:.1f},{:.1f}", pts.empty() ? "" : " ", p.x, p.y);
  return fmt::format(
      "  <polyline class=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" "
      "stroke-linejoin=\"round\" "
      "points=\"{}\"/>\n",
      cls, color, width, pts);
}

std::string markers(const std::vector<Point>& px, const char* color, double r) {
  std::string s;
  for (const auto& p : px)
    s += fmt::format("  <circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{}\" fill=\"{}\"/>\n", p.x, p.y, r,
                     color);
  return s;
}

}  // namespace

std::string loss_plot_svg(const std::vector<nlohmann::json>& metrics) {
  const std::vector<Point> train = series(metrics, "train_loss");
  const std::vector<Point> val = series(metrics, "val_loss");
  const std::vector<Point> smooth = ema(train);

  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const auto* s : {&train, &val})
    for (const auto& p : *s) {
      xlo = std::min(xlo, p.x);
      xhi = std::max(xhi, p.x);
      ylo = std::min(ylo, p.y);
      yhi = std::max(yhi, p.y);
    }
  const bool empty = train.empty() && val.empty();
  if (empty) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
  const Frame f{nice_axis(xlo, xhi, 8, /*integer=*/true), nice_axis(ylo, yhi, 6, false)};

  std::string svg = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "  <rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "  <text x=\"{2}\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" "
      "font-weight=\"bold\">Loss</text>\n",
      kWidth, kHeight, (kLeft + kRight) / 2);

  // Grid and tick labels.
  for (double v : ticks(f.x)) {
    const double x = f.px(v);
    svg += fmt::format(
        "  <line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e5e5e5\"/>\n"
        "  <text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
        x, kTop, kBottom, kBottom + 18, tick_label(v, f.x.step));
  }
  for (double v : ticks(f.y)) {
    const double y = f.py(v);
    svg += fmt::format(
        "  <line x1=\"{1}\" y1=\"{0:.1f}\" x2=\"{2}\" y2=\"{0:.1f}\" stroke=\"#e5e5e5\"/>\n"
        "  <text x=\"{3}\" y=\"{0:.1f}\" text-anchor=\"end\" "
        "dominant-baseline=\"middle\">{4}</text>\n",
        y, kLeft, kRight, kLeft - 8, tick_label(v, f.y.step));
  }
  svg += fmt::format(
      "  <rect x=\"{0}\" y=\"{1}\" width=\"{2}\" height=\"{3}\" fill=\"none\" stroke=\"#333\"/>\n"
      "  <text x=\"{4}\" y=\"{5}\" text-anchor=\"middle\">step</text>\n"
      "  <text x=\"18\" y=\"{6}\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
      "{6})\">loss</text>\n",
      kLeft, kTop, kRight - kLeft, kBottom - kTop, (kLeft + kRight) / 2, kBottom + 42,
      (kTop + kBottom) / 2);

  if (empty) {
    svg += fmt::format(
        "  <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no loss values "
        "yet</text>\n",
        (kLeft + kRight) / 2, (kTop + kBottom) / 2);
  }
  struct Legend {
    const char* label;
    const char* color;
    double width;
    bool marker;
  };
  std::vector<Legend> legend;
  if (!train.empty()) {
    const auto px = to_pixels(train, f);
    svg += polyline(px, kTrainColor, 1, "train");
    if (px.size() == 1) svg += markers(px, kTrainColor, 2.5);  // a lone point draws no line
    svg += polyline(to_pixels(smooth, f), kEmaColor, 2.2, "train-ema");
    legend.push_back({"train", kTrainColor, 1, false});
    legend.push_back({"train (EMA)", kEmaColor, 2.2, false});
  }
  if (!val.empty()) {
    const auto px = to_pixels(val, f);
    svg += polyline(px, kValColor, 1.5, "val");
    svg += markers(px, kValColor, 3);
    legend.push_back({"val", kValColor, 1.5, true});
  }

  // Legend, top right inside the frame (losses fall, so that corner is usually empty).
  const double lx = kRight - 130, ly = kTop + 12;
  if (!legend.empty())
    svg += fmt::format(
        "  <rect x=\"{}\" y=\"{}\" width=\"120\" height=\"{}\" fill=\"white\" "
        "fill-opacity=\"0.85\" "
        "stroke=\"#ccc\"/>\n",
        lx - 8, ly - 10, 18 * legend.size() + 4);
  for (size_t i = 0; i < legend.size(); ++i) {
    const double y = ly + 18 * static_cast<double>(i);
    const auto& l = legend[i];
    svg += fmt::format(
        "  <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>\n", lx,
        y, lx + 24, y, l.color, l.width);
    if (l.marker)
      svg +=
          fmt::format("  <circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>\n", lx + 12, y, l.color);
    svg += fmt::format("  <text x=\"{}\" y=\"{}\" dominant-baseline=\"middle\">{}</text>\n",
                       lx + 32, y, l.label);
  }
  svg += "</svg>\n";
  return svg;
}

void write_loss_plot(const std::vector<nlohmann::json>& metrics,
                     const std::filesystem::path& out_svg) {
  write_file_atomic(out_svg, loss_plot_svg(metrics));
}

}  // namespace lmf
