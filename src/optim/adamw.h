#pragma once
// AdamW over the flat parameter buffer, walking the registry: decay applies to entries
// flagged `decay` (matrices, embeddings), not to biases and norm gains.
#include "core/buffer.h"
#include "core/param_store.h"
#include "train/config.h"

namespace lmf {

// With a shard [lo, hi) of the flat buffer (ZeRO: each data-parallel rank owns one), the
// moments cover only that range and step() updates only the parameters in it.
class AdamW {
 public:
  AdamW(const ParamStore<float>& ps, const OptimConfig& cfg);  // the whole buffer
  AdamW(const ParamStore<float>& ps, const OptimConfig& cfg, size_t lo, size_t hi);
  void step(ParamStore<float>& ps, double lr);  // t += 1, then update every entry in the shard
  long t() const { return t_; }
  void set_t(long t) { t_ = t; }
  float* m() { return m_.data(); }  // (hi - lo) first moments, same layout as params[lo, hi)
  float* v() { return v_.data(); }  // (hi - lo) second moments
  size_t size() const { return m_.size(); }
  size_t lo() const { return lo_; }
  size_t hi() const { return hi_; }

 private:
  OptimConfig cfg_;
  long t_ = 0;
  size_t lo_ = 0, hi_ = 0;
  Buffer<float> m_, v_;
};

// Global L2 norm of all gradients; if max_norm > 0 and the norm exceeds it, scales the
// gradients down to max_norm. Returns the norm before clipping.
double clip_grad_norm(ParamStore<float>& ps, double max_norm);

}  // namespace lmf
