#pragma once
// CUDA ops: fp32, every pointer a DEVICE pointer, same semantics (and the same gradient rule) as
// the CPU op of the same name in ops/ops.h, which is the specification. Each call is
// asynchronous on `stream`; launch errors throw lmf::Error (LMF_CUDA_CHECK).
#include <cuda_runtime_api.h>

#include <cstddef>

namespace lmf::cuda {

// out = a + b, (n).
void residual_forward(float* out, const float* a, const float* b, size_t n,
                      cudaStream_t stream = 0);

// GELU, tanh approximation; dinp = gelu'(inp) * dout (assigned).
void gelu_forward(float* out, const float* inp, size_t n, cudaStream_t stream = 0);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                   cudaStream_t stream = 0);

// out = (inp - mean) * rstd * w + b per row, eps 1e-5, two-pass (biased) variance.
// out, inp (N, C); mean, rstd (N) saved for backward; w, b (C).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                       const float* b, int N, int C, cudaStream_t stream = 0);
// dinp (N, C) += ...; dw (C) += ...; db (C) += ... (all three ACCUMULATE, as on the CPU).
// Deterministic: no atomics, a fixed summation order. dinp must not alias dout (nor on the CPU,
// whose second pass reads dout after the first has written dinp).
void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                        const float* w, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t stream = 0);

// AdamW on one flat range, t the 1-based step; bias corrections computed in double on the host,
// as on the CPU.
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t, cudaStream_t stream = 0);

}  // namespace lmf::cuda
