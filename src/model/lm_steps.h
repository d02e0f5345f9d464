#pragma once
// The training API every model family shares: forward, backward, and both as one micro-batch
// (forward_backward), optionally as a CUDA graph. A family (Gpt2, Llama) derives from
// LmSteps<Family<F>, F> and defines the parts, which LmSteps may call (friend):
//   long stage(tokens, targets, B, T): the host's part of a forward (checks, the ids' host copy,
//     the uploads of ids and targets); returns how many targets count;
//   double run_forward(bool targets, double grad_scale): its device part, only ops on the
//     backend, so a graph may record it; returns the classifier's loss sum (NaN while recording);
//   void run_backward(): the backward's device part, all but the input embedding's;
//   void finish_backward(): the input embedding's backward (whose ids the host groups by token);
//   const ops::Backend<F>& backend(), bool has_block_hooks(), uint64_t layout() (counts the
//     re-carves of the activations: every buffer moved).
#include <cstdint>

#include "core/error.h"
#include "model/lm_head.h"
#include "model/step_graph.h"

namespace lmf {

template <class Family, class F>
class LmSteps {
 public:
  // Forward over tokens (B, T). With targets (B, T) returns the mean loss over targets >= 0
  // (else returns 0 and leaves logits for `last_logits()`). If `grad_scale` > 0, the
  // classifier's backward runs fused with its forward, with dL/dloss_i = grad_scale for every
  // row, and backward() may follow.
  double forward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale = 0) {
    const long valid = self().stage(tokens, targets, B, T);
    const double sum = self().run_forward(targets != nullptr, grad_scale);
    return targets ? lm_head::mean_loss(sum, valid) : 0.0;
  }
  // Backward of the last forward (which must have had grad_scale > 0). Accumulates into grads.
  void backward() {
    self().run_backward();
    self().finish_backward();
  }
  // One training micro-batch: forward(tokens, targets, B, T, grad_scale) then backward(),
  // returning the loss (grad_scale > 0). With graphs on, the device work between the uploads and
  // the embedding's backward is a graph (model/step_graph.h): run eagerly for a new shape,
  // recorded on its second call, launched after; the same numbers as without. No block hooks
  // then (their host work would not be recorded).
  double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale) {
    LMF_CHECK(targets != nullptr && grad_scale > 0, "forward_backward needs targets and grad_scale > 0");
    if (!graphs_) {
      const double loss = forward(tokens, targets, B, T, grad_scale);
      backward();
      return loss;
    }
    LMF_CHECK(!self().has_block_hooks(), "graphs with block hooks: their host work would not be recorded");
    const long valid = self().stage(tokens, targets, B, T);
    const ops::Backend<F>& be = self().backend();
    graph_.run(be, {B, T, grad_scale, self().layout()}, [&] {
      self().run_forward(true, grad_scale);
      self().run_backward();
    });
    // The embedding's backward first: its host work (grouping the ids) overlaps the graph's run,
    // which reading the loss waits for.
    self().finish_backward();
    const double sum = be.classifier_ce_last_sum();
    return lm_head::mean_loss(sum, valid);
  }
  // Graphs for forward_backward; on a backend without them (the CPU's) a UserError.
  void set_graphs(bool on) {
    if (on && !self().backend().has_graphs())
      throw UserError("CUDA graphs need a GPU backend; this model runs on {}", self().backend().name);
    if (!on) graph_.reset();
    graphs_ = on;
  }
  const StepGraph<F>& step_graph() const { return graph_; }

 private:
  Family& self() { return static_cast<Family&>(*this); }
  bool graphs_ = false;
  StepGraph<F> graph_;
};

}  // namespace lmf
