#pragma once
// The CPU's emulation of the tf32 / bf16 GEMM modes (ops/backend.h, MatmulPrecision): the GEMMs
// of the linear layers and the classifier read operands rounded to the mode's precision. Internal
// to ops/cpu/; the backend table (backend.cpp) holds these in place of the fp32 ops.
#include <cstddef>
#include <cstdint>

#include "ops/backend.h"

namespace lmf::ops::cpu {

// dst[i] = round_operand(src[i], P) for i < n (dst may equal src).
template <MatmulPrecision P>
void round_operands(float* dst, const float* src, size_t n);
// The same on the calling thread only: for ops that round inside their own parallel loop, where
// round_operands' (serialised) nested region would cost more than the rounding of a row.
template <MatmulPrecision P>
void round_operands_serial(float* dst, const float* src, size_t n);

// matmul_forward / matmul_backward / classifier_logits / classifier_ce_forward of ops.h with
// every GEMM operand rounded to P; the bias and its gradient (a column sum of the unrounded dout),
// the softmax and the losses stay fp32, as on the GPU.
template <MatmulPrecision P>
void matmul_forward_rounded(float* out, const float* inp, const float* w, const float* bias, int N,
                            int C, int OC);
template <MatmulPrecision P>
void matmul_backward_rounded(float* dinp, float* dw, float* dbias, const float* dout,
                             const float* inp, const float* w, int N, int C, int OC);
template <MatmulPrecision P>
void classifier_logits_rounded(float* logits, const float* x, const float* w, int N, int C, int V);
template <MatmulPrecision P>
double classifier_ce_forward_rounded(float* losses, float* dx, float* dw, const float* x,
                                     const float* w, const int32_t* targets, const float* dloss,
                                     int N, int C, int V);

// The attention ops of ops.h with every GEMM operand rounded to P (bf16 only: the GPU's
// tensor-core attention, ops/cuda/attention_mma.cu; tf32 keeps fp32 attention, as the GPU does):
// q, k, v, dout, P and dS; the softmax, lse, D and the sums stay fp32 (cpu/attention.cpp).
template <MatmulPrecision P>
void attention_forward_rounded(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
template <MatmulPrecision P>
void attention_backward_rounded(float* dqkv, const float* dout, const float* qkv, const float* out,
                                const float* lse, int B, int T, int C, int NH);
template <MatmulPrecision P>
void attention_gqa_forward_rounded(float* out, float* lse, const float* q, const float* k, const float* v,
                                   int B, int T, int NH, int KVH, int hs);
template <MatmulPrecision P>
void attention_gqa_backward_rounded(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                    const float* k, const float* v, const float* out, const float* lse,
                                    int B, int T, int NH, int KVH, int hs);

// The fp32 pieces they are built from (matmul.cpp, classifier.cpp).
// dbias (OC) += column sums of dout (N, OC), in row order.
void bias_grad_accumulate(float* dbias, const float* dout, int N, int OC);
// classifier_ce_forward, with `round` (nullable) applied to each chunk of x, to w (once, into a
// copy) and to each chunk's dlogits before the backward GEMMs.
double classifier_ce_forward_with(float* losses, float* dx, float* dw, const float* x,
                                  const float* w, const int32_t* targets, const float* dloss, int N,
                                  int C, int V, void (*round)(float* dst, const float* src, size_t n));

}  // namespace lmf::ops::cpu
