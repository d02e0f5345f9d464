#pragma once
// One training micro-batch as a graph (ops/backend.h; a GPU's CUDA graph): the device work of a
// forward and its backward, between the host's uploads of ids and targets and the encoder's
// backward (whose ids the host groups), recorded once per shape and launched from then on, so a
// step costs one launch instead of one per op. Model::forward_backward, with set_graphs(true).
#include <cstdint>
#include <functional>

#include "ops/backend.h"

namespace lmf {

template <class F>
class StepGraph {
 public:
  // What a recording holds fixed: the batch's shape, the loss scale (the value the recorded fill
  // writes) and the activations' layout (a model that re-carves them counts up `layout`: every
  // buffer moved). Weights, gradients and workspaces keep their addresses.
  struct Key {
    int B = 0, T = 0;
    double grad_scale = 0;
    uint64_t layout = 0;
    bool operator==(const Key&) const = default;
  };

  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() { reset(); }

  // Runs `work`, which only issues ops on `be`: for a new key eagerly first (so that every
  // workspace it needs is allocated before a capture, which may not allocate), captured and
  // launched on the key's second call, launched from then on. A capture that fails throws, and
  // leaves no capture under way.
  void run(const ops::Backend<F>& be, const Key& key, const std::function<void()>& work) {
    if (!(key == key_) || be_ != &be) {
      reset();
      key_ = key;
      be_ = &be;
    }
    if (graph_ != nullptr) {
      be.graph_launch(graph_);
      ++launches_;
      return;
    }
    if (!warm_) {
      work();
      warm_ = true;
      return;
    }
    be.capture_begin();
    try {
      work();
    } catch (...) {
      try {
        be.graph_free(be.capture_end());
      } catch (...) {  // the first error is the one to report
      }
      throw;
    }
    graph_ = be.capture_end();
    ++captures_;
    be.graph_launch(graph_);
    ++launches_;
  }

  // Drops the recording (the next run starts over with an eager call).
  void reset() {
    if (graph_ != nullptr) be_->graph_free(graph_);
    graph_ = nullptr;
    warm_ = false;
  }

  int captures() const { return captures_; }   // recordings made so far
  long launches() const { return launches_; }  // runs that were a graph's launch

 private:
  const ops::Backend<F>* be_ = nullptr;
  ops::Graph* graph_ = nullptr;
  Key key_{};
  bool warm_ = false;
  int captures_ = 0;
  long launches_ = 0;
};

}  // namespace lmf
