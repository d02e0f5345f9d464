// Classifier (x @ w^T) fused with softmax cross-entropy, in chunks of rows so the (N, V) logits
// never exist whole: only a (chunk, V) block, which also holds dlogits for the backward GEMMs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/rounded.h"
#include "ops/cpu/scratch.h"
#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

// Rows per chunk. The dw GEMM reduces over the chunk's rows while reading and writing all of dw
// (V, C), so a longer chunk amortises that traffic; 256 rows of V = 50257 floats is 51 MB.
constexpr int kRowChunk = 256;

// One row of logits l (V), in place. Returns the loss lse(l) - l[target]; if grad, leaves
// dlogits = (softmax(l) - onehot(target)) * dloss in l. A target < 0 gives loss 0 and, if grad,
// a zero row (so the GEMMs add nothing for it).
template <class T>
LMF_INLINE T ce_row(T* l, int V, int target, T dloss, bool grad) {
  if (target < 0) {
    if (grad) std::fill_n(l, V, T(0));
    return T(0);
  }
  const T lt = l[target];
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < V; ++j) mx = l[j] > mx ? l[j] : mx;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < V; ++j) {
    const T e = cpu::vexp(l[j] - mx);
    l[j] = e;
    sum += e;
  }
  if (grad) {
    const T f = dloss / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) l[j] *= f;
    l[target] -= dloss;
  }
  return mx + std::log(sum) - lt;
}
LMF_CLONES float ce_row_f32(float* l, int V, int target, float dloss, bool grad) {
  return ce_row<float>(l, V, target, dloss, grad);
}

// classifier_ce_forward; `round` (float only; nullable) rounds the GEMMs' operands
// (ops/cpu/rounded.h).
template <class T>
double classifier_ce(T* losses, T* dx, T* dw, const T* x, const T* w, const int32_t* targets,
                     const T* dloss, int N, int C, int V,
                     void (*round)(T* dst, const T* src, size_t n)) {
  LMF_CHECK(!dx || (dw && dloss), "classifier_ce: the backward needs dw and dloss");
  for (int i = 0; i < N; ++i)
    LMF_CHECK(targets[i] < V, "classifier_ce: target {} at row {} out of range V={}", targets[i], i,
              V);
  const int chunk = std::min(N, kRowChunk);
  // (chunk, V), kept per calling thread between calls: a fresh 51 MB allocation per call costs
  // more in page faults and zero-filling than the softmax itself.
  T* logits = cpu::thread_scratch<T, 2>((size_t)chunk * V);
  const bool grad = dx != nullptr;
  if (round) {  // w (V, C) once, into a kept copy
    T* wr = cpu::thread_scratch<T, 3>((size_t)V * C);
    round(wr, w, (size_t)V * C);
    w = wr;
  }
  double total = 0;
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int n = std::min(chunk, N - r0);
    const T* xc = x + (size_t)r0 * C;  // (n, C)
    if (round) {
      T* xr = cpu::thread_scratch<T, 4>((size_t)n * C);
      round(xr, xc, (size_t)n * C);
      xc = xr;
    }
    // Outside any parallel region: the GEMMs use every thread.
    cpu::gemm<T>(false, true, n, V, C, T(1), xc, C, w, C, T(0), logits, V);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; ++r) {
      T* l = logits + (size_t)r * V;
      const T dl = grad ? dloss[r0 + r] : T(0);
      if constexpr (std::is_same_v<T, float>) {
        losses[r0 + r] = ce_row_f32(l, V, targets[r0 + r], dl, grad);
      } else {
        losses[r0 + r] = ce_row<T>(l, V, targets[r0 + r], dl, grad);
      }
    }
    for (int r = 0; r < n; ++r) total += (double)losses[r0 + r];  // ignored rows are 0
    if (grad) {
      if (round) round(logits, logits, (size_t)n * V);
      // dx_chunk (n, C) = dlogits (n, V) @ w (V, C); dw (V, C) += dlogits^T @ x_chunk. Chunks
      // run in order, so dw's sum order is fixed.
      cpu::gemm<T>(false, false, n, C, V, T(1), logits, V, w, C, T(0), dx + (size_t)r0 * C, C);
      cpu::gemm<T>(true, false, V, C, n, T(1), logits, V, xc, C, T(1), dw, C);
    }
  }
  return total;
}

}  // namespace

template <class T>
double classifier_ce_forward(T* losses, T* dx, T* dw, const T* x, const T* w,
                             const int32_t* targets, const T* dloss, int N, int C, int V) {
  return classifier_ce<T>(losses, dx, dw, x, w, targets, dloss, N, C, V, nullptr);
}

namespace cpu {
double classifier_ce_forward_with(float* losses, float* dx, float* dw, const float* x,
                                  const float* w, const int32_t* targets, const float* dloss, int N,
                                  int C, int V, void (*round)(float*, const float*, size_t)) {
  return classifier_ce<float>(losses, dx, dw, x, w, targets, dloss, N, C, V, round);
}
}  // namespace cpu

template <class T>
void classifier_logits(T* logits, const T* x, const T* w, int N, int C, int V) {
  cpu::gemm<T>(false, true, N, V, C, T(1), x, C, w, C, T(0), logits, V);
}

template double classifier_ce_forward<float>(float*, float*, float*, const float*, const float*,
                                             const int32_t*, const float*, int, int, int);
template double classifier_ce_forward<double>(double*, double*, double*, const double*,
                                              const double*, const int32_t*, const double*, int,
                                              int, int);
template void classifier_logits<float>(float*, const float*, const float*, int, int, int);
template void classifier_logits<double>(double*, const double*, const double*, int, int, int);

}  // namespace lmf::ops
