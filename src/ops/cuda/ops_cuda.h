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

// RMSNorm: out = inp * rstd * w per row, rstd = 1 / sqrt(mean(inp^2) + eps).
// out, inp (N, C); rstd (N) saved for backward; w (C).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C,
                     float eps, cudaStream_t stream = 0);
// dinp (N, C) += ...; dw (C) += ... (both ACCUMULATE, as on the CPU). Deterministic: no atomics, a
// fixed summation order. dinp must not alias dout (the dw pass reads dout after dinp is written,
// as on the CPU).
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C, cudaStream_t stream = 0);

// SwiGLU: out = silu(gate) * up, silu(x) = x * sigmoid(x). All (n).
void swiglu_forward(float* out, const float* gate, const float* up, size_t n,
                    cudaStream_t stream = 0);
// dgate, dup (n) assigned. Elementwise, so an output may alias an input (not the other output).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, size_t n, cudaStream_t stream = 0);

// Rotary position embedding, as ops::rope_forward: out, inp (B, T, NH, hs), hs even; out == inp
// allowed. Unlike the CPU op, inv_freq (hs/2 doubles, ops::rope_inv_freq) is a DEVICE pointer:
// the caller uploads the table once (at model setup), not per call. Angles (pos0 + t) *
// inv_freq[j], their cos and sin in double, rounded once to float, as on the CPU.
void rope_forward(float* out, const float* inp, int B, int T, int NH, int hs,
                  const double* inv_freq, bool interleaved, int pos0 = 0, cudaStream_t stream = 0);
// dinp = R^T dout, the inverse rotation (assigned; dinp == dout allowed). inv_freq on the device.
void rope_backward(float* dinp, const float* dout, int B, int T, int NH, int hs,
                   const double* inv_freq, bool interleaved, int pos0 = 0, cudaStream_t stream = 0);

// AdamW on one flat range, t the 1-based step; bias corrections computed in double on the host,
// as on the CPU.
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t, cudaStream_t stream = 0);

}  // namespace lmf::cuda
