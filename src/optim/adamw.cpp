#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

#include "ops/ops.h"

namespace lmf {

AdamW::AdamW(const ParamStore<float>& ps, const OptimConfig& cfg, const ops::Backend<float>* be)
    : AdamW(ps, cfg, 0, ps.flat_size(), be) {}

AdamW::AdamW(const ParamStore<float>& ps, const OptimConfig& cfg, size_t lo, size_t hi,
             const ops::Backend<float>* be)
    : cfg_(cfg),
      lo_(lo),
      hi_(hi),
      be_(be ? be : &ops::cpu_backend<float>()),
      m_(*be_->memory),
      v_(*be_->memory) {
  LMF_CHECK(lo <= hi && hi <= ps.flat_size(), "AdamW shard [{}, {}) of {}", lo, hi, ps.flat_size());
  LMF_CHECK(be_->on_host() || ps.on_device(), "AdamW on {} over parameters that are not placed there", be_->name);
  m_.resize(hi - lo);
  v_.resize(hi - lo);
}

void AdamW::step(ParamStore<float>& ps, double lr) {
  ++t_;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    const size_t a = std::max(e.offset, lo_), b = std::min(e.offset + e.size, hi_);
    if (a >= b) continue;
    float wd = e.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f;
    be_->adamw_update(ps.dev_params() + a, ps.dev_grads() + a, m_.data() + (a - lo_), v_.data() + (a - lo_), b - a,
                      static_cast<float>(lr), static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                      static_cast<float>(cfg_.eps), wd, t_);
  }
}

double clip_grad_norm(ParamStore<float>& ps, double max_norm, const ops::Backend<float>& be) {
  // Padding between entries is zero in the gradient buffer, so the flat sum is exact.
  double norm = std::sqrt(be.sum_squares(ps.dev_grads(), ps.flat_size()));
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm))
    be.scale(ps.dev_grads(), static_cast<float>(max_norm / norm), ps.flat_size());
  return norm;
}

}  // namespace lmf
