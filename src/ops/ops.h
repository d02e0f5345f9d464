#pragma once
// One declaration per op. The CPU backend (ops/cpu/) is the specification; every op is a
// template over the number type, instantiated for float (the fast path) and double (gradient
// checks). Shapes are in the comments; every buffer is contiguous, row-major.
//
// Gradient rule (see nn/README.md): parameter gradients accumulate (+=); activation gradients
// are assigned (=), except where noted: layernorm_backward accumulates into `dinp` because its
// input is always the residual stream, whose gradient also flows around the block.
#include <cstddef>
#include <cstdint>

namespace lmf::ops {

// out = inp @ w^T + bias
// out (N, OC); inp (N, C); w (OC, C); bias (OC) or nullptr.
template <class T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC);
// dinp = dout @ w (assigned; skipped if nullptr); dw += dout^T @ inp; dbias += sum_rows(dout)
// (skipped if nullptr).
template <class T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N, int C,
                     int OC);

// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
// out (B, T, C); tokens (B, T); wte (V, C); wpe (maxT, C).
template <class T>
void encoder_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T, int C);
// dwte[tokens[b,t]] += dout[b,t]; dwpe[t] += sum_b dout[b,t]. Deterministic (no atomics).
template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T, int C);

// out = (inp - mean) * rstd * w + b, per row, eps 1e-5.
// out, inp (N, C); mean, rstd (N) saved for backward; w, b (C).
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N, int C);
// dinp += ...; dw += ...; db += ...
template <class T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean,
                        const T* rstd, int N, int C);

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class T>
void gelu_forward(T* out, const T* inp, size_t n);
template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n);  // dinp = gelu'(inp) * dout

// out = a + b, (n). Backward of a residual add is the identity: no op needed.
template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n);

// Causal multi-head self-attention, scale 1/sqrt(hs), hs = C / NH.
// qkv (B, T, 3C): for each (b, t), [q (NH, hs) | k (NH, hs) | v (NH, hs)].
// out (B, T, C), head h in columns [h*hs, (h+1)*hs).
// lse (B, NH, T): log-sum-exp of each row of scaled scores, saved for backward.
// Memory: at most one (T x T) block of scores per thread; backward recomputes the
// probabilities from q, k and lse (no (B, NH, T, T) tensor is ever stored).
template <class T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T, int C, int NH);
// dqkv (B, T, 3C) assigned.
template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B, int T,
                        int C, int NH);

// Classifier fused with softmax cross-entropy, in row chunks so the (N, V) logits are never
// stored whole. logits = x @ w^T; losses[i] = logsumexp(logits[i]) - logits[i][targets[i]].
// x (N, C); w (V, C); targets (N), a target < 0 means "ignore this row" (loss 0, no gradient);
// losses (N).
// If dx != nullptr the backward runs in the same pass, with dlogits = (softmax - onehot) *
// dloss[i]: dx (N, C) assigned, dw (V, C) accumulated (dw must be non-null then).
// Returns sum of losses over rows not ignored.
template <class T>
double classifier_ce_forward(T* losses, T* dx, T* dw, const T* x, const T* w, const int32_t* targets,
                             const T* dloss, int N, int C, int V);

// Rows of logits only (for sampling/eval): logits (N, V) = x (N, C) @ w^T (V, C).
template <class T>
void classifier_logits(T* logits, const T* x, const T* w, int N, int C, int V);

// AdamW (Loshchilov & Hutter), one flat range. m, v (n) fp32 state; t is the 1-based step.
// p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t);

// Sum of squares, accumulated in double, deterministic for a given thread count.
double sum_squares(const float* x, size_t n);
void scale(float* x, float s, size_t n);

}  // namespace lmf::ops
