// Rotary position embedding (Su et al. 2021, RoFormer sec. 3.4.2, eq. 34). Each pair (a, b) of a
// head is rotated by angle (pos0 + t) * inv_freq[j]; backward applies the transpose rotation.
// The cos/sin tables are computed in double and rounded once to F, so the float path's only
// errors are that rounding and the rotation's two products and one add.
#include <cmath>
#include <numbers>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

// cos, sin (T, hs/2) of angle (pos0 + t) * inv_freq[j].
template <class F>
void rope_tables(std::vector<F>& cos_t, std::vector<F>& sin_t, int T, int hs, const double* inv_freq,
                 int pos0) {
  const int half = hs / 2;
  cos_t.resize((size_t)T * half);
  sin_t.resize((size_t)T * half);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < half; ++j) {
      const double a = double(pos0 + t) * inv_freq[j];
      cos_t[(size_t)t * half + j] = (F)std::cos(a);
      sin_t[(size_t)t * half + j] = (F)std::sin(a);
    }
}

// Rotates every pair of every head by +angle (sign 1) or -angle (sign -1). out == inp allowed:
// each pair is read whole before it is written.
template <class F>
void rope_apply(F* out, const F* inp, int B, int T, int NH, int hs, const double* inv_freq, bool interleaved,
                int pos0, F sign) {
  LMF_CHECK(hs > 0 && hs % 2 == 0, "rope: head size {} must be even", hs);
  std::vector<F> cos_t, sin_t;
  rope_tables(cos_t, sin_t, T, hs, inv_freq, pos0);
  const int half = hs / 2;
  // Element offsets of pair j: (2j, 2j+1) interleaved, (j, j + hs/2) rotate-half.
  const int step = interleaved ? 2 : 1, other = interleaved ? 1 : half;
#pragma omp parallel for schedule(static) if ((long)B * T * NH * hs > 4096)
  for (long bt = 0; bt < (long)B * T; ++bt) {
    const int t = (int)(bt % T);
    const F* c = cos_t.data() + (size_t)t * half;
    const F* s = sin_t.data() + (size_t)t * half;
    for (int h = 0; h < NH; ++h) {
      const size_t off = ((size_t)bt * NH + h) * hs;
      const F* x = inp + off;
      F* y = out + off;
#pragma omp simd
      for (int j = 0; j < half; ++j) {
        const F a = x[j * step], b = x[j * step + other], sn = sign * s[j];
        y[j * step] = a * c[j] - b * sn;
        y[j * step + other] = a * sn + b * c[j];
      }
    }
  }
}

}  // namespace

std::vector<double> rope_inv_freq(int hs, double theta, const RopeScaling& s) {
  LMF_CHECK(hs > 0 && hs % 2 == 0, "rope: head size {} must be even", hs);
  std::vector<double> f(hs / 2);
  for (int j = 0; j < hs / 2; ++j) f[j] = std::pow(theta, -2.0 * j / hs);
  using K = RopeScaling::Kind;
  if (s.kind == K::kLinear) {
    for (double& x : f) x /= s.factor;
  } else if (s.kind == K::kLlama3) {
    const double low_wavelen = s.original_context / s.low_freq_factor;
    const double high_wavelen = s.original_context / s.high_freq_factor;
    for (double& x : f) {
      const double wavelen = 2 * std::numbers::pi / x;
      if (wavelen > low_wavelen) {
        x /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double sm = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        x = (1 - sm) * x / s.factor + sm * x;
      }
    }
  }
  return f;
}

template <class F>
void rope_forward(F* out, const F* inp, int B, int T, int NH, int hs, const double* inv_freq, bool interleaved,
                  int pos0) {
  rope_apply(out, inp, B, T, NH, hs, inv_freq, interleaved, pos0, F(1));
}

template <class F>
void rope_backward(F* dinp, const F* dout, int B, int T, int NH, int hs, const double* inv_freq, bool interleaved,
                   int pos0) {
  rope_apply(dinp, dout, B, T, NH, hs, inv_freq, interleaved, pos0, F(-1));
}

template void rope_forward<float>(float*, const float*, int, int, int, int, const double*, bool, int);
template void rope_forward<double>(double*, const double*, int, int, int, int, const double*, bool, int);
template void rope_backward<float>(float*, const float*, int, int, int, int, const double*, bool, int);
template void rope_backward<double>(double*, const double*, int, int, int, int, const double*, bool, int);

}  // namespace lmf::ops
