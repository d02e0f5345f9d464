#pragma once
// Shared by the tensor-parallel model tests (test_tensor_parallel in double, test_bf16 over bf16
// storage): a model run split over ranks (threads of one process, tests/thread_comm.h) on the
// weights of the whole model.
#include <cstddef>
#include <vector>

#include "dist/tensor_parallel.h"
#include "model/model_config.h"
#include "model_test_util.h"
#include "nn/nn.h"
#include "thread_comm.h"

namespace lmf::test {

// Each rank's loss and gradients (its part's flat buffer) after one forward and backward of
// model M on `size` ranks, every rank holding its slice of `whole`'s parameters.
template <class T>
struct SplitRun {
  std::vector<double> losses;
  std::vector<std::vector<T>> grads;
};
template <class M, class T>
SplitRun<T> run_split(const ModelConfig& cfg, int size, const ParamStore<T>& whole, const Batch& b, int B, int T_,
                      double scale) {
  SplitRun<T> run{std::vector<double>(static_cast<size_t>(size)),
                  std::vector<std::vector<T>>(static_cast<size_t>(size))};
  ThreadGroup::run(size, [&](dist::Communicator& comm) {
    const int r = comm.rank();
    M part(cfg, true, nn::TensorParallel{&comm, size, r});
    auto& ps = part.params();
    dist::tp_slice(whole, whole.params(), ps, ps.params(), size, r);
    ps.zero_grad();
    run.losses[size_t(r)] = part.forward(b.x.data(), b.y.data(), B, T_, scale);
    part.backward();
    run.grads[size_t(r)].assign(ps.grads(), ps.grads() + ps.flat_size());
  });
  return run;
}

// Rank r's gradients put in their place in the whole model's flat layout (into `grads`).
template <class M, class T>
void place_split(const ModelConfig& cfg, int size, int r, const ParamStore<T>& whole, const std::vector<T>& part_grads,
                 T* grads) {
  const M shape(cfg, false, nn::TensorParallel{nullptr, size, r});
  dist::tp_place(whole, grads, shape.params(), part_grads.data(), size, r);
}

}  // namespace lmf::test
