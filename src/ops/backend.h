#pragma once
// A backend: the ops of ops/ops.h for one kind of memory, as a table of functions, and that
// memory (core/memory.h). The layers and models call ops through the table they were bound to,
// so the same model code runs on the CPU (cpu_backend, the specification) and on a GPU
// (cuda_backend, ops/cuda/): only where the numbers live and who computes them change.
//
// Every pointer an op takes is in the backend's memory, except where a comment says "host".
// Semantics, shapes and the gradient rule are those of the op of the same name in ops/ops.h.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "core/half.h"
#include "core/memory.h"
#include "ops/ops.h"

namespace lmf::ops {

// The precision of the products inside the GEMMs of the linear layers and the classifier (what
// PyTorch's torch.set_float32_matmul_precision sets): fp32 (exact products), tf32 (operands
// rounded to 10 mantissa bits) or bf16 (to 7). Storage, accumulation, the bias, softmax and every
// other op stay fp32 in each mode; attention's own products are bf16 in the bf16 mode (the GPU's
// tensor-core attention) and fp32 otherwise. On a GPU tf32 / bf16 run the GEMMs on the tensor
// cores (cuBLAS CUBLAS_COMPUTE_32F_FAST_TF32 / _FAST_16BF); the CPU emulates them by rounding
// copies of the operands (to nearest, ties to even) before an fp32 GEMM, so a CPU run specifies
// and predicts the GPU's numbers (slower than fp32 there).
enum class MatmulPrecision { fp32, tf32, bf16 };
const char* to_string(MatmulPrecision p);
std::optional<MatmulPrecision> parse_matmul_precision(std::string_view s);
// x rounded to the operand precision of p (round to nearest even; NaN stays NaN, a value that
// rounds past the largest finite one becomes Inf, as in IEEE conversion).
float round_operand(float x, MatmulPrecision p);
// The unit roundoff of an operand: 2^-24 (fp32), 2^-11 (tf32), 2^-8 (bf16).
double operand_unit_roundoff(MatmulPrecision p);

// The number types around activations of type A (ops.h's F): the parameters' gradients (and the
// master weights and optimizer state) are master_t<A>; saved statistics (mean, rstd, lse), losses,
// their gradients and logits are stat_t<A>. Both are A itself for float and double, and float for
// bf16 storage, whose ops compute in float and round only what they store as A.
template <class A>
struct Numbers {
  using M = A;
  using S = A;
};
template <>
struct Numbers<bf16> {
  using M = float;
  using S = float;
};
template <class A>
using master_t = typename Numbers<A>::M;
template <class A>
using stat_t = typename Numbers<A>::S;

// A recorded sequence of a device backend's ops (a CUDA graph), opaque: Backend::capture_end.
struct Graph;

// F: the activations' type, which the weights the ops read share; M, S as Numbers above.
template <class F>
struct Backend {
  using M = master_t<F>;
  using S = stat_t<F>;

  const char* name;            // "cpu", "cuda"
  const MemorySpace* memory;   // where the ops' buffers live
  MatmulPrecision matmul_precision;  // of matmul_*, classifier_* and (bf16) attention_*

  void (*matmul_forward)(F* out, const F* inp, const F* w, const F* bias, int N, int C, int OC);
  void (*matmul_backward)(F* dinp, M* dw, M* dbias, const F* dout, const F* inp, const F* w, int N, int C,
                          int OC);
  // tokens in the backend's memory.
  void (*encoder_forward)(F* out, const int32_t* tokens, const F* wte, const F* wpe, int B, int T, int C);
  // tokens_host: the same ids, in HOST memory (a device backend groups positions by token on the
  // host, for a deterministic sum without atomics).
  void (*encoder_backward)(M* dwte, M* dwpe, const F* dout, const int32_t* tokens_host, int B, int T, int C);
  void (*layernorm_forward)(F* out, S* mean, S* rstd, const F* inp, const F* w, const F* b, int N, int C);
  void (*layernorm_backward)(F* dinp, M* dw, M* db, const F* dout, const F* inp, const F* w, const S* mean,
                             const S* rstd, int N, int C);
  void (*gelu_forward)(F* out, const F* inp, size_t n);
  void (*gelu_backward)(F* dinp, const F* inp, const F* dout, size_t n);
  // GPT-2's MLP, fused around its GELU (cpu/matmul_gelu.h): pre = inp w^T + bias (matmul_forward's
  // shapes, pre and out (N, OC)), out = gelu(pre); and matmul_backward whose dinp then goes
  // through GELU's backward at pre: dinp = gelu'(pre) (dout w), pre and dinp (N, C). On the CPU,
  // exactly the two ops in turn; under bf16 storage the GELU acts on the GEMM's float result
  // before the one rounding (a GPU's cuBLASLt GELU_AUX_BIAS and DGELU epilogues).
  void (*matmul_gelu_forward)(F* out, F* pre, const F* inp, const F* w, const F* bias, int N, int C, int OC);
  void (*matmul_dgelu_backward)(F* dinp, M* dw, M* dbias, const F* dout, const F* inp, const F* w, const F* pre,
                                int N, int C, int OC);
  void (*residual_forward)(F* out, const F* a, const F* b, size_t n);
  void (*residual_layernorm_forward)(F* res, F* out, S* mean, S* rstd, const F* a, const F* b, const F* w,
                                     const F* bias, int N, int C);
  void (*residual_rmsnorm_forward)(F* res, F* out, S* rstd, const F* a, const F* b, const F* w, int N, int C,
                                   float eps);
  void (*attention_forward)(F* out, S* lse, const F* qkv, int B, int T, int C, int NH);
  void (*attention_backward)(F* dqkv, const F* dout, const F* qkv, const F* out, const S* lse, int B, int T,
                             int C, int NH);
  // Returns the sum of the losses on the host (a device backend synchronises for it).
  double (*classifier_ce_forward)(S* losses, F* dx, M* dw, const F* x, const F* w, const int32_t* targets,
                                  const S* dloss, int N, int C, int V);
  void (*classifier_logits)(S* logits, const F* x, const F* w, int N, int C, int V);
  void (*rmsnorm_forward)(F* out, S* rstd, const F* inp, const F* w, int N, int C, float eps);
  void (*rmsnorm_backward)(F* dinp, M* dw, const F* dout, const F* inp, const F* w, const S* rstd, int N, int C);
  // inv_freq (hs/2 doubles) in the backend's memory.
  void (*rope_forward)(F* out, const F* inp, int B, int T, int NH, int hs, const double* inv_freq,
                       bool interleaved, int pos0);
  void (*rope_backward)(F* dinp, const F* dout, int B, int T, int NH, int hs, const double* inv_freq,
                        bool interleaved, int pos0);
  void (*swiglu_forward)(F* out, const F* gate, const F* up, size_t n);
  void (*swiglu_backward)(F* dgate, F* dup, const F* dout, const F* gate, const F* up, size_t n);
  void (*attention_gqa_forward)(F* out, S* lse, const F* q, const F* k, const F* v, int B, int T, int NH,
                                int KVH, int hs);
  void (*attention_gqa_backward)(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                                 const F* out, const S* lse, int B, int T, int NH, int KVH, int hs);
  void (*attention_decode)(F* y, S* scratch, const F* q, const F* k, const F* v, DecodeLayout c, int NH, int KVH,
                           int hs);

  // x[0, n) = value.
  void (*fill)(F* x, F value, size_t n);
  void (*fill_stat)(S* x, S value, size_t n);
  // dst[0, n) = src[0, n), both in the backend's memory, not overlapping.
  void (*copy)(F* dst, const F* src, size_t n);
  // dst[0, n) = src[0, n) rounded to F (to nearest even; a plain copy when F is M): the compute
  // copy of the weights from the master weights.
  void (*to_compute)(F* dst, const M* src, size_t n);
  // The optimizer's ops (float; the double table has them too, for float buffers).
  void (*adamw_update)(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                       float beta2, float eps, float wd, long t);
  // chunks (nchunks) in the backend's memory; one launch on a GPU.
  void (*adamw_chunks)(float* p, const float* g, float* m, float* v, const AdamwChunk* chunks, size_t nchunks,
                       AdamwStep s, float grad_scale);
  double (*sum_squares)(const float* x, size_t n);  // returns on the host
  void (*scale)(float* x, float s, size_t n);
  // Waits until every op issued so far has finished (for timing; a no-op on the CPU).
  void (*synchronize)();
  // The most bytes of the backend's memory in use at once so far (0 on the CPU, whose peak is the
  // process's resident set).
  size_t (*peak_memory_bytes)();

  // Graphs (a GPU's CUDA graphs; null on a backend without them, as the CPU's). After
  // capture_begin(), the ops this host thread issues are recorded instead of run, until
  // capture_end() returns them as a graph; graph_launch(g) then runs them, as often as asked: the
  // same kernels with the same arguments and pointers, over the memory as it is at the launch.
  // So what is recorded must not depend on the host: no op in it may synchronise with the host,
  // copy from or to it, or allocate (a capture the runtime refuses makes capture_end throw, naming
  // the call), and a later launch sees new inputs only through the same buffers. While capturing,
  // classifier_ce_forward returns NaN; classifier_ce_last_sum() returns, once the work has run (it
  // synchronises), the sum of the losses of the last classifier_ce_forward that ran, a launch's
  // included. graph_free(g) releases a graph (null: nothing).
  void (*capture_begin)() = nullptr;
  Graph* (*capture_end)() = nullptr;
  void (*graph_launch)(Graph* g) = nullptr;
  void (*graph_free)(Graph* g) = nullptr;
  double (*classifier_ce_last_sum)() = nullptr;
  bool has_graphs() const { return capture_begin != nullptr; }

  bool on_host() const { return memory->host_accessible; }
};

// The CPU backend (the specification), over host memory. tf32 / bf16 exist for float only (a
// UserError for double).
template <class F>
const Backend<F>& cpu_backend(MatmulPrecision p = MatmulPrecision::fp32);
// bf16 storage (ops/cpu/bf16.cpp): each op widens its bf16 operands, runs the float op of the bf16
// table above and rounds what it stores to bf16. Its products are bf16 whatever p says (fp32, the
// default, or bf16); tf32 is a UserError.
template <>
const Backend<bf16>& cpu_backend<bf16>(MatmulPrecision p);

}  // namespace lmf::ops
