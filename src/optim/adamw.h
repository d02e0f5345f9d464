#pragma once
// AdamW over the flat parameter buffer, walking the registry: decay applies to entries
// flagged `decay` (matrices, embeddings), not to biases and norm gains. The registry's entries
// are cut once into chunks (ops::AdamwChunk, kept in the backend's memory), and a step is one
// multi-tensor op over all of them: one launch on a GPU, whatever the number of tensors.
#include "core/memory.h"
#include "ops/backend.h"
#include "core/param_store.h"
#include "train/config.h"

namespace lmf {

// With a shard [lo, hi) of the flat buffer (ZeRO: each data-parallel rank owns one), the
// moments cover only that range and step() updates only the parameters in it. With a backend
// (nullptr: the CPU's), the moments live in its memory and step() updates the ParamStore's
// compute copy (dev_params) from its dev_grads there.
class AdamW {
 public:
  AdamW(const ParamStore<float>& ps, const OptimConfig& cfg,
        const ops::Backend<float>* be = nullptr);  // the whole buffer
  AdamW(const ParamStore<float>& ps, const OptimConfig& cfg, size_t lo, size_t hi,
        const ops::Backend<float>* be = nullptr);
  // t += 1, then update every entry in the shard, reading each gradient as g * grad_scale (the
  // clipping factor, folded in: the gradients themselves are not rescaled).
  void step(ParamStore<float>& ps, double lr, float grad_scale = 1.0f);
  size_t num_chunks() const { return chunks_.size(); }
  long t() const { return t_; }
  void set_t(long t) { t_ = t; }
  float* m() { return m_.data(); }  // (hi - lo) first moments, same layout as params[lo, hi)
  float* v() { return v_.data(); }  // (hi - lo) second moments; both in the backend's memory
  // The moments from / to host memory, (hi - lo) values each.
  void upload_moments(const float* m, const float* v) {
    m_.upload(m, m_.size());
    v_.upload(v, v_.size());
  }
  void download_moments(float* m, float* v) const {
    m_.download(m, m_.size());
    v_.download(v, v_.size());
  }
  size_t size() const { return m_.size(); }
  size_t lo() const { return lo_; }
  size_t hi() const { return hi_; }

 private:
  OptimConfig cfg_;
  long t_ = 0;
  size_t lo_ = 0, hi_ = 0;
  const ops::Backend<float>* be_;
  Array<float> m_, v_;
  Array<ops::AdamwChunk> chunks_;  // offsets relative to lo
};

// Global L2 norm of all gradients (the compute copy, dev_grads, in be's memory).
double grad_norm(const ParamStore<float>& ps, const ops::Backend<float>& be);
// grad_norm, and if max_norm > 0 and the norm exceeds it, scales the gradients down to max_norm.
// Returns the norm before clipping.
double clip_grad_norm(ParamStore<float>& ps, double max_norm, const ops::Backend<float>& be = ops::cpu_backend<float>());
// The factor clipping applies for a gradient norm: max_norm / norm when max_norm > 0 and the
// norm exceeds it (and is finite), else 1. AdamW::step takes it as grad_scale.
float clip_scale(double norm, double max_norm);

}  // namespace lmf
