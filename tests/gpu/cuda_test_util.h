#pragma once
// Shared by the GPU tests (tests/gpu/test_cuda_*.cpp, CUDA builds only): the comparison of a
// GPU result with the CPU op's. Inputs and bounds come from op_tolerance.h, as in
// tests/unit/test_ops.cpp. Both the GPU and the CPU result lie within a bound of the exact
// value, so they lie within kBoth times it of each other.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "op_tolerance.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda_backend.h"

namespace lmf::test {

using FVec = std::vector<float>;
using cuda::DeviceBuffer;

constexpr double kBoth = 2.0;  // GPU and CPU each within the bound of exact

inline Tol tol_f32() { return Tol{std::numeric_limits<float>::epsilon()}; }

// Whether to run the production-size cases (GPT-2 124M's heads at T = 1024): yes, unless the
// environment's LMF_TEST_SMALL_SHAPES is 1, as in the emulation under AddressSanitizer
// (tests/cuda_emu, emu.asan.*), where they take minutes and reach no boundary that the small odd
// shapes do not.
inline bool production_shapes() {
  const char* e = std::getenv("LMF_TEST_SMALL_SHAPES");
  return e == nullptr || std::string(e) != "1";
}

inline FVec to_f(const Vec& v) { return FVec(v.begin(), v.end()); }
inline FVec nans(size_t n) { return FVec(n, std::numeric_limits<float>::quiet_NaN()); }

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
