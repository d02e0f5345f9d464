#pragma once
// Runtime ISA choice and vectorisable math for the hot float kernels.
//
// LMF_CLONES compiles a function once per ISA (AVX-512, AVX2, baseline) and picks one at load
// time through an ifunc resolver (GCC function multiversioning), so one binary runs everywhere
// and still uses 512-bit vectors where present. It is applied to float-only, non-template
// helpers: the template bodies are force-inlined into each clone (an always_inline callee with
// default target may be inlined into any wider-ISA caller).
//
// The math here (vexp, vtanh) is written so that GCC can vectorise it under `#pragma omp simd`
// without -ffast-math: glibc only exposes its vector exp/tanh (libmvec) under __FAST_MATH__,
// which we do not want for the whole build.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/half.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LMF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LMF_CLONES
#endif
#define LMF_INLINE [[gnu::always_inline]] inline

namespace lmf::ops::cpu {

// exp(x) in float, within ~2 ulp on [-87.3, 88.3]; 0 below, clamped above (never inf).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2; exp(r) by its degree-7 Taylor polynomial
// (truncation r^8/8! < 6e-9 relative, below half an ulp); 2^n built in the exponent bits.
// n is rounded with the 1.5 * 2^23 trick, which needs no rounding instruction (SSE2 clone).
LMF_INLINE float vexp(float x) {
  const float xc = x > 88.3f ? 88.3f : (x < -87.3f ? -87.3f : x);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693145751953125f;  // ln2 = hi + lo; hi has 16 bits, so n * hi is exact
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_n = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.3f ? 0.0f : p * two_n;
}
// The double path is the checking path: use libm.
LMF_INLINE double vexp(double x) { return std::exp(x); }

// tanh(u) = 1 - 2 / (exp(2u) + 1): absolute error a few ulp of 1, which is what GELU needs
// (it uses 1 + tanh). Saturates to +-1 without inf/nan.
LMF_INLINE float vtanh(float u) { return 1.0f - 2.0f / (vexp(2.0f * u) + 1.0f); }
LMF_INLINE double vtanh(double u) { return std::tanh(u); }

// Sums in a fixed order, vectorised: lane j of a sum of products takes the terms k = j (mod
// kLanes), in GCC's vector types (one 512-bit register of floats, two 256-bit ones, or SSE and
// scalar code, by ISA clone), then the lanes add up in a fixed tree (add_lanes). The order is the
// source's, not the vectoriser's, and the same over float or bf16 operands (a bf16 widened in the
// register is the float), so a kernel over bf16 data computes the float kernel's numbers on the
// widened data, bit for bit. The helpers are always inlined into their clone, so no vector
// crosses a call and GCC's -Wpsabi note (a vector argument's ABI without AVX-512) does not apply;
// it is off for the files that include this one (it is reported at the end of the file).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
inline constexpr int kLanes = 16;
using LanesF = float __attribute__((vector_size(kLanes * sizeof(float))));
using LanesD = double __attribute__((vector_size(kLanes * sizeof(double))));
using LanesU = uint32_t __attribute__((vector_size(kLanes * sizeof(uint32_t))));
using LanesH = uint16_t __attribute__((vector_size(kLanes * sizeof(uint16_t))));
LMF_INLINE LanesF load_lanes(const float* p) {
  LanesF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
LMF_INLINE LanesD load_lanes(const double* p) {
  LanesD v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
LMF_INLINE LanesF load_lanes(const bf16* p) {
  LanesH h;
  std::memcpy(&h, p, sizeof h);
  return (LanesF)(__builtin_convertvector(h, LanesU) << 16);  // each bf16 as the top half of a float
}
// One element as the sums' type: itself, or a bf16 widened.
LMF_INLINE float lane_value(float x) { return x; }
LMF_INLINE double lane_value(double x) { return x; }
LMF_INLINE float lane_value(bf16 x) { return std::bit_cast<float>(uint32_t(x.bits) << 16); }
// s[j] += s[j + w] for w = 8, 4, 2, 1: s[0].
LMF_INLINE float add_lanes(LanesF s) {
  using V8 = float __attribute__((vector_size(8 * sizeof(float))));
  using V4 = float __attribute__((vector_size(4 * sizeof(float))));
  const V8 t8 = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15);
  const V4 t4 = __builtin_shufflevector(t8, t8, 0, 1, 2, 3) + __builtin_shufflevector(t8, t8, 4, 5, 6, 7);
  return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}
LMF_INLINE double add_lanes(LanesD s) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) s[j] += s[j + w];
  return s[0];
}
// out[r] = sum_k a[k] b[r][k] over [0, n) in lanes, for R rows of b at once (a's vector loaded once
// for all of them); S the sums' type (float over float or bf16, or double).
template <int R, class S, class A, class B>
LMF_INLINE void dot_rows(S* out, const A* a, const B* const* b, int n) {
  using V = std::conditional_t<std::is_same_v<S, double>, LanesD, LanesF>;
  V s[R];
  for (int r = 0; r < R; ++r) s[r] = V{};
  int k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    const V x = load_lanes(a + k);
    for (int r = 0; r < R; ++r) s[r] += x * load_lanes(b[r] + k);
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; k + j < n; ++j) s[r][j] += lane_value(a[k + j]) * lane_value(b[r][k + j]);
    out[r] = add_lanes(s[r]);
  }
}
// sum_k a[k] b[k] over [0, n) in lanes: dot_rows of one row.
template <class S, class A, class B>
LMF_INLINE S dot_lanes(const A* a, const B* b, int n) {
  S out;
  dot_rows<1>(&out, a, &b, n);
  return out;
}

}  // namespace lmf::ops::cpu
