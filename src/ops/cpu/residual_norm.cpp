// The residual add fused with the norm that reads it (ops/ops.h). On the CPU, the specification,
// it is the two ops one after the other: the same numbers by definition. The gain is a GPU's
// (ops/cuda/layernorm.cu, rmsnorm.cu), where the fused kernel saves a pass over res.
#include "ops/ops.h"

namespace lmf::ops {

template <class F>
void residual_layernorm_forward(F* res, F* out, F* mean, F* rstd, const F* a, const F* b,
                                const F* w, const F* bias, int N, int C) {
  residual_forward(res, a, b, size_t(N) * C);
  layernorm_forward(out, mean, rstd, res, w, bias, N, C);
}

template <class F>
void residual_rmsnorm_forward(F* res, F* out, F* rstd, const F* a, const F* b, const F* w, int N,
                              int C, float eps) {
  residual_forward(res, a, b, size_t(N) * C);
  rmsnorm_forward(out, rstd, res, w, N, C, eps);
}

template void residual_layernorm_forward<float>(float*, float*, float*, float*, const float*,
                                                const float*, const float*, const float*, int, int);
template void residual_layernorm_forward<double>(double*, double*, double*, double*, const double*,
                                                 const double*, const double*, const double*, int,
                                                 int);
template void residual_rmsnorm_forward<float>(float*, float*, float*, const float*, const float*,
                                              const float*, int, int, float);
template void residual_rmsnorm_forward<double>(double*, double*, double*, const double*,
                                               const double*, const double*, int, int, float);

}  // namespace lmf::ops
