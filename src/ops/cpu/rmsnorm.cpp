// RMSNorm (Zhang & Sennrich 2019, eq. 4): no mean subtraction, no bias.
// Backward, with norm = x * rstd: dx = rstd * (w * dout - norm * mean(w * dout * norm)).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

// One row. out, x (C); w (C).
template <class T>
LMF_INLINE void rms_fwd_row(T* out, T* rstd_out, const T* x, const T* w, int C, T eps) {
  T ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int c = 0; c < C; ++c) ss += x[c] * x[c];
  const T rstd = T(1) / std::sqrt(ss / C + eps);
#pragma omp simd
  for (int c = 0; c < C; ++c) out[c] = x[c] * rstd * w[c];
  *rstd_out = rstd;
}
LMF_CLONES void rms_fwd_row_f32(float* out, float* rstd, const float* x, const float* w, int C,
                                float eps) {
  rms_fwd_row<float>(out, rstd, x, w, C, eps);
}

// dinp row (C) += (dnorm - norm * mean(dnorm * norm)) * rstd, dnorm = w * dout.
template <class T>
LMF_INLINE void rms_bwd_dinp_row(T* dinp, const T* dout, const T* x, const T* w, T rstd, int C) {
  T dnorm_norm_mean = 0;
#pragma omp simd reduction(+ : dnorm_norm_mean)
  for (int c = 0; c < C; ++c) dnorm_norm_mean += w[c] * dout[c] * (x[c] * rstd);
  dnorm_norm_mean /= C;
#pragma omp simd
  for (int c = 0; c < C; ++c) dinp[c] += (w[c] * dout[c] - x[c] * rstd * dnorm_norm_mean) * rstd;
}
LMF_CLONES void rms_bwd_dinp_row_f32(float* dinp, const float* dout, const float* x, const float* w,
                                     float rstd, int C) {
  rms_bwd_dinp_row<float>(dinp, dout, x, w, rstd, C);
}

// dw[c] += sum_i norm[i, c] * dout[i, c] for c in [c0, c1), rows in order (deterministic).
template <class T>
LMF_INLINE void rms_bwd_dw_cols(T* dw, const T* dout, const T* inp, const T* rstd, int N, int C,
                                int c0, int c1) {
  for (int i = 0; i < N; ++i) {
    const T* x = inp + (size_t)i * C;
    const T* d = dout + (size_t)i * C;
    const T r = rstd[i];
#pragma omp simd
    for (int c = c0; c < c1; ++c) dw[c] += x[c] * r * d[c];
  }
}
LMF_CLONES void rms_bwd_dw_cols_f32(float* dw, const float* dout, const float* inp,
                                    const float* rstd, int N, int C, int c0, int c1) {
  rms_bwd_dw_cols<float>(dw, dout, inp, rstd, N, C, c0, c1);
}

}  // namespace

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const size_t off = (size_t)i * C;
    if constexpr (std::is_same_v<T, float>) {
      rms_fwd_row_f32(out + off, rstd + i, inp + off, w, C, eps);
    } else {
      rms_fwd_row<T>(out + off, rstd + i, inp + off, w, C, T(eps));
    }
  }
}

template <class T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int N,
                      int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const size_t off = (size_t)i * C;
    if constexpr (std::is_same_v<T, float>) {
      rms_bwd_dinp_row_f32(dinp + off, dout + off, inp + off, w, rstd[i], C);
    } else {
      rms_bwd_dinp_row<T>(dinp + off, dout + off, inp + off, w, rstd[i], C);
    }
  }
  // dw is a reduction over rows: each thread owns a block of columns (no atomics, no partials).
  constexpr int kBlock = 64;
  const int nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; ++blk) {
    const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
    if constexpr (std::is_same_v<T, float>) {
      rms_bwd_dw_cols_f32(dw, dout, inp, rstd, N, C, c0, c1);
    } else {
      rms_bwd_dw_cols<T>(dw, dout, inp, rstd, N, C, c0, c1);
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int, int,
                                      float);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int, int);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int, int);

}  // namespace lmf::ops
