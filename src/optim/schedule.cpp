#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace lmf {

double lr_at(const OptimConfig& c, long step, long total) {
  if (step < c.warmup_steps) return c.lr * double(step + 1) / double(c.warmup_steps);
  const double min_lr = c.lr * c.min_lr_ratio;
  if (c.schedule == "constant") return c.lr;
  if (c.schedule == "wsd") {
    long decay_steps = std::lround(c.decay_fraction * total);
    long decay_start = std::max(total - decay_steps, c.warmup_steps);
    if (step < decay_start || total - decay_start <= 1) return c.lr;
    double frac = double(step - decay_start) / double(total - 1 - decay_start);
    return c.lr + (min_lr - c.lr) * std::clamp(frac, 0.0, 1.0);
  }
  // cosine
  long span = total - 1 - c.warmup_steps;
  if (span <= 0) return c.lr;
  double frac = std::clamp(double(step - c.warmup_steps) / double(span), 0.0, 1.0);
  return min_lr + 0.5 * (c.lr - min_lr) * (1.0 + std::cos(M_PI * frac));
}

}  // namespace lmf
