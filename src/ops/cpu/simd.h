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

}  // namespace lmf::ops::cpu
