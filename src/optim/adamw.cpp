#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

#include "ops/ops.h"

namespace lmf {

AdamW::AdamW(const ParamStore<float>& ps, const OptimConfig& cfg) : AdamW(ps, cfg, 0, ps.flat_size()) {}

AdamW::AdamW(const ParamStore<float>& ps, const OptimConfig& cfg, size_t lo, size_t hi)
    : cfg_(cfg), lo_(lo), hi_(hi), m_(hi - lo), v_(hi - lo) {
  LMF_CHECK(lo <= hi && hi <= ps.flat_size(), "AdamW shard [{}, {}) of {}", lo, hi, ps.flat_size());
}

void AdamW::step(ParamStore<float>& ps, double lr) {
  ++t_;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    const size_t a = std::max(e.offset, lo_), b = std::min(e.offset + e.size, hi_);
    if (a >= b) continue;
    float wd = e.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f;
    ops::adamw_update(ps.params() + a, ps.grads() + a, m_.data() + (a - lo_), v_.data() + (a - lo_), b - a,
                      static_cast<float>(lr), static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                      static_cast<float>(cfg_.eps), wd, t_);
  }
}

double clip_grad_norm(ParamStore<float>& ps, double max_norm) {
  // Padding between entries is zero in the gradient buffer, so the flat sum is exact.
  double norm = std::sqrt(ops::sum_squares(ps.grads(), ps.flat_size()));
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm))
    ops::scale(ps.grads(), static_cast<float>(max_norm / norm), ps.flat_size());
  return norm;
}

}  // namespace lmf
