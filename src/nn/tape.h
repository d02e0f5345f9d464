#pragma once
// The forward record that a model's backward walks in reverse: which block ran, with which
// slot of saved activations, on which input. One for every model family; a model whose core
// loops (depth recurrence) records a block once per application.
#include <cstddef>
#include <functional>
#include <vector>

namespace lmf::nn {

// When a block's parameters are about to be used, and when the forward is done with them: for
// code that keeps them elsewhere between uses (ZeRO stage 3 gathers them from the ranks'
// shards). The backward's end is the gradients-ready hook (Tape::backward's on_done).
enum class BlockUse { kForward, kForwardDone, kBackward };
using BlockHook = std::function<void(size_t block, BlockUse use)>;

template <class F, class Block>
class Tape {
 public:
  using Saved = typename Block::Saved;
  using Scratch = typename Block::Scratch;

  // Runs block l from resid[l] into resid[l + 1], for every l in order, recording each.
  void forward(const std::vector<Block>& blocks, const std::vector<F*>& resid, std::vector<Saved>& saved,
               Scratch& sc, int B, int T, const BlockHook& use = {}) {
    entries_.clear();
    for (size_t l = 0; l < blocks.size(); ++l) {
      if (use) use(l, BlockUse::kForward);
      blocks[l].forward(resid[l + 1], resid[l], saved[l], sc, B, T);
      if (use) use(l, BlockUse::kForwardDone);
      entries_.push_back({&blocks[l], &saved[l], resid[l], l});
    }
  }

  // The recorded applications in reverse; dres carries dL/d(residual) down (nn/nn.h's rule).
  // on_done(l), if set, runs as soon as block l's backward has finished.
  void backward(F* dres, Scratch& sc, int B, int T, const std::function<void(size_t)>& on_done,
                const BlockHook& use = {}) const {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (use) use(it->index, BlockUse::kBackward);
      it->block->backward(dres, it->input, *it->saved, sc, B, T);
      if (on_done) on_done(it->index);
    }
  }

 private:
  struct Entry {
    const Block* block;
    Saved* saved;
    const F* input;
    size_t index;  // the block's position in the model
  };
  std::vector<Entry> entries_;
};

}  // namespace lmf::nn
