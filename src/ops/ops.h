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
#include <vector>

#include "ops/adamw_step.h"

namespace lmf {
struct bf16;
}

namespace lmf::ops {

// out = inp @ w^T + bias
// out (N, OC); inp (N, C); w (OC, C); bias (OC) or nullptr.
template <class F>
void matmul_forward(F* out, const F* inp, const F* w, const F* bias, int N, int C, int OC);
// dinp = dout @ w (assigned; skipped if nullptr); dw += dout^T @ inp; dbias += sum_rows(dout)
// (skipped if nullptr).
template <class F>
void matmul_backward(F* dinp, F* dw, F* dbias, const F* dout, const F* inp, const F* w, int N, int C,
                     int OC);

// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
// out (B, T, C); tokens (B, T); wte (V, C); wpe (maxT, C), or nullptr for models without a
// position table (RoPE): then out is the token rows alone.
template <class F>
void encoder_forward(F* out, const int32_t* tokens, const F* wte, const F* wpe, int B, int T, int C);
// dwte[tokens[b,t]] += dout[b,t]; dwpe[t] += sum_b dout[b,t] (dwpe nullptr: no position table).
// Deterministic (no atomics): each dwte element sums in token order.
template <class F>
void encoder_backward(F* dwte, F* dwpe, const F* dout, const int32_t* tokens, int B, int T, int C);

// out = (inp - mean) * rstd * w + b, per row, eps 1e-5.
// out, inp (N, C); mean, rstd (N) saved for backward; w, b (C).
template <class F>
void layernorm_forward(F* out, F* mean, F* rstd, const F* inp, const F* w, const F* b, int N, int C);
// dinp += ...; dw += ...; db += ...
template <class F>
void layernorm_backward(F* dinp, F* dw, F* db, const F* dout, const F* inp, const F* w, const F* mean,
                        const F* rstd, int N, int C);

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class F>
void gelu_forward(F* out, const F* inp, size_t n);
template <class F>
void gelu_backward(F* dinp, const F* inp, const F* dout, size_t n);  // dinp = gelu'(inp) * dout

// out = a + b, (n). Backward of a residual add is the identity: no op needed.
template <class F>
void residual_forward(F* out, const F* a, const F* b, size_t n);

// The residual add fused with the norm that reads its result: res = a + b (N, C), then
// out = layernorm(res) with its mean, rstd (N), exactly residual_forward then layernorm_forward
// (the same numbers; a GPU reads a and b once, and res back only from its caches). res may be a.
template <class F>
void residual_layernorm_forward(F* res, F* out, F* mean, F* rstd, const F* a, const F* b, const F* w,
                                const F* bias, int N, int C);

// Causal multi-head self-attention, scale 1/sqrt(hs), hs = C / NH.
// qkv (B, T, 3C): for each (b, t), [q (NH, hs) | k (NH, hs) | v (NH, hs)].
// out (B, T, C), head h in columns [h*hs, (h+1)*hs).
// lse (B, NH, T): log-sum-exp of each row of scaled scores, saved for backward.
// Memory: at most one (T x T) block of scores per thread; backward recomputes the
// probabilities from q, k and lse (no (B, NH, T, T) tensor is ever stored).
template <class F>
void attention_forward(F* out, F* lse, const F* qkv, int B, int T, int C, int NH);
// dqkv (B, T, 3C) assigned.
template <class F>
void attention_backward(F* dqkv, const F* dout, const F* qkv, const F* out, const F* lse, int B, int T,
                        int C, int NH);

// Classifier fused with softmax cross-entropy, in row chunks so the (N, V) logits are never
// stored whole. logits = x @ w^T; losses[i] = logsumexp(logits[i]) - logits[i][targets[i]].
// x (N, C); w (V, C); targets (N), a target < 0 means "ignore this row" (loss 0, no gradient);
// losses (N).
// If dx != nullptr the backward runs in the same pass, with dlogits = (softmax - onehot) *
// dloss[i]: dx (N, C) assigned, dw (V, C) accumulated (dw must be non-null then).
// Returns sum of losses over rows not ignored.
template <class F>
double classifier_ce_forward(F* losses, F* dx, F* dw, const F* x, const F* w, const int32_t* targets,
                             const F* dloss, int N, int C, int V);

// Rows of logits only (for sampling/eval): logits (N, V) = x (N, C) @ w^T (V, C).
template <class F>
void classifier_logits(F* logits, const F* x, const F* w, int N, int C, int V);

// AdamW (Loshchilov & Hutter), one flat range. m, v (n) fp32 state; t is the 1-based step.
// p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t);

// The multi-tensor form: AdamW over `nchunks` chunks of one flat range (offsets into p, g, m, v;
// each chunk with its own weight decay, s.wd unused), reading each gradient as g * grad_scale
// (clipping folded in, so no pass rescales the gradients). Every element is updated exactly as by
// adamw_update with that gradient and decay: the same bits.
void adamw_chunks(float* p, const float* g, float* m, float* v, const AdamwChunk* chunks, size_t nchunks,
                  AdamwStep s, float grad_scale);

// Sum of squares, accumulated in double, deterministic for a given thread count.
double sum_squares(const float* x, size_t n);
void scale(float* x, float s, size_t n);

// ---- Llama family ------------------------------------------------------------------------------

// RMSNorm (Zhang & Sennrich 2019): out = inp * rstd * w, rstd = 1 / sqrt(mean(inp^2) + eps).
// out, inp (N, C); rstd (N) saved for backward; w (C).
template <class F>
void rmsnorm_forward(F* out, F* rstd, const F* inp, const F* w, int N, int C, float eps);
// res = a + b, then out = rmsnorm(res) with its rstd: exactly residual_forward then
// rmsnorm_forward, fused as residual_layernorm_forward is. res may be a.
template <class F>
void residual_rmsnorm_forward(F* res, F* out, F* rstd, const F* a, const F* b, const F* w, int N, int C,
                              float eps);
// dinp (N, C) += ... (the residual stream, as for layernorm); dw (C) += ...
template <class F>
void rmsnorm_backward(F* dinp, F* dw, const F* dout, const F* inp, const F* w, const F* rstd, int N,
                      int C);

// Rotary position embedding (Su et al. 2021, RoFormer eq. 34). out, inp (B, T, NH, hs), hs even;
// out == inp allowed. Pair j in [0, hs/2) at position pos0 + t is rotated by (pos0 + t) *
// inv_freq[j] (see rope_inv_freq). interleaved: pairs (x[2j], x[2j+1]) (Meta llama, llama2.c);
// otherwise Hugging Face's rotate-half: pairs (x[j], x[j + hs/2]). pos0 > 0 serves decoding with
// a KV cache, one position at a time.
template <class F>
void rope_forward(F* out, const F* inp, int B, int T, int NH, int hs, const double* inv_freq,
                  bool interleaved, int pos0 = 0);
// dinp = R^T dout, the inverse rotation (assigned; dinp == dout allowed).
template <class F>
void rope_backward(F* dinp, const F* dout, int B, int T, int NH, int hs, const double* inv_freq,
                   bool interleaved, int pos0 = 0);

// How RoPE's frequencies are stretched for contexts beyond the trained one.
struct RopeScaling {
  enum class Kind { kNone, kLinear, kLlama3 };
  Kind kind = Kind::kNone;
  double factor = 1.0;            // linear: positions / factor; llama3: low frequencies / factor
  double low_freq_factor = 1.0;   // llama3: wavelengths above original_context / this are scaled
  double high_freq_factor = 4.0;  // llama3: wavelengths below original_context / this are kept
  double original_context = 8192; // llama3: the context the base model was trained with
};
// inv_freq[j] = theta^(-2j/hs) for j in [0, hs/2), in double, then scaled:
//   linear (Chen et al. 2023, position interpolation): inv_freq / factor;
//   llama3 (Meta, Llama 3.1): wavelength 2 pi / inv_freq above original_context/low_freq_factor:
//     inv_freq / factor; below original_context/high_freq_factor: unchanged; between: the blend
//     (1 - s) inv_freq / factor + s inv_freq, s = (original_context / wavelength - low) / (high - low).
std::vector<double> rope_inv_freq(int hs, double theta, const RopeScaling& scaling = {});

// SwiGLU (Shazeer 2020): out = silu(gate) * up, silu(x) = x * sigmoid(x). All (n).
template <class F>
void swiglu_forward(F* out, const F* gate, const F* up, size_t n);
// dgate, dup (n) assigned.
template <class F>
void swiglu_backward(F* dgate, F* dup, const F* dout, const F* gate, const F* up, size_t n);

// Causal grouped-query attention (Ainslie et al. 2023), scale 1/sqrt(hs). Query head h reads kv
// head h / (NH / KVH); KVH == NH is multi-head, KVH == 1 multi-query attention.
// q, out (B, T, NH*hs); k, v (B, T, KVH*hs); lse (B, NH, T) saved for backward.
// Memory as attention_forward: one (T x T) block per thread, P recomputed in backward.
template <class F>
void attention_gqa_forward(F* out, F* lse, const F* q, const F* k, const F* v, int B, int T, int NH,
                           int KVH, int hs);
// dq (B, T, NH*hs), dk, dv (B, T, KVH*hs), all assigned; dk and dv sum over the query heads of
// their group, in a fixed order (deterministic).
template <class F>
void attention_gqa_backward(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                            const F* out, const F* lse, int B, int T, int NH, int KVH, int hs);

// Where a batch of decoding sequences keeps its KV cache (attention_decode). Sequence b's position
// t is row t of its own cache, at k + b*seq + t*ld (v likewise), except that positions [0, shared)
// of every sequence are sequence 0's rows: a prefix they all have, such as a prompt, cached once.
struct DecodeLayout {
  int B = 1;       // sequences, one query each
  int T = 1;       // cached positions each query attends to: [0, T)
  int shared = 0;  // leading positions every sequence reads from sequence 0's cache, in [0, T]
  int ld = 0;      // elements between two rows of a cache
  size_t seq = 0;  // elements between two sequences' caches (unused for B = 1)
  int q_ld = 0;    // elements between two sequences' queries; y's rows are NH*hs apart
};
// Whether c describes caches attention_decode can read for NH query heads over KVH kv heads of hs.
inline bool decode_layout_ok(const DecodeLayout& c, int NH, int KVH, int hs) {
  return c.B > 0 && c.T > 0 && c.shared >= 0 && c.shared <= c.T && NH > 0 && KVH > 0 && NH % KVH == 0 && hs > 0 &&
         c.ld >= KVH * hs && c.q_ld >= NH * hs && (c.B == 1 || c.seq >= size_t(c.T) * c.ld);
}

// One new query per sequence against its KV cache (decoding): y (B, NH*hs), row b = softmax(q_b
// k_b^T / sqrt(hs)) v_b over sequence b's positions [0, T), query head h reading kv head h / (NH /
// KVH). A cache row holds the KVH heads' hs values at columns [kh*hs, (kh+1)*hs). scratch (B, NH,
// T): the probabilities. Per sequence and head: the scores in t order (each a dot product in
// cpu/simd.h's fixed lane order), their max, the exps and their sum in t order, then y in t order
// of (e_t / sum) v_t; so a shared prefix gives the numbers of the same rows copied into every
// cache, bit for bit.
template <class F>
void attention_decode(F* y, F* scratch, const F* q, const F* k, const F* v, DecodeLayout c, int NH, int KVH,
                      int hs);
// The same over bf16 queries and caches (a bf16 decoder's, read as they are), in float: the float
// op's numbers on the widened values, bit for bit.
void attention_decode(float* y, float* scratch, const bf16* q, const bf16* k, const bf16* v, DecodeLayout c, int NH,
                      int KVH, int hs);

}  // namespace lmf::ops
