// LayerNorm (Ba et al. 2016), eps 1e-5, biased variance; backward as in llm.c.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

constexpr double kEps = 1e-5;

// One row. out, x (C); w, b (C). Two-pass variance: no cancellation when |mean| >> std.
template <class T>
LMF_INLINE void ln_fwd_row(T* out, T* mean_out, T* rstd_out, const T* x, const T* w, const T* b,
                           int C) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < C; ++c) s += x[c];
  const T m = s / C;
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  const T rstd = T(1) / std::sqrt(v / C + T(kEps));
#pragma omp simd
  for (int c = 0; c < C; ++c) out[c] = (x[c] - m) * rstd * w[c] + b[c];
  *mean_out = m;
  *rstd_out = rstd;
}
LMF_CLONES void ln_fwd_row_f32(float* out, float* mean, float* rstd, const float* x, const float* w,
                               const float* b, int C) {
  ln_fwd_row<float>(out, mean, rstd, x, w, b, C);
}

// dinp row (C) += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, dnorm = w * dout.
template <class T>
LMF_INLINE void ln_bwd_dinp_row(T* dinp, const T* dout, const T* x, const T* w, T mean, T rstd,
                                int C) {
  T dnorm_mean = 0, dnorm_norm_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
  for (int c = 0; c < C; ++c) {
    const T norm = (x[c] - mean) * rstd;
    const T dnorm = w[c] * dout[c];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * norm;
  }
  dnorm_mean /= C;
  dnorm_norm_mean /= C;
#pragma omp simd
  for (int c = 0; c < C; ++c) {
    const T norm = (x[c] - mean) * rstd;
    const T dnorm = w[c] * dout[c];
    dinp[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd;
  }
}
LMF_CLONES void ln_bwd_dinp_row_f32(float* dinp, const float* dout, const float* x, const float* w,
                                    float mean, float rstd, int C) {
  ln_bwd_dinp_row<float>(dinp, dout, x, w, mean, rstd, C);
}

// dw[c] += sum_i norm[i, c] * dout[i, c], db[c] += sum_i dout[i, c] for c in [c0, c1), rows in
// order (deterministic for any thread count).
template <class T>
LMF_INLINE void ln_bwd_params_cols(T* dw, T* db, const T* dout, const T* inp, const T* mean,
                                   const T* rstd, int N, int C, int c0, int c1) {
  for (int i = 0; i < N; ++i) {
    const T* x = inp + (size_t)i * C;
    const T* d = dout + (size_t)i * C;
    const T m = mean[i], r = rstd[i];
#pragma omp simd
    for (int c = c0; c < c1; ++c) {
      dw[c] += (x[c] - m) * r * d[c];
      db[c] += d[c];
    }
  }
}
LMF_CLONES void ln_bwd_params_cols_f32(float* dw, float* db, const float* dout, const float* inp,
                                       const float* mean, const float* rstd, int N, int C, int c0,
                                       int c1) {
  ln_bwd_params_cols<float>(dw, db, dout, inp, mean, rstd, N, C, c0, c1);
}

}  // namespace

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N,
                       int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const size_t off = (size_t)i * C;
    if constexpr (std::is_same_v<T, float>) {
      ln_fwd_row_f32(out + off, mean + i, rstd + i, inp + off, w, b, C);
    } else {
      ln_fwd_row<T>(out + off, mean + i, rstd + i, inp + off, w, b, C);
    }
  }
}

template <class T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int C) {
  // Pass 1, rows: dinp needs two reductions over its own row.
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const size_t off = (size_t)i * C;
    if constexpr (std::is_same_v<T, float>) {
      ln_bwd_dinp_row_f32(dinp + off, dout + off, inp + off, w, mean[i], rstd[i], C);
    } else {
      ln_bwd_dinp_row<T>(dinp + off, dout + off, inp + off, w, mean[i], rstd[i], C);
    }
  }
  // Pass 2, column blocks: dw and db are reductions over rows; owning columns avoids atomics and
  // per-thread partial copies.
  constexpr int kBlock = 64;
  const int nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; ++blk) {
    const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
    if constexpr (std::is_same_v<T, float>) {
      ln_bwd_params_cols_f32(dw, db, dout, inp, mean, rstd, N, C, c0, c1);
    } else {
      ln_bwd_params_cols<T>(dw, db, dout, inp, mean, rstd, N, C, c0, c1);
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int, int);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int, int);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int, int);

}  // namespace lmf::ops
