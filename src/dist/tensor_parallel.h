#pragma once
// Moving tensors between the whole model's layout and the parts that the ranks of a
// tensor-parallel group hold (ParamEntry::split_dim). `whole` is the registry of the model
// built for one rank, `part` that of the same model built for a rank of a group of `size`: they
// list the same tensors in the same order. Any flat buffer in a registry's layout moves this
// way: parameters, gradients, AdamW's moments.
#include <vector>

#include "core/param_store.h"
#include "dist/communicator.h"

namespace lmf::dist {

// part_flat (part.flat_size()) = rank's part of whole_flat (whole.flat_size()): the whole of
// every replicated tensor, its share of every split one. Padding is left untouched.
template <class T>
void tp_slice(const ParamStore<T>& whole, const T* whole_flat, const ParamStore<T>& part, T* part_flat, int size,
              int rank);
// The inverse: rank's part written to its place in whole_flat (replicated tensors whole).
template <class T>
void tp_place(const ParamStore<T>& whole, T* whole_flat, const ParamStore<T>& part, const T* part_flat, int size,
              int rank);
// The whole layout assembled from every rank's part_flat, on every rank of the group
// (replicated tensors from rank 0). Collective over `group`.
std::vector<float> tp_gather(const ParamStore<float>& whole, const ParamStore<float>& part, const float* part_flat,
                             Communicator& group);

}  // namespace lmf::dist
