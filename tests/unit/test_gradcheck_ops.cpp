// Finite-difference gradient checks, in double, of every op's backward (ops.h, double
// instantiation). For each op, L = sum(out * R) with a fixed random R (for the classifier,
// L = sum(losses * dloss)); the backward is run with dout = R, and every element of every input
// and parameter is perturbed in turn: dL/dx_k ~ (L(x + h e_k) - L(x - h e_k)) / 2h.
//
// Tolerance (derived, not tuned): the central difference has truncation error h^2 |L'''| / 6 and
// rounding error about eps |L|_abs / h, where |L|_abs = sum |out * R| bounds the terms L is
// summed from. h = eps^(1/3) ~ 6e-6 (times max(1, |x_k|)) balances the two at ~eps^(2/3) ~ 4e-11.
// With the O(1) inputs used here each op is a composition of smooth functions with O(1)
// derivatives, so |L'''| <~ |L|_abs; a factor of 100 covers the constants:
//   tol = 100 * (h^2 + eps / h) * max(1, |L|_abs).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ops/ops.h"

namespace lmf::ops {
namespace {

using Vec = std::vector<double>;

Vec rand_vec(size_t n, uint64_t stream, double lo = -1.0, double hi = 1.0) {
  Rng r(777, stream);
  Vec v(n);
  for (auto& x : v) x = lo + (hi - lo) * r.uniform();
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
double abs_dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += std::abs(a[i] * b[i]);
  return s;
}

// Compares analytic[k] with the central difference of loss() in x[k], for every k.
// loss() returns {L, |L|_abs}.
void check_grad(const char* what, Vec& x, const Vec& analytic,
                const std::function<std::pair<double, double>()>& loss) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const double eps = std::numeric_limits<double>::epsilon(), h0 = std::cbrt(eps);
  double worst = 0;
  size_t at = 0;
  double num_at = 0, tol_at = 0;
  for (size_t k = 0; k < x.size(); ++k) {
    const double save = x[k], h = h0 * std::max(1.0, std::abs(save));
    x[k] = save + h;
    const auto [lp, ap] = loss();
    x[k] = save - h;
    const auto [lm, am] = loss();
    x[k] = save;
    const double num = (lp - lm) / (2 * h);
    const double tol = 100 * (h * h + eps / h) * std::max({1.0, ap, am});
    const double ratio = std::abs(num - analytic[k]) / tol;
    if (!(ratio <= worst)) {  // NaN-safe
      worst = std::isnan(ratio) ? std::numeric_limits<double>::infinity() : ratio;
      at = k;
      num_at = num;
      tol_at = tol;
    }
  }
  EXPECT_LE(worst, 1.0) << what << "[" << at << "]: analytic " << analytic[at] << " numeric "
                        << num_at << " tol " << tol_at;
}

TEST(GradCheck, Matmul) {
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias");
    const int N = 3, C = 5, OC = 4;
    Vec inp = rand_vec(N * C, 1), w = rand_vec(OC * C, 2), bias = rand_vec(OC, 3),
        R = rand_vec(N * OC, 4);
    Vec out(N * OC);
    auto loss = [&] {
      matmul_forward<double>(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N,
                             C, OC);
      return std::pair{dot(out, R), abs_dot(out, R)};
    };
    Vec dinp(N * C), dw(OC * C, 0.0), dbias(OC, 0.0);
    matmul_backward<double>(dinp.data(), dw.data(), with_bias ? dbias.data() : nullptr, R.data(),
                            inp.data(), w.data(), N, C, OC);
    check_grad("inp", inp, dinp, loss);
    check_grad("w", w, dw, loss);
    if (with_bias) check_grad("bias", bias, dbias, loss);
  }
}

TEST(GradCheck, Encoder) {
  const int B = 2, T = 4, C = 3, V = 3;  // V < B*T: tokens repeat, so dwte rows accumulate
  const std::vector<int32_t> tokens = {0, 2, 2, 1, 2, 0, 0, 2};
  Vec wte = rand_vec(V * C, 5), wpe = rand_vec(T * C, 6), R = rand_vec(B * T * C, 7),
      out(B * T * C);
  auto loss = [&] {
    encoder_forward<double>(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return std::pair{dot(out, R), abs_dot(out, R)};
  };
  Vec dwte(V * C, 0.0), dwpe(T * C, 0.0);
  encoder_backward<double>(dwte.data(), dwpe.data(), R.data(), tokens.data(), B, T, C);
  check_grad("wte", wte, dwte, loss);
  check_grad("wpe", wpe, dwpe, loss);
}

TEST(GradCheck, Layernorm) {
  const int N = 3, C = 7;
  Vec inp = rand_vec(N * C, 8, 0.0, 2.0), w = rand_vec(C, 9), b = rand_vec(C, 10),
      R = rand_vec(N * C, 11);
  Vec out(N * C), mean(N), rstd(N);
  auto loss = [&] {
    layernorm_forward<double>(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                              N, C);
    return std::pair{dot(out, R), abs_dot(out, R)};
  };
  loss();
  Vec dinp(N * C, 0.0), dw(C, 0.0), db(C, 0.0);  // dinp accumulates: start at 0
  layernorm_backward<double>(dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(),
                             mean.data(), rstd.data(), N, C);
  check_grad("inp", inp, dinp, loss);
  check_grad("w", w, dw, loss);
  check_grad("b", b, db, loss);
}

TEST(GradCheck, Gelu) {
  const size_t n = 41;
  Vec inp = rand_vec(n, 12, -5.0, 5.0), R = rand_vec(n, 13), out(n);
  inp[0] = 0.0;  // the inflection region
  auto loss = [&] {
    gelu_forward<double>(out.data(), inp.data(), n);
    return std::pair{dot(out, R), abs_dot(out, R)};
  };
  Vec dinp(n);
  gelu_backward<double>(dinp.data(), inp.data(), R.data(), n);
  check_grad("inp", inp, dinp, loss);
}

TEST(GradCheck, Attention) {
  struct Case {
    int B, T, C, NH;
  };
  // The second case spans two query-row blocks (64 rows each) with a partial last block.
  for (const Case& c : {Case{2, 5, 6, 2}, Case{1, 66, 4, 2}}) {
    SCOPED_TRACE("T=" + std::to_string(c.T));
    Vec qkv = rand_vec((size_t)c.B * c.T * 3 * c.C, 14), R = rand_vec((size_t)c.B * c.T * c.C, 15);
    Vec out((size_t)c.B * c.T * c.C), lse((size_t)c.B * c.NH * c.T);
    auto loss = [&] {
      attention_forward<double>(out.data(), lse.data(), qkv.data(), c.B, c.T, c.C, c.NH);
      return std::pair{dot(out, R), abs_dot(out, R)};
    };
    loss();
    Vec dqkv(qkv.size());
    attention_backward<double>(dqkv.data(), R.data(), qkv.data(), out.data(), lse.data(), c.B, c.T,
                               c.C, c.NH);
    check_grad("qkv", qkv, dqkv, loss);
  }
}

TEST(GradCheck, ClassifierCrossEntropy) {
  struct Case {
    int N, C, V;
  };
  // The second case spans two row chunks (256 rows each).
  for (const Case& c : {Case{5, 4, 7}, Case{258, 3, 5}}) {
    SCOPED_TRACE("N=" + std::to_string(c.N));
    Vec x = rand_vec((size_t)c.N * c.C, 16), w = rand_vec((size_t)c.V * c.C, 17),
        dloss = rand_vec(c.N, 18);
    std::vector<int32_t> targets(c.N);
    Rng r(777, 19);
    for (int i = 0; i < c.N; ++i)
      targets[i] = i % 4 == 1 ? -1 : (int32_t)r.below(c.V);  // some ignored
    Vec losses(c.N);
    auto loss = [&] {
      classifier_ce_forward<double>(losses.data(), nullptr, nullptr, x.data(), w.data(),
                                    targets.data(), nullptr, c.N, c.C, c.V);
      return std::pair{dot(losses, dloss), abs_dot(losses, dloss)};
    };
    Vec dx((size_t)c.N * c.C), dw((size_t)c.V * c.C, 0.0);
    classifier_ce_forward<double>(losses.data(), dx.data(), dw.data(), x.data(), w.data(),
                                  targets.data(), dloss.data(), c.N, c.C, c.V);
    for (int i = 0; i < c.N; ++i)
      if (targets[i] < 0) {
        EXPECT_EQ(losses[i], 0.0) << "ignored row " << i;
      }
    check_grad("x", x, dx, loss);
    check_grad("w", w, dw, loss);
  }
}

TEST(GradCheck, Rmsnorm) {
  const int N = 3, C = 7;
  Vec inp = rand_vec(N * C, 20, -1.0, 2.0), w = rand_vec(C, 21), R = rand_vec(N * C, 22);
  Vec out(N * C), rstd(N);
  auto loss = [&] {
    rmsnorm_forward<double>(out.data(), rstd.data(), inp.data(), w.data(), N, C, 1e-5f);
    return std::pair{dot(out, R), abs_dot(out, R)};
  };
  loss();
  Vec dinp(N * C, 0.0), dw(C, 0.0);  // both accumulate: start at 0
  rmsnorm_backward<double>(dinp.data(), dw.data(), R.data(), inp.data(), w.data(), rstd.data(), N,
                           C);
  check_grad("inp", inp, dinp, loss);
  check_grad("w", w, dw, loss);
}

TEST(GradCheck, Rope) {
  for (bool interleaved : {true, false}) {
    SCOPED_TRACE(interleaved ? "interleaved" : "rotate-half");
    const int B = 2, T = 5, NH = 2, hs = 6;
    const size_t n = (size_t)B * T * NH * hs;
    Vec inp = rand_vec(n, 23), R = rand_vec(n, 24), out(n);
    const auto f = rope_inv_freq(hs, 10000.0);
    auto loss = [&] {
      rope_forward<double>(out.data(), inp.data(), B, T, NH, hs, f.data(), interleaved, 3);
      return std::pair{dot(out, R), abs_dot(out, R)};
    };
    Vec dinp(n);
    rope_backward<double>(dinp.data(), R.data(), B, T, NH, hs, f.data(), interleaved, 3);
    check_grad("inp", inp, dinp, loss);
  }
}

TEST(GradCheck, Swiglu) {
  const size_t n = 41;
  Vec gate = rand_vec(n, 25, -6.0, 6.0), up = rand_vec(n, 26), R = rand_vec(n, 27), out(n);
  gate[0] = 0.0;
  auto loss = [&] {
    swiglu_forward<double>(out.data(), gate.data(), up.data(), n);
    return std::pair{dot(out, R), abs_dot(out, R)};
  };
  Vec dgate(n), dup(n);
  swiglu_backward<double>(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), n);
  check_grad("gate", gate, dgate, loss);
  check_grad("up", up, dup, loss);
}

TEST(GradCheck, AttentionGqa) {
  struct Case {
    int B, T, NH, KVH, hs;
  };
  // GQA (4 heads, 2 kv heads); MQA spanning two query-row blocks with a partial last one; MHA.
  for (const Case& c : {Case{2, 5, 4, 2, 3}, Case{1, 66, 2, 1, 2}, Case{1, 4, 2, 2, 2}}) {
    SCOPED_TRACE("T=" + std::to_string(c.T) + " NH=" + std::to_string(c.NH) +
                 " KVH=" + std::to_string(c.KVH));
    const size_t nq = (size_t)c.B * c.T * c.NH * c.hs, nk = (size_t)c.B * c.T * c.KVH * c.hs;
    Vec q = rand_vec(nq, 28), k = rand_vec(nk, 29), v = rand_vec(nk, 30), R = rand_vec(nq, 31);
    Vec out(nq), lse((size_t)c.B * c.NH * c.T);
    auto loss = [&] {
      attention_gqa_forward<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), c.B, c.T,
                                    c.NH, c.KVH, c.hs);
      return std::pair{dot(out, R), abs_dot(out, R)};
    };
    loss();
    Vec dq(nq), dk(nk), dv(nk);
    attention_gqa_backward<double>(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(),
                                   v.data(), out.data(), lse.data(), c.B, c.T, c.NH, c.KVH, c.hs);
    check_grad("q", q, dq, loss);
    check_grad("k", k, dk, loss);
    check_grad("v", v, dv, loss);
  }
}

}  // namespace
}  // namespace lmf::ops
