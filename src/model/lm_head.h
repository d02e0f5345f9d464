#pragma once
// What every language model in src/model/ does the same way around its blocks: check the input
// ids, run the classifier fused with cross-entropy (and its backward when training), and give
// the last position's logits for sampling.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/memory.h"
#include "ops/backend.h"

namespace lmf::lm_head {

// tokens (N): every id in [0, V), else UserError.
inline void check_tokens(const int32_t* tokens, int N, int V) {
  for (int i = 0; i < N; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw UserError("token id {} is outside the model's vocabulary of {}", tokens[i], V);
}

// Buffers of the fused classifier + cross-entropy, in the backend's memory.
template <class F>
struct Buffers {
  int32_t* targets;        // (N) copy of the targets (the op reads them again in backward)
  ops::stat_t<F>* losses;  // (N)
  ops::stat_t<F>* dloss;   // (N)
  F* dx;                   // (N, C) gradient into the final norm's output
};

// The targets (N, on the host) into b.targets (the backend's memory), for classify. Returns how
// many count (>= 0); a target >= V is a UserError.
template <class F>
long stage_targets(const ops::Backend<F>& be, const Buffers<F>& b, const int32_t* targets, int N, int V) {
  long valid = 0;
  for (int i = 0; i < N; ++i) {
    if (targets[i] >= V) throw UserError("target id {} is outside the model's vocabulary of {}", targets[i], V);
    valid += targets[i] >= 0;
  }
  be.memory->copy_from_host(b.targets, targets, sizeof(int32_t) * size_t(N));
  return valid;
}

// The sum of the cross-entropy over targets >= 0 of logits = x w^T (x (N, C), w (V, C) in the
// backend's memory; the targets staged). With grad_scale > 0 also dx (assigned) and dw += (the
// fused backward), and `have_grad` becomes true. Only ops on the backend: a graph may record it
// (then the sum is NaN, and the backend's classifier_ce_last_sum gives it after the launch).
template <class F>
double classify(const ops::Backend<F>& be, const Buffers<F>& b, ops::master_t<F>* dw, const F* x, const F* w, int N,
                int C, int V, double grad_scale, bool& have_grad) {
  have_grad = grad_scale > 0;
  if (!have_grad) return be.classifier_ce_forward(b.losses, nullptr, nullptr, x, w, b.targets, nullptr, N, C, V);
  be.fill_stat(b.dloss, static_cast<ops::stat_t<F>>(grad_scale), size_t(N));
  return be.classifier_ce_forward(b.losses, b.dx, dw, x, w, b.targets, b.dloss, N, C, V);
}

// The mean of a loss sum over `valid` targets (0 when none counts).
inline double mean_loss(double sum, long valid) { return valid > 0 ? sum / double(valid) : 0.0; }

// out (B, V) on the host: logits of position T-1 of each sequence; x (B, T, C) the final norm's
// output and w (V, C) in the backend's memory. A device backend computes into `dev` (resized to
// (B, V) in its memory) and copies back.
template <class F, class S = ops::stat_t<F>>
void last_logits(const ops::Backend<F>& be, Array<S>& dev, S* out, const F* x, const F* w, int B, int T, int C,
                 int V) {
  S* into = out;
  if (!be.on_host()) {
    if (dev.size() != size_t(B) * V) dev.resize(size_t(B) * V);
    into = dev.data();
  }
  for (int b = 0; b < B; ++b)
    be.classifier_logits(into + size_t(b) * V, x + (size_t(b) * T + T - 1) * C, w, 1, C, V);
  if (into != out) dev.download(out, size_t(B) * V);
}

}  // namespace lmf::lm_head
