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

#include "core/memory.h"
#include "ops/ops.h"

namespace lmf::ops {

template <class F>
struct Backend {
  const char* name;            // "cpu", "cuda"
  const MemorySpace* memory;   // where the ops' buffers live

  void (*matmul_forward)(F* out, const F* inp, const F* w, const F* bias, int N, int C, int OC);
  void (*matmul_backward)(F* dinp, F* dw, F* dbias, const F* dout, const F* inp, const F* w, int N, int C,
                          int OC);
  // tokens in the backend's memory.
  void (*encoder_forward)(F* out, const int32_t* tokens, const F* wte, const F* wpe, int B, int T, int C);
  // tokens_host: the same ids, in HOST memory (a device backend groups positions by token on the
  // host, for a deterministic sum without atomics).
  void (*encoder_backward)(F* dwte, F* dwpe, const F* dout, const int32_t* tokens_host, int B, int T, int C);
  void (*layernorm_forward)(F* out, F* mean, F* rstd, const F* inp, const F* w, const F* b, int N, int C);
  void (*layernorm_backward)(F* dinp, F* dw, F* db, const F* dout, const F* inp, const F* w, const F* mean,
                             const F* rstd, int N, int C);
  void (*gelu_forward)(F* out, const F* inp, size_t n);
  void (*gelu_backward)(F* dinp, const F* inp, const F* dout, size_t n);
  void (*residual_forward)(F* out, const F* a, const F* b, size_t n);
  void (*attention_forward)(F* out, F* lse, const F* qkv, int B, int T, int C, int NH);
  void (*attention_backward)(F* dqkv, const F* dout, const F* qkv, const F* out, const F* lse, int B, int T,
                             int C, int NH);
  // Returns the sum of the losses on the host (a device backend synchronises for it).
  double (*classifier_ce_forward)(F* losses, F* dx, F* dw, const F* x, const F* w, const int32_t* targets,
                                  const F* dloss, int N, int C, int V);
  void (*classifier_logits)(F* logits, const F* x, const F* w, int N, int C, int V);
  void (*rmsnorm_forward)(F* out, F* rstd, const F* inp, const F* w, int N, int C, float eps);
  void (*rmsnorm_backward)(F* dinp, F* dw, const F* dout, const F* inp, const F* w, const F* rstd, int N, int C);
  // inv_freq (hs/2 doubles) in the backend's memory.
  void (*rope_forward)(F* out, const F* inp, int B, int T, int NH, int hs, const double* inv_freq,
                       bool interleaved, int pos0);
  void (*rope_backward)(F* dinp, const F* dout, int B, int T, int NH, int hs, const double* inv_freq,
                        bool interleaved, int pos0);
  void (*swiglu_forward)(F* out, const F* gate, const F* up, size_t n);
  void (*swiglu_backward)(F* dgate, F* dup, const F* dout, const F* gate, const F* up, size_t n);
  void (*attention_gqa_forward)(F* out, F* lse, const F* q, const F* k, const F* v, int B, int T, int NH,
                                int KVH, int hs);
  void (*attention_gqa_backward)(F* dq, F* dk, F* dv, const F* dout, const F* q, const F* k, const F* v,
                                 const F* out, const F* lse, int B, int T, int NH, int KVH, int hs);

  // x[0, n) = value.
  void (*fill)(F* x, F value, size_t n);
  // The optimizer's ops (float; the double table has them too, for float buffers).
  void (*adamw_update)(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                       float beta2, float eps, float wd, long t);
  double (*sum_squares)(const float* x, size_t n);  // returns on the host
  void (*scale)(float* x, float s, size_t n);
  // Waits until every op issued so far has finished (for timing; a no-op on the CPU).
  void (*synchronize)();
  // The most bytes of the backend's memory in use at once so far (0 on the CPU, whose peak is the
  // process's resident set).
  size_t (*peak_memory_bytes)();

  bool on_host() const { return memory->host_accessible; }
};

// The CPU backend (the specification), over host memory.
template <class F>
const Backend<F>& cpu_backend();

}  // namespace lmf::ops
