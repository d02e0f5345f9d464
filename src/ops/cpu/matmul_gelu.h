#pragma once
// The fused MLP ops of ops::Backend (matmul_gelu_forward, matmul_dgelu_backward) on the CPU:
// the GEMM of a table, then GELU, exactly the two ops in turn (so the fused and the unfused paths
// give the same bits). Templated over the GEMM, so that each matmul-precision table composes
// with its own (cpu/rounded.h).
#include <cstddef>

#include "ops/ops.h"

namespace lmf::ops::cpu {

// pre (N, OC) = inp w^T + bias; out (N, OC) = gelu(pre).
template <class F, auto Matmul>
void matmul_gelu_forward(F* out, F* pre, const F* inp, const F* w, const F* bias, int N, int C, int OC) {
  Matmul(pre, inp, w, bias, N, C, OC);
  gelu_forward<F>(out, pre, size_t(N) * OC);
}

// dinp (N, C) = gelu'(pre) (dout w); dw += dout^T inp; dbias += column sums of dout.
template <class F, auto MatmulBackward>
void matmul_dgelu_backward(F* dinp, F* dw, F* dbias, const F* dout, const F* inp, const F* w, const F* pre, int N,
                           int C, int OC) {
  MatmulBackward(dinp, dw, dbias, dout, inp, w, N, C, OC);
  gelu_backward<F>(dinp, pre, dinp, size_t(N) * C);  // in place: gelu_backward allows dinp == dout
}

}  // namespace lmf::ops::cpu
