#pragma once
// AdamW over the flat parameter buffer, walking the registry: decay applies to entries
// flagged `decay` (matrices, embeddings), not to biases and norm gains.
#include "core/buffer.h"
#include "core/param_store.h"
#include "train/config.h"

namespace lmf {

class AdamW {
 public:
  AdamW(const ParamStore<float>& ps, const OptimConfig& cfg);
  void step(ParamStore<float>& ps, double lr);  // t += 1, then update every entry
  long t() const { return t_; }
  void set_t(long t) { t_ = t; }
  float* m() { return m_.data(); }  // (flat_size) first moments, same layout as params
  float* v() { return v_.data(); }  // (flat_size) second moments
  size_t size() const { return m_.size(); }

 private:
  OptimConfig cfg_;
  long t_ = 0;
  Buffer<float> m_, v_;
};

// Global L2 norm of all gradients; if max_norm > 0 and the norm exceeds it, scales the
// gradients down to max_norm. Returns the norm before clipping.
double clip_grad_norm(ParamStore<float>& ps, double max_norm);

}  // namespace lmf
