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

// Mean cross-entropy over targets >= 0 of logits = x w^T; x (N, C), w (V, C) in the backend's
// memory, targets (N) on the host. With grad_scale > 0 also dx (assigned) and dw += (the fused
// backward), and returns true in `have_grad`. Targets >= V are a UserError.
template <class F>
double loss(const ops::Backend<F>& be, const Buffers<F>& b, ops::master_t<F>* dw, const F* x, const F* w, const int32_t* targets,
            int N, int C, int V, double grad_scale, bool& have_grad) {
  long valid = 0;
  for (int i = 0; i < N; ++i) {
    if (targets[i] >= V) throw UserError("target id {} is outside the model's vocabulary of {}", targets[i], V);
    valid += targets[i] >= 0;
  }
  be.memory->copy_from_host(b.targets, targets, sizeof(int32_t) * size_t(N));
  double sum;
  have_grad = grad_scale > 0;
  if (have_grad) {
    be.fill_stat(b.dloss, static_cast<ops::stat_t<F>>(grad_scale), size_t(N));
    sum = be.classifier_ce_forward(b.losses, b.dx, dw, x, w, b.targets, b.dloss, N, C, V);
  } else {
    sum = be.classifier_ce_forward(b.losses, nullptr, nullptr, x, w, b.targets, nullptr, N, C, V);
  }
  return valid > 0 ? sum / valid : 0.0;
}

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
