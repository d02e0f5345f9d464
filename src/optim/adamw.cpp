#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

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
      v_(*be_->memory),
      chunks_(*be_->memory) {
  LMF_CHECK(lo <= hi && hi <= ps.flat_size(), "AdamW shard [{}, {}) of {}", lo, hi, ps.flat_size());
  LMF_CHECK(be_->on_host() || ps.on_device(), "AdamW on {} over parameters that are not placed there", be_->name);
  m_.resize(hi - lo);
  v_.resize(hi - lo);
  // Each entry's part of the shard, cut into chunks of at most kAdamwChunk values (the padding
  // between entries is never updated).
  std::vector<ops::AdamwChunk> chunks;
  for (const auto& e : ps.entries()) {
    const size_t a = std::max(e.offset, lo_), b = std::min(e.offset + e.size, hi_);
    const float wd = e.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f;
    for (size_t at = a; at < b; at += ops::kAdamwChunk)
      chunks.push_back({at - lo_, static_cast<uint32_t>(std::min<size_t>(ops::kAdamwChunk, b - at)), wd});
  }
  chunks_.resize(chunks.size());
  chunks_.upload(chunks.data(), chunks.size());
}

void AdamW::step(ParamStore<float>& ps, double lr, float grad_scale) {
  ++t_;
  const ops::AdamwStep s = ops::AdamwStep::at(static_cast<float>(lr), static_cast<float>(cfg_.beta1),
                                              static_cast<float>(cfg_.beta2), static_cast<float>(cfg_.eps),
                                              /*wd: per chunk*/ 0.0f, t_);
  be_->adamw_chunks(ps.dev_params() + lo_, ps.dev_grads() + lo_, m_.data(), v_.data(), chunks_.data(),
                    chunks_.size(), s, grad_scale);
}

float clip_scale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm && std::isfinite(norm) ? static_cast<float>(max_norm / norm) : 1.0f;
}

double grad_norm(const ParamStore<float>& ps, const ops::Backend<float>& be) {
  // Padding between entries is zero in the gradient buffer, so the flat sum is exact.
  return std::sqrt(be.sum_squares(ps.dev_grads(), ps.flat_size()));
}

double clip_grad_norm(ParamStore<float>& ps, double max_norm, const ops::Backend<float>& be) {
  const double norm = grad_norm(ps, be);
  const float s = clip_scale(norm, max_norm);
  if (s != 1.0f) be.scale(ps.dev_grads(), s, ps.flat_size());
  return norm;
}

}  // namespace lmf
