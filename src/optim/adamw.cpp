#include "optim/adamw.h"

#include <cmath>

#include "ops/ops.h"

namespace lmf {

AdamW::AdamW(const ParamStore<float>& ps, const OptimConfig& cfg)
    : cfg_(cfg), m_(ps.flat_size()), v_(ps.flat_size()) {}

void AdamW::step(ParamStore<float>& ps, double lr) {
  ++t_;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    float wd = e.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f;
    ops::adamw_update(ps.param(i), ps.grad(i), m_.data() + e.offset, v_.data() + e.offset, e.size,
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
