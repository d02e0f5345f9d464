#pragma once
// Helpers for whole-model tests, templated over the model (Gpt2, Llama): random weights, a
// random batch, and the finite-difference check of every parameter in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace lmf::test {

// The model's own init, then noise on everything (biases and norm gains too) so no gradient
// is trivially zero.
template <class Model>
void randomise(Model& m, uint64_t seed) {
  m.init(seed);
  auto& ps = m.params();
  using F = std::remove_reference_t<decltype(*ps.params())>;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    for (size_t j = 0; j < e.size; ++j) ps.param(i)[j] += F(0.3 * philox_normal2(seed + 1, i, j)[0]);
  }
}

struct Batch {
  std::vector<int32_t> x, y;  // (B, T) tokens, targets
};

// Random tokens and targets in [0, V); target 3 is ignored (-1).
inline Batch random_batch(int B, int T, int V, uint64_t seed) {
  Batch b;
  Rng r(seed, 9);
  for (int i = 0; i < B * T; ++i) {
    b.x.push_back(int32_t(r.below(V)));
    b.y.push_back(int32_t(r.below(V)));
  }
  b.y[3] = -1;
  return b;
}

// Central differences over every parameter of a double model, against its backward, on the
// mean loss of a random (B, T) batch.
template <class Model>
void check_every_parameter_gradient(Model& m, int B, int T, int V) {
  randomise(m, 3);
  Batch b = random_batch(B, T, V, 4);
  const double scale = 1.0 / (B * T - 1);  // mean over the valid targets
  auto& ps = m.params();
  ps.zero_grad();
  double loss = m.forward(b.x.data(), b.y.data(), B, T, scale);
  m.backward();
  EXPECT_GT(loss, 0);
  // h = 1e-5: truncation error ~ h^2 |f'''| ~ 1e-10, rounding error ~ eps |L| / h ~ 1e-11;
  // allow 1e-7 absolute plus 1e-5 relative.
  const double h = 1e-5;
  size_t checked = 0;
  for (size_t i = 0; i < ps.entries().size(); ++i) {
    const auto& e = ps.entry(i);
    for (size_t j = 0; j < e.size; ++j) {
      double& w = ps.param(i)[j];
      double w0 = w;
      w = w0 + h;
      double lp = m.forward(b.x.data(), b.y.data(), B, T);
      w = w0 - h;
      double lm = m.forward(b.x.data(), b.y.data(), B, T);
      w = w0;
      double fd = (lp - lm) / (2 * h);
      double an = ps.grad(i)[j];
      ASSERT_NEAR(an, fd, 1e-7 + 1e-5 * std::abs(fd)) << e.name << "[" << j << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, ps.num_params());
}

}  // namespace lmf::test
