#pragma once
// Row kernels shared by the attention ops (attention.cpp, attention_gqa.cpp): the softmax of one
// row of scaled scores, the probabilities recomputed from a saved log-sum-exp, and the score
// gradient. Internal linkage on purpose: each including file gets its own ISA clones.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "ops/cpu/simd.h"

namespace lmf::ops {
namespace {

constexpr int kRowBlock = 64;  // query rows per block; scratch per thread is kRowBlock x T

// In place: s (n_total) holds scaled scores of one query row whose first n_valid keys are
// visible; leaves the softmax probabilities there (0 for masked keys) and returns the lse.
template <class T>
LMF_INLINE T softmax_row(T* s, int n_valid, int n_total) {
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < n_valid; ++j) mx = s[j] > mx ? s[j] : mx;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n_valid; ++j) {
    const T e = cpu::vexp(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int j = 0; j < n_valid; ++j) s[j] *= inv;
  for (int j = n_valid; j < n_total; ++j) s[j] = T(0);
  return mx + std::log(sum);
}
LMF_CLONES float softmax_row_f32(float* s, int n_valid, int n_total) {
  return softmax_row<float>(s, n_valid, n_total);
}

// In place: s (n_total) scaled scores -> P = exp(s - lse) for the n_valid visible keys, else 0.
template <class T>
LMF_INLINE void probs_row(T* s, T lse, int n_valid, int n_total) {
#pragma omp simd
  for (int j = 0; j < n_valid; ++j) s[j] = cpu::vexp(s[j] - lse);
  for (int j = n_valid; j < n_total; ++j) s[j] = T(0);
}
LMF_CLONES void probs_row_f32(float* s, float lse, int n_valid, int n_total) {
  probs_row<float>(s, lse, n_valid, n_total);
}

// In place: dp (n) -> dS = P * (dP - D) * scale, the softmax backward for one row.
template <class T>
LMF_INLINE void dscores_row(T* dp, const T* p, T D, T scale, int n) {
#pragma omp simd
  for (int j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - D) * scale;
}
LMF_CLONES void dscores_row_f32(float* dp, const float* p, float D, float scale, int n) {
  dscores_row<float>(dp, p, D, scale, n);
}

template <class T>
LMF_INLINE T dot(const T* a, const T* b, int n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
constexpr bool kF32 = std::is_same_v<T, float>;

}  // namespace
}  // namespace lmf::ops
