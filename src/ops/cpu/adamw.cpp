// Optimizer kernels over flat fp32 ranges: AdamW, sum of squares (for clipping), scale.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ops/cpu/simd.h"
#include "ops/adamw_step.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

constexpr size_t kChunk = 1 << 14;  // elements per parallel chunk
constexpr int kMaxThreads = 256;    // sum_squares partials live on the stack
constexpr int kLanes = 16;          // fixed accumulator count: same sum order on every ISA

// Loshchilov & Hutter, "Decoupled weight decay regularization", Algorithm 2: the decay term is
// added to the Adam step, not to the gradient. p, g, m, v (n).
// Note: std::sqrt only vectorises with -fno-math-errno (GCC otherwise keeps a libm call for the
// errno of a negative input); the loop is memory-bound either way.
// The gradient is read as g * gs (gs = 1: exactly g).
LMF_CLONES void adamw_chunk_f32(float* p, const float* g, float* m, float* v, size_t n,
                                AdamwStep s, float gs) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i] * gs;
    const float mi = s.beta1 * m[i] + (1.0f - s.beta1) * gi;
    const float vi = s.beta2 * v[i] + (1.0f - s.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * s.inv_b1c, vhat = vi * s.inv_b2c;
    p[i] -= s.lr * (mhat / (std::sqrt(vhat) + s.eps) + s.wd * p[i]);
  }
}

// sum x^2 over [0, n) in double, kLanes interleaved partial sums combined in a fixed order.
LMF_CLONES double sum_squares_range_f32(const float* x, size_t n) {
  double acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] += (double)x[i + l] * (double)x[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) acc[l] += (double)x[i] * (double)x[i];
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

LMF_CLONES void scale_chunk_f32(float* x, float s, size_t n) {
#pragma omp simd
  for (size_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, long t) {
  const AdamwStep s = AdamwStep::at(lr, beta1, beta2, eps, wd, t);
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk, len = std::min(n - i0, kChunk);
    adamw_chunk_f32(p + i0, g + i0, m + i0, v + i0, len, s, 1.0f);
  }
}

void adamw_chunks(float* p, const float* g, float* m, float* v, const AdamwChunk* chunks, size_t nchunks,
                  AdamwStep s, float grad_scale) {
#pragma omp parallel for schedule(static)
  for (long k = 0; k < (long)nchunks; ++k) {
    const AdamwChunk c = chunks[k];
    AdamwStep sk = s;
    sk.wd = c.wd;
    adamw_chunk_f32(p + c.offset, g + c.offset, m + c.offset, v + c.offset, c.size, sk, grad_scale);
  }
}

double sum_squares(const float* x, size_t n) {
  // omp's reduction clause combines in an unspecified order; fixed contiguous ranges per thread
  // and an ordered final sum make the result a function of (x, thread count) only.
  double partial[kMaxThreads] = {};
  int used = 1;
#pragma omp parallel num_threads(std::min(omp_get_max_threads(), kMaxThreads))
  {
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const size_t i0 = n * tid / nth, i1 = n * (tid + 1) / nth;
    partial[tid] = sum_squares_range_f32(x + i0, i1 - i0);
#pragma omp single
    used = nth;
  }
  double s = 0;
  for (int k = 0; k < used; ++k) s += partial[k];
  return s;
}

void scale(float* x, float s, size_t n) {
  const long nchunks = (long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (long k = 0; k < nchunks; ++k) {
    const size_t i0 = (size_t)k * kChunk;
    scale_chunk_f32(x + i0, s, std::min(n - i0, kChunk));
  }
}

}  // namespace lmf::ops
