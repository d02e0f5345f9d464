#pragma once
// The weights the layers read. For a float (or double) model that is the parameter store's own
// compute buffer (dev_params). Under bf16 storage the parameters stay float (the master weights,
// which the optimizer updates and checkpoints hold), and the layers read a copy rounded to bf16,
// in the backend's memory, laid out as the flat buffer.
//
// The copy is rounded from the master weights during each forward, range by range just before
// it is read: the weights outside the blocks (embeddings, final norm, head) when the forward
// starts, and each block's when the block is about to run, after the model's block hook. So a
// ZeRO 3 run, whose hook gathers a block's master weights only then, rounds them once gathered.
// The backward reads what its forward rounded: the master weights do not change in between.
#include <type_traits>
#include <utility>
#include <vector>

#include "core/memory.h"
#include "core/param_store.h"
#include "nn/tape.h"
#include "ops/backend.h"

namespace lmf {

template <class F>
class ComputeCopy {
 public:
  using M = ops::master_t<F>;
  static constexpr bool kSeparate = !std::is_same_v<F, M>;

  explicit ComputeCopy(const MemorySpace& space) : wc_(space) {}
  // After ps.allocate() and place_on().
  void allocate(const ParamStore<M>& ps) {
    if constexpr (kSeparate) wc_.resize(ps.flat_size());
  }
  // Tensor i as the layers read it.
  F* at(ParamStore<M>& ps, size_t i) {
    if constexpr (kSeparate)
      return wc_.data() + ps.entry(i).offset;
    else
      return ps.dev_param(i);
  }
  const F* at(const ParamStore<M>& ps, size_t i) const {
    if constexpr (kSeparate)
      return wc_.data() + ps.entry(i).offset;
    else
      return ps.dev_param(i);
  }
  // Rounds every weight (for a decoder, which reads them outside any forward). The copy is a
  // cache of the master weights, so refreshing it leaves the model as it was: const.
  void round_all(const ops::Backend<F>& be, const ParamStore<M>& ps) const { round(be, ps, 0, ps.flat_size()); }
  // At the start of a forward: rounds the weights outside the blocks (blocks: each one's
  // [first, second) of the flat buffer, in order). Returns the hook to run the blocks with: `use`,
  // then, before a block's forward, the rounding of its weights.
  nn::BlockHook begin_forward(const ops::Backend<F>& be, ParamStore<M>& ps,
                              const std::vector<std::pair<size_t, size_t>>& blocks, const nn::BlockHook& use) {
    if constexpr (!kSeparate) {
      return use;
    } else {
      const size_t first = blocks.empty() ? ps.flat_size() : blocks.front().first;
      const size_t last = blocks.empty() ? ps.flat_size() : blocks.back().second;
      round(be, ps, 0, first);
      round(be, ps, last, ps.flat_size());
      return [this, &be, &ps, &blocks, use](size_t l, nn::BlockUse u) {
        if (use) use(l, u);
        if (u == nn::BlockUse::kForward) round(be, ps, blocks[l].first, blocks[l].second);
      };
    }
  }

 private:
  void round(const ops::Backend<F>& be, const ParamStore<M>& ps, size_t lo, size_t hi) const {
    if constexpr (kSeparate)
      if (hi > lo) be.to_compute(wc_.data() + lo, ps.dev_params() + lo, hi - lo);
  }
  mutable Array<F> wc_;  // (flat_size) when kSeparate
};

}  // namespace lmf
