#pragma once
// Layers: small structs holding views into the ParamStore (weights and their gradients) with
// forward() and backward(). Activations a layer saves for its backward live in a `Saved`
// struct that the model allocates; the model records which layer ran with which Saved slot
// and walks that record in reverse for backward (no general autograd engine).
//
// THE GRADIENT RULE (every layer and op follows it):
//   - parameter gradients ACCUMULATE (+=): micro-batches and shared weights (tied embeddings,
//     a looped core) add up without extra buffers; the trainer zeroes them once per step;
//   - activation gradients are ASSIGNED (=), except into the residual stream: LayerNorm's
//     backward adds into `dinp`, because its input is the residual, whose gradient also flows
//     around the block. So one buffer `dres` carries dL/d(residual) down the whole network.
#include "core/param_store.h"
#include "dist/communicator.h"
#include "ops/backend.h"

namespace lmf::nn {

// Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): each block's attention heads and MLP
// hidden columns are divided among the `size` ranks of a group. The first matrix of each branch
// is split by output rows (column-parallel), the second by input columns (row-parallel), so a
// branch needs one all-reduce of its (N, C) output in forward and one of its (N, C) input
// gradient in backward. Everything else (embeddings, norms, head) is replicated: every rank of
// the group computes it on the same numbers, so its gradients agree without communication.
struct TensorParallel {
  dist::Communicator* comm = nullptr;  // the group; may be null when size == 1 (or to plan)
  int size = 1, rank = 0;
  // Sums x (n) over the group (nothing when size == 1).
  // (bf16 activations: summed in float, rounded once; Communicator::all_reduce_sum(bf16*).)
  template <class F>
  void all_reduce(F* x, size_t n) const {
    if (size > 1) comm->all_reduce_sum(x, n);
  }
  // The local part of a dimension of `whole` elements, which must divide evenly.
  int part(int whole) const { return whole / size; }
};

// A view of one registered tensor and its gradient, in the memory of the backend the layer is
// bound to (ParamStore::dev_param). The gradient is of the master type (float under bf16 storage,
// whose weights the ops read from a rounded compute copy); otherwise both are F.
template <class F>
struct P {
  F* w = nullptr;                 // parameter (the compute copy)
  ops::master_t<F>* dw = nullptr;  // its gradient
};

// A layout carved from two buffers: activations (F) and statistics (ops::stat_t<F>: mean, rstd,
// lse, losses).
struct Sizes {
  size_t acts = 0, stats = 0;
};
// Takes n values from the front of a buffer.
template <class T>
T* take(T*& p, size_t n) {
  T* q = p;
  p += n;
  return q;
}

// y = x W^T + b. W (out, in), b (out) or absent.
template <class F>
struct Linear {
  P<F> weight, bias;  // bias.w == nullptr: no bias
  int in = 0, out = 0;
  const ops::Backend<F>* be = &ops::cpu_backend<F>();  // who computes, on whose memory

  void forward(F* y /*(N,out)*/, const F* x /*(N,in)*/, int N) const {
    be->matmul_forward(y, x, weight.w, bias.w, N, in, out);
  }
  // dx = dy W (assigned; dx may be nullptr); dW += dy^T x; db += sum(dy).
  void backward(F* dx /*(N,in)*/, const F* dy /*(N,out)*/, const F* x /*(N,in)*/, int N) const {
    be->matmul_backward(dx, weight.dw, bias.dw, dy, x, weight.w, N, in, out);
  }
  // forward, then GELU: pre = x W^T + b, y = gelu(pre), fused (ops::Backend::matmul_gelu_forward).
  void forward_gelu(F* y /*(N,out)*/, F* pre /*(N,out)*/, const F* x /*(N,in)*/, int N) const {
    be->matmul_gelu_forward(y, pre, x, weight.w, bias.w, N, in, out);
  }
  // backward whose input was gelu(pre): dpre = gelu'(pre) (dy W) (assigned), dW, db as backward
  // (ops::Backend::matmul_dgelu_backward).
  void backward_dgelu(F* dpre /*(N,in)*/, const F* dy /*(N,out)*/, const F* x /*(N,in)*/, const F* pre /*(N,in)*/,
                      int N) const {
    be->matmul_dgelu_backward(dpre, weight.dw, bias.dw, dy, x, weight.w, pre, N, in, out);
  }
};

template <class F>
struct LayerNorm {
  P<F> weight, bias;  // (C)
  int C = 0;
  const ops::Backend<F>* be = &ops::cpu_backend<F>();
  struct Saved {
    ops::stat_t<F>* mean;  // (N)
    ops::stat_t<F>* rstd;  // (N)
  };
  void forward(F* y /*(N,C)*/, Saved s, const F* x /*(N,C)*/, int N) const {
    be->layernorm_forward(y, s.mean, s.rstd, x, weight.w, bias.w, N, C);
  }
  // res = a + b, then y = LayerNorm(res): the residual add fused with this norm (ops.h).
  void forward_add(F* res /*(N,C)*/, F* y /*(N,C)*/, Saved s, const F* a, const F* b, int N) const {
    be->residual_layernorm_forward(res, y, s.mean, s.rstd, a, b, weight.w, bias.w, N, C);
  }
  // dx += ...: the residual-stream exception of the gradient rule.
  void backward(F* dx /*(N,C)*/, const F* dy /*(N,C)*/, const F* x /*(N,C)*/, Saved s, int N) const {
    be->layernorm_backward(dx, weight.dw, bias.dw, dy, x, weight.w, s.mean, s.rstd, N, C);
  }
};

}  // namespace lmf::nn
