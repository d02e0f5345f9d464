#pragma once
// Shared by the GPU tests (tests/gpu/test_cuda_*.cpp, CUDA builds only): inputs exactly
// representable in float, the tolerance scale, and the comparison of a GPU result with the CPU
// op's. Tolerances as in tests/unit/test_ops.cpp: for a sum of K rounded terms, |computed -
// exact| <= gamma(K) sum |terms|, gamma(K) = lambda sqrt(K) u (Higham & Mary 2019). Both the GPU
// and the CPU result lie within that bound of the exact value, so they lie within kBoth times it
// of each other.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda_backend.h"

namespace lmf::test {

using Vec = std::vector<double>;
using FVec = std::vector<float>;
using cuda::DeviceBuffer;

constexpr double kLambda = 6.0;
constexpr double kBoth = 2.0;  // GPU and CPU each within the bound of exact

struct Tol {
  double u;
  double gamma(double K) const { return kLambda * std::sqrt(K) * u; }
};
inline Tol tol_f32() { return Tol{std::numeric_limits<float>::epsilon()}; }

// n values uniform in [lo, hi), exactly representable in float (as test_ops.cpp).
inline Vec rand_vec(size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  Rng r(20240611, stream);
  Vec v(n);
  for (auto& x : v) x = (double)(float)(lo + (hi - lo) * r.uniform());
  return v;
}
inline std::vector<int32_t> rand_tokens(size_t n, int V, uint64_t stream) {
  Rng r(20240611, stream);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)r.below((uint64_t)V);
  return t;
}
inline FVec to_f(const Vec& v) { return FVec(v.begin(), v.end()); }
inline FVec nans(size_t n) { return FVec(n, std::numeric_limits<float>::quiet_NaN()); }
inline double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// GPU result against the CPU one, per-element tolerance (0: must be exact); a NaN anywhere fails.
inline void expect_close(const char* what, const FVec& gpu, const FVec& cpu, const Vec& tol) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  ASSERT_EQ(gpu.size(), tol.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double e = std::abs((double)gpu[i] - (double)cpu[i]);
    double ratio = std::isnan(e) ? std::numeric_limits<double>::infinity() : e / tol[i];
    if (tol[i] == 0) ratio = e > 0 || std::isnan(e) ? std::numeric_limits<double>::infinity() : 0;
    if (ratio > worst) {
      worst = ratio;
      at = i;
    }
  }
  if (gpu.empty()) return;
  EXPECT_LE(worst, 1.0) << what << ": at index " << at << " gpu " << gpu[at] << " cpu " << cpu[at]
                        << " (|diff| " << std::abs((double)gpu[at] - (double)cpu[at]) << ", tol "
                        << tol[at] << ")";
}
inline void expect_close(const char* what, const FVec& gpu, const FVec& cpu, double tol) {
  expect_close(what, gpu, cpu, Vec(cpu.size(), tol));
}

}  // namespace lmf::test

#define SKIP_WITHOUT_DEVICE() \
  if (!::lmf::cuda::available()) GTEST_SKIP() << "no CUDA device"
