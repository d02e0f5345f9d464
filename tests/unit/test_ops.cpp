// One table-driven test for the CPU ops: every case runs the fast op (ops.h) in float against
// the plain reference (ops/reference.h) in double, forward and backward, and then the fast op's
// double instantiation against the same reference.
//
// Inputs are drawn in double and rounded to float, so both sides see the same values and every
// difference comes from the fast op's arithmetic.
//
// Tolerances are derived, not tuned. For a sum of K rounded terms the probabilistic bound of
// Higham & Mary ("A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput.
// 2019, Thm. 3.1) gives |computed - exact| <= lambda * sqrt(K) * u * sum|terms|, failing with
// probability at most about 2 K exp(-lambda^2 / 2) per output; lambda = 6 keeps that below 1e-4
// for the largest K here (50257). We write gamma(K) = lambda * sqrt(K) * u, with u the fast
// type's epsilon (twice the unit roundoff: conservative) and, for double-vs-double, 2 eps (both
// sides round). sum|terms| is bounded per op from the inputs' max magnitudes (e.g. C * max|x| *
// max|w| for a dot product of length C); composite ops (layernorm, attention, cross-entropy)
// chain these bounds through their formulas, each derivation written beside its check.
// Transcendentals (the float path's own exp and tanh) count as 16 rounded operations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numbers>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/rng.h"
#include "ops/backend.h"
#include "ops/cpu/blas.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "op_tolerance.h"

namespace lmf::ops {
namespace {

using Shape = std::vector<int>;
using test::max_abs;
using test::rand_tokens;
using test::rand_vec;
using test::Tol;
using test::Vec;

template <class T>
Tol tol_for() {
  const double eps = std::numeric_limits<T>::epsilon();
  return Tol{std::is_same_v<T, double> ? 2 * eps : eps};
}

template <class T>
std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <class T>
std::vector<T> nans(size_t n) {  // for outputs that must be assigned, not accumulated
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

// Max error with a per-element tolerance; a NaN anywhere fails.
template <class T>
void expect_close(const char* what, const std::vector<T>& got, const Vec& want, const Vec& tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst_ratio = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs((double)got[i] - want[i]);
    const double ratio = std::isnan(e) ? std::numeric_limits<double>::infinity() : e / tol[i];
    if (ratio > worst_ratio || (tol[i] == 0 && e > 0)) {
      worst_ratio = tol[i] == 0 && e > 0 ? std::numeric_limits<double>::infinity() : ratio;
      at = i;
    }
  }
  EXPECT_LE(worst_ratio, 1.0) << what << ": at index " << at << " got " << (double)got[at]
                              << " want " << want[at] << " (|diff| "
                              << std::abs((double)got[at] - want[at]) << ", tol " << tol[at] << ")";
}
template <class T>
void expect_close(const char* what, const std::vector<T>& got, const Vec& want, double tol) {
  expect_close(what, got, want, Vec(want.size(), tol));
}

// ---- matmul: out = inp @ w^T + bias -------------------------------------------------------------
template <class T>
void check_matmul(const Shape& s) {
  const int N = s[0], C = s[1], OC = s[2];
  const Tol t = tol_for<T>();
  const Vec inp = rand_vec((size_t)N * C, 1), w = rand_vec((size_t)OC * C, 2),
            bias = rand_vec(OC, 3), dout = rand_vec((size_t)N * OC, 4),
            dw0 = rand_vec((size_t)OC * C, 5), db0 = rand_vec(OC, 6);
  const double A = max_abs(inp), W = max_abs(w), G = max_abs(dout);
  for (bool with_bias : {true, false}) {  // both branches: bias / dbias / dinp present or null
    SCOPED_TRACE(with_bias ? "with bias" : "without bias, dinp = nullptr");
    Vec out_r((size_t)N * OC);
    ref::matmul_forward(out_r.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N, C,
                        OC);
    auto inp_t = cast<T>(inp), w_t = cast<T>(w), bias_t = cast<T>(bias), dout_t = cast<T>(dout);
    auto out_t = nans<T>(out_r.size());
    matmul_forward<T>(out_t.data(), inp_t.data(), w_t.data(), with_bias ? bias_t.data() : nullptr,
                      N, C, OC);
    // A dot product of length C plus the bias.
    expect_close("out", out_t, out_r,
                 t.gamma(C + 1) * (C * A * W + (with_bias ? max_abs(bias) : 0)));

    Vec dinp_r((size_t)N * C), dw_r = dw0, db_r = db0;
    ref::matmul_backward(dinp_r.data(), dw_r.data(), with_bias ? db_r.data() : nullptr, dout.data(),
                         inp.data(), w.data(), N, C, OC);
    auto dinp_t = nans<T>(dinp_r.size());
    auto dw_t = cast<T>(dw0), db_t = cast<T>(db0);
    matmul_backward<T>(with_bias ? dinp_t.data() : nullptr, dw_t.data(),
                       with_bias ? db_t.data() : nullptr, dout_t.data(), inp_t.data(), w_t.data(),
                       N, C, OC);
    if (with_bias) expect_close("dinp", dinp_t, dinp_r, t.gamma(OC) * OC * G * W);
    // Sums over N rows, plus the value accumulated onto.
    expect_close("dw", dw_t, dw_r, t.gamma(N + 1) * (N * G * A + max_abs(dw0)));
    expect_close("dbias", db_t, db_r, with_bias ? t.gamma(N + 1) * (N * G + max_abs(db0)) : 0.0);
  }
}

// ---- encoder: out = wte[tokens] + wpe[t]; shape (B, T, C, V, no position table)
// ----------------------------------------------------------
template <class T>
void check_encoder(const Shape& s) {
  const int B = s[0], T_ = s[1], C = s[2], V = s[3];
  const bool no_pos = s.size() > 4 && s[4] != 0;  // RoPE models: token rows alone
  const Tol t = tol_for<T>();
  const auto tokens = rand_tokens((size_t)B * T_, V, 7);
  const Vec wte = rand_vec((size_t)V * C, 8), wpe = rand_vec((size_t)T_ * C, 9),
            dout = rand_vec((size_t)B * T_ * C, 10), dwte0 = rand_vec(wte.size(), 11),
            dwpe0 = rand_vec(wpe.size(), 12);
  Vec out_r((size_t)B * T_ * C);
  ref::encoder_forward(out_r.data(), tokens.data(), wte.data(), no_pos ? nullptr : wpe.data(), B, T_, C);
  auto wte_t = cast<T>(wte), wpe_t = cast<T>(wpe), dout_t = cast<T>(dout);
  auto out_t = nans<T>(out_r.size());
  encoder_forward<T>(out_t.data(), tokens.data(), wte_t.data(), no_pos ? nullptr : wpe_t.data(), B, T_, C);
  expect_close("out", out_t, out_r, t.gamma(2) * (max_abs(wte) + max_abs(wpe)));

  Vec dwte_r = dwte0, dwpe_r = dwpe0;
  ref::encoder_backward(dwte_r.data(), no_pos ? nullptr : dwpe_r.data(), dout.data(), tokens.data(), B, T_, C);
  auto dwte_t = cast<T>(dwte0), dwpe_t = cast<T>(dwpe0);
  encoder_backward<T>(dwte_t.data(), no_pos ? nullptr : dwpe_t.data(), dout_t.data(), tokens.data(), B, T_, C);
  const double G = max_abs(dout);
  // A token's row sums as many gradients as the token occurs; a position's row sums B.
  std::vector<int> count(V, 0);
  for (int32_t tok : tokens) ++count[tok];
  const int K = *std::max_element(count.begin(), count.end());
  expect_close("dwte", dwte_t, dwte_r, t.gamma(K + 1) * (K * G + max_abs(dwte0)));
  expect_close("dwpe", dwpe_t, dwpe_r, t.gamma(B + 1) * (B * G + max_abs(dwpe0)));
}

// ---- layernorm
// -------------------------------------------------------------------------------------
template <class T>
void check_layernorm(const Shape& s) {
  const int N = s[0], C = s[1];
  const Tol t = tol_for<T>();
  // Inputs centred at 2: the mean is large against the spread, as for a residual stream.
  const Vec x = rand_vec((size_t)N * C, 13, 1.0, 3.0), w = rand_vec(C, 14), b = rand_vec(C, 15),
            dout = rand_vec((size_t)N * C, 16), dinp0 = rand_vec((size_t)N * C, 17),
            dw0 = rand_vec(C, 18), db0 = rand_vec(C, 19);
  Vec out_r(x.size()), mean_r(N), rstd_r(N);
  ref::layernorm_forward(out_r.data(), mean_r.data(), rstd_r.data(), x.data(), w.data(), b.data(),
                         N, C);
  auto x_t = cast<T>(x), w_t = cast<T>(w), b_t = cast<T>(b), dout_t = cast<T>(dout);
  auto out_t = nans<T>(x.size()), mean_t = nans<T>(N), rstd_t = nans<T>(N);
  layernorm_forward<T>(out_t.data(), mean_t.data(), rstd_t.data(), x_t.data(), w_t.data(),
                       b_t.data(), N, C);
  const double X = max_abs(x), W = max_abs(w), Bm = max_abs(b), G = max_abs(dout),
               r = max_abs(rstd_r);
  double nu = 0;  // max |normalised value|
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c)
      nu = std::max(nu, std::abs(x[(size_t)i * C + c] - mean_r[i]) * rstd_r[i]);
  // mean: a sum of C terms <= X. var + eps: relative error gamma(C) nu^2 (its terms are <= d^2 =
  // nu^2 (var + eps)); rstd halves it. norm = (x - mean) rstd inherits mean's error times rstd
  // and rstd's relative error times nu.
  const double tol_mean = t.gamma(C) * X, tol_rstd = r * (0.5 * t.gamma(C) * nu * nu + t.gamma(4));
  const double dnorm = t.gamma(C) * (X * r + 0.5 * nu * nu * nu) + t.gamma(4) * nu;
  expect_close("mean", mean_t, mean_r, tol_mean);
  expect_close("rstd", rstd_t, rstd_r, tol_rstd);
  expect_close("out", out_t, out_r, W * dnorm + t.gamma(3) * (nu * W + Bm));

  // Each backward runs on its own forward's mean and rstd.
  Vec dinp_r = dinp0, dw_r = dw0, db_r = db0;
  ref::layernorm_backward(dinp_r.data(), dw_r.data(), db_r.data(), dout.data(), x.data(), w.data(),
                          mean_r.data(), rstd_r.data(), N, C);
  auto dinp_t = cast<T>(dinp0), dw_t = cast<T>(dw0), db_t = cast<T>(db0);
  layernorm_backward<T>(dinp_t.data(), dw_t.data(), db_t.data(), dout_t.data(), x_t.data(),
                        w_t.data(), mean_t.data(), rstd_t.data(), N, C);
  // dinp = (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) rstd with |dnorm| <= g = W G: the two
  // means are sums of C terms <= g and <= g nu; norm's error enters twice (factor and inside the
  // second mean); the bracket, <= g (2 + nu^2), carries rstd's relative error; then one add.
  const double g = W * G, bracket = g * (2 + nu * nu);
  const double tol_dinp = r * (t.gamma(C) * g * (1 + nu * nu) + 2 * nu * g * dnorm +
                               bracket * (0.5 * t.gamma(C) * nu * nu + t.gamma(4))) +
                          t.gamma(1) * (max_abs(dinp0) + r * bracket);
  expect_close("dinp", dinp_t, dinp_r, tol_dinp);
  expect_close("dw", dw_t, dw_r, t.gamma(N + 1) * (N * nu * G + max_abs(dw0)) + N * G * dnorm);
  expect_close("db", db_t, db_r, t.gamma(N + 1) * (N * G + max_abs(db0)));
}

// ---- gelu (per-element tolerances: pointwise, no reduction)
// ------------------------------------------
template <class T>
void check_gelu(const Shape& s) {
  const size_t n = (size_t)s[0];
  const Tol t = tol_for<T>();
  const Vec x = rand_vec(n, 20, -6.0, 6.0), dout = rand_vec(n, 21);
  Vec out_r(n), dinp_r(n);
  ref::gelu_forward(out_r.data(), x.data(), n);
  ref::gelu_backward(dinp_r.data(), x.data(), dout.data(), n);
  auto x_t = cast<T>(x), dout_t = cast<T>(dout);
  auto out_t = nans<T>(n), dinp_t = nans<T>(n);
  gelu_forward<T>(out_t.data(), x_t.data(), n);
  gelu_backward<T>(dinp_t.data(), x_t.data(), dout_t.data(), n);
  const auto tol = test::gelu_tolerance(x, dout, out_r, t);  // derivation in op_tolerance.h
  const Vec &tol_out = tol.out, &tol_dinp = tol.dinp;
  expect_close("out", out_t, out_r, tol_out);
  expect_close("dinp", dinp_t, dinp_r, tol_dinp);
}

template <class T>
void check_residual(const Shape& s) {
  const size_t n = (size_t)s[0];
  const Vec a = rand_vec(n, 22), b = rand_vec(n, 23);
  Vec out_r(n);
  ref::residual_forward(out_r.data(), a.data(), b.data(), n);
  auto a_t = cast<T>(a), b_t = cast<T>(b);
  auto out_t = nans<T>(n);
  residual_forward<T>(out_t.data(), a_t.data(), b_t.data(), n);
  expect_close("out", out_t, out_r, tol_for<T>().gamma(1) * (max_abs(a) + max_abs(b)));
}

// ---- residual + norm, fused
// -----------------------------------------------------------------------------
// The fused ops' specification is the composition (ops.h): the same bits as residual_forward
// then the norm, out of place and in place (res == a), in float and in double.
template <class T>
void expect_same_bits(const char* what, const std::vector<T>& got, const std::vector<T>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": first at " << first << ": " << got[first] << " vs " << want[first];
}

template <class T>
void check_residual_layernorm(const Shape& s) {
  const int N = s[0], C = s[1];
  const size_t n = size_t(N) * C;
  const auto a = cast<T>(rand_vec(n, 40, 1.0, 3.0)), b = cast<T>(rand_vec(n, 41)), w = cast<T>(rand_vec(size_t(C), 42)),
             bias = cast<T>(rand_vec(size_t(C), 43));
  auto res = nans<T>(n), out = nans<T>(n), mean = nans<T>(size_t(N)), rstd = nans<T>(size_t(N));
  residual_forward<T>(res.data(), a.data(), b.data(), n);
  layernorm_forward<T>(out.data(), mean.data(), rstd.data(), res.data(), w.data(), bias.data(), N, C);
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "out of place");
    auto f_res = in_place ? a : nans<T>(n), f_out = nans<T>(n), f_mean = nans<T>(size_t(N)),
         f_rstd = nans<T>(size_t(N));
    residual_layernorm_forward<T>(f_res.data(), f_out.data(), f_mean.data(), f_rstd.data(),
                                  in_place ? f_res.data() : a.data(), b.data(), w.data(), bias.data(), N, C);
    expect_same_bits("res", f_res, res);
    expect_same_bits("out", f_out, out);
    expect_same_bits("mean", f_mean, mean);
    expect_same_bits("rstd", f_rstd, rstd);
  }
}

template <class T>
void check_residual_rmsnorm(const Shape& s) {
  const int N = s[0], C = s[1];
  const size_t n = size_t(N) * C;
  const float eps = 1e-5f;
  const auto a = cast<T>(rand_vec(n, 44, 0.5, 1.5)), b = cast<T>(rand_vec(n, 45)), w = cast<T>(rand_vec(size_t(C), 46));
  auto res = nans<T>(n), out = nans<T>(n), rstd = nans<T>(size_t(N));
  residual_forward<T>(res.data(), a.data(), b.data(), n);
  rmsnorm_forward<T>(out.data(), rstd.data(), res.data(), w.data(), N, C, eps);
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "out of place");
    auto f_res = in_place ? a : nans<T>(n), f_out = nans<T>(n), f_rstd = nans<T>(size_t(N));
    residual_rmsnorm_forward<T>(f_res.data(), f_out.data(), f_rstd.data(), in_place ? f_res.data() : a.data(),
                                b.data(), w.data(), N, C, eps);
    expect_same_bits("res", f_res, res);
    expect_same_bits("out", f_out, out);
    expect_same_bits("rstd", f_rstd, rstd);
  }
}

// ---- the MLP's GEMMs fused with GELU (ops::Backend::matmul_gelu_forward, matmul_dgelu_backward)
// On the CPU each is its table's GEMM then GELU: the same bits as the two ops in turn, for every
// matmul-precision table, the accumulating dw and dbias included.
template <class T>
void check_matmul_gelu_table(const Backend<T>& be, const Shape& s) {
  const int N = s[0], C = s[1], OC = s[2];
  const auto inp = cast<T>(rand_vec(size_t(N) * C, 80)), w = cast<T>(rand_vec(size_t(OC) * C, 81)),
             bias = cast<T>(rand_vec(size_t(OC), 82)), dout = cast<T>(rand_vec(size_t(N) * OC, 83)),
             pre_in = cast<T>(rand_vec(size_t(N) * C, 84, -4.0, 4.0)), dw0 = cast<T>(rand_vec(size_t(OC) * C, 85)),
             db0 = cast<T>(rand_vec(size_t(OC), 86));
  auto out = nans<T>(size_t(N) * OC), pre = nans<T>(size_t(N) * OC), want_out = out, want_pre = pre;
  be.matmul_forward(want_pre.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  be.gelu_forward(want_out.data(), want_pre.data(), want_out.size());
  be.matmul_gelu_forward(out.data(), pre.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  expect_same_bits("pre", pre, want_pre);
  expect_same_bits("out", out, want_out);

  auto dinp = nans<T>(size_t(N) * C), want_dinp = dinp;
  auto dw = dw0, db = db0, want_dw = dw0, want_db = db0;
  be.matmul_backward(want_dinp.data(), want_dw.data(), want_db.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  be.gelu_backward(want_dinp.data(), pre_in.data(), want_dinp.data(), want_dinp.size());
  be.matmul_dgelu_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), pre_in.data(), N, C,
                           OC);
  expect_same_bits("dinp", dinp, want_dinp);
  expect_same_bits("dw", dw, want_dw);
  expect_same_bits("db", db, want_db);
}

template <class T>
void check_matmul_gelu(const Shape& s) {
  check_matmul_gelu_table<T>(cpu_backend<T>(), s);
  if constexpr (std::is_same_v<T, float>) {
    for (MatmulPrecision p : {MatmulPrecision::tf32, MatmulPrecision::bf16}) {
      SCOPED_TRACE(to_string(p));
      check_matmul_gelu_table<float>(cpu_backend<float>(p), s);
    }
  }
}

// ---- attention
// -------------------------------------------------------------------------------------
template <class T>
void check_attention(const Shape& s) {
  const int B = s[0], T_ = s[1], C = s[2], NH = s[3], hs = C / NH;
  const Tol t = tol_for<T>();
  const Vec qkv = rand_vec((size_t)B * T_ * 3 * C, 24), dout = rand_vec((size_t)B * T_ * C, 25);
  Vec out_r((size_t)B * T_ * C), lse_r((size_t)B * NH * T_);
  ref::attention_forward(out_r.data(), lse_r.data(), qkv.data(), B, T_, C, NH);
  auto qkv_t = cast<T>(qkv), dout_t = cast<T>(dout);
  auto out_t = nans<T>(out_r.size()), lse_t = nans<T>(lse_r.size());
  attention_forward<T>(out_t.data(), lse_t.data(), qkv_t.data(), B, T_, C, NH);

  Vec dqkv_r(qkv.size());
  ref::attention_backward(dqkv_r.data(), dout.data(), qkv.data(), out_r.data(), lse_r.data(), B, T_,
                          C, NH);
  auto dqkv_t = nans<T>(qkv.size());
  attention_backward<T>(dqkv_t.data(), dout_t.data(), qkv_t.data(), out_t.data(), lse_t.data(), B,
                        T_, C, NH);

  // The bounds of attention with q, k, v apart (op_tolerance.h, derivation there), put back in
  // the packed layout.
  const size_t BT = (size_t)B * T_;
  const auto sep = test::split_qkv(qkv, BT, C);
  const auto tol = test::attention_tolerance(sep.q, sep.k, sep.v, dout, out_r, lse_r, B, T_, NH, NH, hs, t);
  const Vec& tol_out = tol.out;
  const Vec& tol_lse = tol.lse;
  const Vec tol_d = test::join_qkv(tol.dq, tol.dk, tol.dv, BT, C);
  expect_close("out", out_t, out_r, tol_out);
  expect_close("lse", lse_t, lse_r, tol_lse);
  expect_close("dqkv", dqkv_t, dqkv_r, tol_d);
}

// ---- Llama family
// ----------------------------------------------------------------------------------

// rmsnorm (eps 1e-5)
template <class T>
void check_rmsnorm(const Shape& s) {
  const int N = s[0], C = s[1];
  const float eps = 1e-5f;
  const Tol t = tol_for<T>();
  // Inputs off-centre, as for a residual stream. A third shape entry shrinks them to ~1e-3, where
  // mean(x^2) ~ 1e-6 is below eps, so a kernel that dropped or misplaced eps would fail.
  const double amp = s.size() > 2 ? 1e-3 : 1.0;
  const Vec x = rand_vec((size_t)N * C, 40, -1.0 * amp, 3.0 * amp), w = rand_vec(C, 41),
            dout = rand_vec((size_t)N * C, 42), dinp0 = rand_vec((size_t)N * C, 43),
            dw0 = rand_vec(C, 44);
  Vec out_r(x.size()), rstd_r(N);
  ref::rmsnorm_forward(out_r.data(), rstd_r.data(), x.data(), w.data(), N, C, eps);
  auto x_t = cast<T>(x), w_t = cast<T>(w), dout_t = cast<T>(dout);
  auto out_t = nans<T>(x.size()), rstd_t = nans<T>(N);
  rmsnorm_forward<T>(out_t.data(), rstd_t.data(), x_t.data(), w_t.data(), N, C, eps);
  const double W = max_abs(w), G = max_abs(dout), r = max_abs(rstd_r);
  double nu = 0;  // max |normalised value|
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) nu = std::max(nu, std::abs(x[(size_t)i * C + c]) * rstd_r[i]);
  // mean(x^2): C non-negative rounded products summed, relative error gamma(C + 1); then /C, +eps,
  // sqrt (halves it), 1/: rstd's relative error rel_r. norm = x rstd inherits it, out = norm w
  // adds two roundings.
  const double rel_r = 0.5 * t.gamma(C + 1) + t.gamma(4);
  expect_close("rstd", rstd_t, rstd_r, r * rel_r);
  expect_close("out", out_t, out_r, W * nu * (rel_r + t.gamma(2)));

  Vec dinp_r = dinp0, dw_r = dw0;
  ref::rmsnorm_backward(dinp_r.data(), dw_r.data(), dout.data(), x.data(), w.data(), rstd_r.data(),
                        N, C);
  auto dinp_t = cast<T>(dinp0), dw_t = cast<T>(dw0);
  rmsnorm_backward<T>(dinp_t.data(), dw_t.data(), dout_t.data(), x_t.data(), w_t.data(),
                      rstd_t.data(), N, C);
  // dinp = (dnorm - norm * M) rstd, dnorm = w dout (|dnorm| <= g = W G), M = mean(dnorm * norm)
  // (|M| <= g nu): M sums C products of three factors, norm's relative error rel_r in each;
  // the bracket (<= g (1 + nu^2)) gets norm's error twice (factor and inside M), four roundings,
  // and carries rstd's relative error; then the add onto dinp0.
  const double g = W * G, bracket = g * (1 + nu * nu);
  const double e_m = g * nu * (t.gamma(C + 3) + rel_r);
  const double e_bracket = t.gamma(4) * bracket + nu * e_m + g * nu * nu * rel_r;
  expect_close("dinp", dinp_t, dinp_r,
               r * (e_bracket + bracket * rel_r) + t.gamma(1) * (max_abs(dinp0) + r * bracket));
  expect_close("dw", dw_t, dw_r, t.gamma(N + 2) * (N * nu * G + max_abs(dw0)) + N * G * nu * rel_r);
}

// rope: shape (B, T, NH, hs, interleaved, pos0)
template <class T>
void check_rope(const Shape& s) {
  const int B = s[0], T_ = s[1], NH = s[2], hs = s[3], pos0 = s[5];
  const bool interleaved = s[4] != 0;
  const auto inv_freq = rope_inv_freq(hs, 10000.0);
  const double* f = inv_freq.data();
  const size_t n = (size_t)B * T_ * NH * hs;
  const Vec x = rand_vec(n, 45), dout = rand_vec(n, 46);
  Vec out_r(n), dinp_r(n);
  ref::rope_forward(out_r.data(), x.data(), B, T_, NH, hs, f, interleaved, pos0);
  ref::rope_backward(dinp_r.data(), dout.data(), B, T_, NH, hs, f, interleaved, pos0);
  auto x_t = cast<T>(x), dout_t = cast<T>(dout);
  auto out_t = nans<T>(n), dinp_t = nans<T>(n);
  rope_forward<T>(out_t.data(), x_t.data(), B, T_, NH, hs, f, interleaved, pos0);
  rope_backward<T>(dinp_t.data(), dout_t.data(), B, T_, NH, hs, f, interleaved, pos0);
  // y = a cos - b sin (or a sin + b cos) with |cos|, |sin| <= 1: cos and sin rounded once to T
  // (from double), two products and one add: gamma(4) (|a| + |b|) <= gamma(4) 2 max|x|.
  const Tol t = tol_for<T>();
  expect_close("out", out_t, out_r, t.gamma(4) * 2 * max_abs(x));
  expect_close("dinp", dinp_t, dinp_r, t.gamma(4) * 2 * max_abs(dout));
  // In place (out == inp) is the same arithmetic: bitwise equal.
  auto io = x_t;
  rope_forward<T>(io.data(), io.data(), B, T_, NH, hs, f, interleaved, pos0);
  EXPECT_TRUE(io == out_t) << "in-place forward differs";
  io = dout_t;
  rope_backward<T>(io.data(), io.data(), B, T_, NH, hs, f, interleaved, pos0);
  EXPECT_TRUE(io == dinp_t) << "in-place backward differs";
}

// swiglu (per-element tolerances: pointwise)
template <class T>
void check_swiglu(const Shape& s) {
  const size_t n = (size_t)s[0];
  const Tol t = tol_for<T>();
  const Vec gate = rand_vec(n, 47, -8.0, 8.0), up = rand_vec(n, 48), dout = rand_vec(n, 49);
  Vec out_r(n), dgate_r(n), dup_r(n);
  ref::swiglu_forward(out_r.data(), gate.data(), up.data(), n);
  ref::swiglu_backward(dgate_r.data(), dup_r.data(), dout.data(), gate.data(), up.data(), n);
  auto gate_t = cast<T>(gate), up_t = cast<T>(up), dout_t = cast<T>(dout);
  auto out_t = nans<T>(n), dgate_t = nans<T>(n), dup_t = nans<T>(n);
  swiglu_forward<T>(out_t.data(), gate_t.data(), up_t.data(), n);
  swiglu_backward<T>(dgate_t.data(), dup_t.data(), dout_t.data(), gate_t.data(), up_t.data(), n);
  Vec tol_out(n), tol_dgate(n), tol_dup(n);
  for (size_t i = 0; i < n; ++i) {
    const double g = gate[i], sg = 1 / (1 + std::exp(-g)), ag = std::abs(g);
    // sigmoid = 1 / (1 + e): e's relative error (exp: 16 roundings) shrinks through 1 + e, then
    // two roundings: relative error gamma(18) on s. silu, out: two more products.
    const double es = t.gamma(18) * sg;
    tol_out[i] = t.gamma(20) * std::abs(out_r[i]);
    tol_dup[i] = t.gamma(20) * std::abs(dup_r[i]);
    // silu' = s + g s (1 - s): s's error enters s, g s and (1 - s) (absolutely: cancellation
    // as s -> 1), plus the formula's four roundings; then two products with dout and up.
    const double dsilu = sg + ag * sg * (1 - sg);
    const double e_dsilu = es * (1 + ag * (1 - sg) + ag * sg) + t.gamma(4) * dsilu;
    tol_dgate[i] = std::abs(dout[i] * up[i]) * (e_dsilu + t.gamma(2) * dsilu);
  }
  expect_close("out", out_t, out_r, tol_out);
  expect_close("dgate", dgate_t, dgate_r, tol_dgate);
  expect_close("dup", dup_t, dup_r, tol_dup);
}

// attention_gqa: shape (B, T, NH, KVH, hs)
template <class T>
void check_attention_gqa(const Shape& s) {
  const int B = s[0], T_ = s[1], NH = s[2], KVH = s[3], hs = s[4];
  const int C = NH * hs, KC = KVH * hs;
  const Tol t = tol_for<T>();
  const Vec q = rand_vec((size_t)B * T_ * C, 50), k = rand_vec((size_t)B * T_ * KC, 51),
            v = rand_vec((size_t)B * T_ * KC, 52), dout = rand_vec((size_t)B * T_ * C, 53);
  Vec out_r(q.size()), lse_r((size_t)B * NH * T_);
  ref::attention_gqa_forward(out_r.data(), lse_r.data(), q.data(), k.data(), v.data(), B, T_, NH,
                             KVH, hs);
  auto q_t = cast<T>(q), k_t = cast<T>(k), v_t = cast<T>(v), dout_t = cast<T>(dout);
  auto out_t = nans<T>(out_r.size()), lse_t = nans<T>(lse_r.size());
  attention_gqa_forward<T>(out_t.data(), lse_t.data(), q_t.data(), k_t.data(), v_t.data(), B, T_,
                           NH, KVH, hs);
  Vec dq_r(q.size()), dk_r(k.size()), dv_r(v.size());
  ref::attention_gqa_backward(dq_r.data(), dk_r.data(), dv_r.data(), dout.data(), q.data(),
                              k.data(), v.data(), out_r.data(), lse_r.data(), B, T_, NH, KVH, hs);
  auto dq_t = nans<T>(q.size()), dk_t = nans<T>(k.size()), dv_t = nans<T>(v.size());
  attention_gqa_backward<T>(dq_t.data(), dk_t.data(), dv_t.data(), dout_t.data(), q_t.data(),
                            k_t.data(), v_t.data(), out_t.data(), lse_t.data(), B, T_, NH, KVH, hs);

  // Derivation in op_tolerance.h.
  const auto tol = test::attention_tolerance(q, k, v, dout, out_r, lse_r, B, T_, NH, KVH, hs, t);
  const Vec &tol_out = tol.out, &tol_lse = tol.lse, &tol_dq = tol.dq, &tol_dk = tol.dk, &tol_dv = tol.dv;
  expect_close("out", out_t, out_r, tol_out);
  expect_close("lse", lse_t, lse_r, tol_lse);
  expect_close("dq", dq_t, dq_r, tol_dq);
  expect_close("dk", dk_t, dk_r, tol_dk);
  expect_close("dv", dv_t, dv_r, tol_dv);
}

// ---- classifier + cross-entropy
// ----------------------------------------------------------------------
template <class T>
void check_classifier(const Shape& s) {
  const int N = s[0], C = s[1], V = s[2];
  const Tol t = tol_for<T>();
  const Vec x = rand_vec((size_t)N * C, 26), w = rand_vec((size_t)V * C, 27),
            dloss = rand_vec(N, 28), dw0 = rand_vec((size_t)V * C, 29);
  auto targets = rand_tokens(N, V, 30);
  for (int i = 3; i < N; i += 5) targets[i] = -1;  // ignored rows
  Vec losses_r(N), dx_r((size_t)N * C), dw_r = dw0;
  const double total_r =
      ref::classifier_ce_forward(losses_r.data(), dx_r.data(), dw_r.data(), x.data(), w.data(),
                                 targets.data(), dloss.data(), N, C, V);
  // Derivation in op_tolerance.h.
  const auto tol = test::classifier_tolerance(x, w, targets, dloss, dw0, losses_r, N, C, V, t);
  const Vec &tol_loss = tol.loss, &tol_dx = tol.dx, &tol_dw = tol.dw, &tol_logits = tol.logits;
  const double tol_total = tol.total;

  auto x_t = cast<T>(x), w_t = cast<T>(w), dloss_t = cast<T>(dloss);
  for (bool grad : {true, false}) {  // the fused backward, and the forward-only path
    SCOPED_TRACE(grad ? "with backward" : "forward only");
    auto losses_t = nans<T>(N), dx_t = nans<T>((size_t)N * C);
    auto dw_t = cast<T>(dw0);
    const double total_t = classifier_ce_forward<T>(
        losses_t.data(), grad ? dx_t.data() : nullptr, grad ? dw_t.data() : nullptr, x_t.data(),
        w_t.data(), targets.data(), grad ? dloss_t.data() : nullptr, N, C, V);
    expect_close("losses", losses_t, losses_r, tol_loss);
    EXPECT_LE(std::abs(total_t - total_r), tol_total) << "sum of losses";
    if (grad) {
      expect_close("dx", dx_t, dx_r, tol_dx);
      expect_close("dw", dw_t, dw_r, tol_dw);
    }
  }
  Vec logits_r((size_t)N * V);
  ref::classifier_logits(logits_r.data(), x.data(), w.data(), N, C, V);
  auto logits_t = nans<T>(logits_r.size());
  classifier_logits<T>(logits_t.data(), x_t.data(), w_t.data(), N, C, V);
  expect_close("logits", logits_t, logits_r, tol_logits);
}

// attention_decode: shape (T, NH, KVH, hs, B, shared). One query over T cached positions is the last
// row of causal attention over T rows whose last query is that one: the reference, and the bound,
// are attention_gqa's for that row, for each of the B sequences. Sequence b's rows [0, shared) are
// sequence 0's, and its own cache holds NaN there: the op must read them from sequence 0's. The
// cache rows are padded (ld = KVH hs + 3), as are the caches (seq) and the queries (q_ld), with 7s
// that must not be read either.
template <class T>
void check_attention_decode(const Shape& s) {
  const int T_ = s[0], NH = s[1], KVH = s[2], hs = s[3], B = s[4], shared = s[5];
  const int C = NH * hs, KC = KVH * hs, ld = KC + 3, q_ld = C + 2;
  const size_t seq = (size_t)T_ * ld + 5;
  std::vector<T> kp((B - 1) * seq + (size_t)T_ * ld, T(7)), vp(kp.size(), T(7)), q_t((size_t)B * q_ld, T(7));
  Vec want((size_t)B * C), tol_y((size_t)B * C), k0, v0;
  for (int b = 0; b < B; ++b) {
    const Vec q = rand_vec((size_t)T_ * C, 54 + 4 * b), dout = rand_vec((size_t)T_ * C, 57 + 4 * b);
    Vec k = rand_vec((size_t)T_ * KC, 55 + 4 * b), v = rand_vec((size_t)T_ * KC, 56 + 4 * b);
    if (b == 0) k0 = k, v0 = v;
    std::copy(k0.begin(), k0.begin() + (long)shared * KC, k.begin());  // the shared prefix
    std::copy(v0.begin(), v0.begin() + (long)shared * KC, v.begin());
    Vec out_r(q.size()), lse_r((size_t)NH * T_);
    ref::attention_gqa_forward(out_r.data(), lse_r.data(), q.data(), k.data(), v.data(), 1, T_, NH, KVH, hs);
    const auto tol = test::attention_tolerance(q, k, v, dout, out_r, lse_r, 1, T_, NH, KVH, hs, tol_for<T>());
    const size_t last = (size_t)(T_ - 1) * C;
    std::copy(out_r.begin() + (long)last, out_r.end(), want.begin() + (long)b * C);
    std::copy(tol.out.begin() + (long)last, tol.out.end(), tol_y.begin() + (long)b * C);
    for (int c = 0; c < C; ++c) q_t[(size_t)b * q_ld + c] = (T)q[last + c];
    for (int t = 0; t < T_; ++t)
      for (int c = 0; c < KC; ++c) {
        const bool read = b == 0 || t >= shared;
        kp[b * seq + (size_t)t * ld + c] = read ? (T)k[(size_t)t * KC + c] : std::numeric_limits<T>::quiet_NaN();
        vp[b * seq + (size_t)t * ld + c] = read ? (T)v[(size_t)t * KC + c] : std::numeric_limits<T>::quiet_NaN();
      }
  }
  auto y = nans<T>((size_t)B * C), scratch = nans<T>((size_t)B * NH * T_);
  const DecodeLayout lay{.B = B, .T = T_, .shared = shared, .ld = ld, .seq = seq, .q_ld = q_ld};
  attention_decode<T>(y.data(), scratch.data(), q_t.data(), kp.data(), vp.data(), lay, NH, KVH, hs);
  expect_close("y", y, want, tol_y);
}

// ---- optimizer kernels (float only)
// ----------------------------------------------------------------
void check_adamw(const Shape& s) {
  const size_t n = (size_t)s[0];
  const long step = s[1];
  const Tol t = tol_for<float>();
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const Vec p = rand_vec(n, 31), g = rand_vec(n, 32), m = rand_vec(n, 33, -0.1, 0.1),
            v = rand_vec(n, 34, 0.0, 0.01);
  Vec p_r = p, m_r = m, v_r = v;
  ref::adamw_update<double>(p_r.data(), g.data(), m_r.data(), v_r.data(), n, lr, b1, b2, eps, wd,
                            step);
  auto p_t = cast<float>(p), g_t = cast<float>(g), m_t = cast<float>(m), v_t = cast<float>(v);
  adamw_update(p_t.data(), g_t.data(), m_t.data(), v_t.data(), n, lr, b1, b2, eps, wd, step);
  Vec tol_p(n), tol_m(n), tol_v(n);
  const double b1c = 1 - std::pow((double)b1, step), b2c = 1 - std::pow((double)b2, step);
  for (size_t i = 0; i < n; ++i) {
    tol_m[i] = t.gamma(3) * (b1 * std::abs(m[i]) + (1 - b1) * std::abs(g[i]));
    tol_v[i] = t.gamma(4) * (b2 * v[i] + (1 - b2) * g[i] * g[i]);
    // The Adam step mhat / (sqrt(vhat) + eps) has ~8 roundings (incl. m, v and the corrections).
    const double step_mag = std::abs(m_r[i] / b1c) / (std::sqrt(v_r[i] / b2c) + eps);
    tol_p[i] = t.gamma(12) * (std::abs(p[i]) + lr * (step_mag + wd * std::abs(p[i])));
  }
  expect_close("m", m_t, m_r, tol_m);
  expect_close("v", v_t, v_r, tol_v);
  expect_close("p", p_t, p_r, tol_p);
}

void check_sum_squares(const Shape& s) {
  const size_t n = (size_t)s[0];
  const Vec x = rand_vec(n, 35);
  auto x_t = cast<float>(x);
  const double want = ref::sum_squares(x.data(), n);
  // Squares of floats are exact in double; both sides sum n of them in double.
  EXPECT_LE(std::abs(sum_squares(x_t.data(), n) - want), tol_for<double>().gamma(n) * want);
}

void check_scale(const Shape& s) {
  const size_t n = (size_t)s[0];
  const Vec x = rand_vec(n, 36);
  const float k = 0.37f;
  Vec x_r = x;
  ref::scale<double>(x_r.data(), k, n);
  auto x_t = cast<float>(x);
  scale(x_t.data(), k, n);
  expect_close("x", x_t, x_r, tol_for<float>().gamma(1) * max_abs(x) * k);
}

// ---- the table
// -----------------------------------------------------------------------------------
struct OpEntry {
  void (*f32)(const Shape&);
  void (*f64)(const Shape&);  // nullptr: the op is float-only
};
const std::map<std::string, OpEntry>& op_table() {
  static const std::map<std::string, OpEntry> t = {
      {"matmul", {check_matmul<float>, check_matmul<double>}},
      {"matmul_gelu", {check_matmul_gelu<float>, check_matmul_gelu<double>}},
      {"encoder", {check_encoder<float>, check_encoder<double>}},
      {"layernorm", {check_layernorm<float>, check_layernorm<double>}},
      {"gelu", {check_gelu<float>, check_gelu<double>}},
      {"residual", {check_residual<float>, check_residual<double>}},
      {"residual_layernorm", {check_residual_layernorm<float>, check_residual_layernorm<double>}},
      {"residual_rmsnorm", {check_residual_rmsnorm<float>, check_residual_rmsnorm<double>}},
      {"attention", {check_attention<float>, check_attention<double>}},
      {"classifier", {check_classifier<float>, check_classifier<double>}},
      {"rmsnorm", {check_rmsnorm<float>, check_rmsnorm<double>}},
      {"rope", {check_rope<float>, check_rope<double>}},
      {"swiglu", {check_swiglu<float>, check_swiglu<double>}},
      {"attention_gqa", {check_attention_gqa<float>, check_attention_gqa<double>}},
      {"attention_decode", {check_attention_decode<float>, check_attention_decode<double>}},
      {"adamw", {check_adamw, nullptr}},
      {"sum_squares", {check_sum_squares, nullptr}},
      {"scale", {check_scale, nullptr}},
  };
  return t;
}

struct OpCase {
  std::string op;
  Shape shape;
};
void PrintTo(const OpCase& c, std::ostream* os) {
  *os << c.op;
  for (int d : c.shape) *os << ' ' << d;
}

// Odd sizes around the vector width and the kernels' blocks (attention: 64 query rows;
// classifier: 256 rows per chunk; pointwise ops: 16384 elements per thread chunk), plus wide
// layers (C = 768, V = 50257).
const std::vector<OpCase> kCases = {
    {"matmul", {1, 1, 1}},
    {"matmul", {1, 768, 1000}},  // a decoder's step: one row, through GEMV
    {"matmul", {1, 33, 1}},
    {"matmul", {31, 32, 33}},
    {"matmul", {33, 31, 32}},
    {"matmul", {257, 96, 130}},
    {"matmul", {4, 768, 1000}},
    {"matmul", {130, 33, 257}},
    {"encoder", {1, 1, 1, 1}},
    {"encoder", {2, 31, 33, 7}},
    {"encoder", {3, 33, 32, 1000}},
    {"encoder", {4, 130, 96, 50}},
    {"encoder", {2, 8, 130, 3}},
    {"encoder", {1, 1, 1, 1, 1}},
    {"encoder", {3, 33, 32, 1000, 1}},  // no position table (RoPE models)
    {"layernorm", {1, 1}},
    {"layernorm", {31, 32}},
    {"layernorm", {33, 31}},
    {"layernorm", {130, 96}},
    {"layernorm", {257, 768}},
    {"gelu", {1}},
    {"gelu", {31}},
    {"gelu", {33}},
    {"gelu", {16385}},
    {"gelu", {100003}},
    {"residual", {1}},
    {"residual", {33}},
    {"residual", {100003}},
    {"residual_layernorm", {1, 1}},
    {"residual_layernorm", {33, 31}},
    {"residual_layernorm", {257, 768}},
    {"residual_rmsnorm", {1, 1}},
    {"residual_rmsnorm", {31, 32}},
    {"residual_rmsnorm", {130, 96}},
    {"attention", {1, 1, 4, 1}},
    {"attention", {2, 31, 32, 2}},
    {"attention", {1, 32, 16, 4}},
    {"attention", {2, 33, 24, 3}},
    {"attention", {1, 33, 3, 3}},
    {"attention", {1, 64, 32, 2}},
    {"attention", {2, 65, 32, 1}},
    {"attention", {1, 130, 96, 4}},
    {"attention", {1, 300, 128, 2}},
    {"classifier", {1, 1, 1}},
    {"classifier", {31, 32, 33}},
    {"classifier", {33, 31, 1000}},
    {"classifier", {257, 96, 1000}},
    {"classifier", {3, 8, 50257}},
    {"rmsnorm", {1, 1}},
    {"rmsnorm", {31, 32}},
    {"rmsnorm", {33, 31}},
    {"rmsnorm", {130, 96}},
    {"rmsnorm", {257, 768}},
    {"rmsnorm", {33, 64, 1}},  // tiny inputs: eps dominates
    // rope: (B, T, NH, hs, interleaved, pos0), both pair conventions; pos0 > 0 as in decoding
    {"rope", {1, 1, 1, 2, 0, 0}},
    {"rope", {1, 1, 1, 2, 1, 0}},
    {"rope", {2, 31, 3, 32, 0, 0}},
    {"rope", {2, 31, 3, 32, 1, 0}},
    {"rope", {1, 33, 2, 6, 0, 0}},
    {"rope", {1, 33, 2, 6, 1, 0}},
    {"rope", {2, 130, 4, 128, 0, 0}},
    {"rope", {2, 130, 4, 128, 1, 0}},
    {"rope", {1, 1, 4, 16, 0, 517}},
    {"rope", {2, 3, 2, 8, 1, 1000}},
    {"swiglu", {1}},
    {"swiglu", {31}},
    {"swiglu", {33}},
    {"swiglu", {16385}},
    {"swiglu", {100003}},
    // attention_gqa: (B, T, NH, KVH, hs); MHA (KVH = NH), MQA (KVH = 1), 8 heads / 2 kv heads
    {"attention_gqa", {1, 1, 1, 1, 4}},
    {"attention_gqa", {2, 31, 4, 4, 8}},
    {"attention_gqa", {1, 32, 4, 1, 8}},
    {"attention_gqa", {2, 33, 8, 2, 3}},
    {"attention_gqa", {1, 64, 8, 2, 16}},
    {"attention_gqa", {1, 65, 3, 1, 5}},
    {"attention_gqa", {1, 130, 8, 2, 12}},
    {"attention_gqa", {1, 300, 8, 2, 16}},
    // attention_decode: (T, NH, KVH, hs, B, shared)
    {"attention_decode", {1, 1, 1, 4, 1, 0}},
    {"attention_decode", {37, 4, 2, 16, 1, 0}},
    {"attention_decode", {65, 3, 3, 5, 1, 65}},
    {"attention_decode", {300, 8, 1, 64, 1, 0}},
    {"attention_decode", {37, 4, 2, 16, 3, 20}},
    {"attention_decode", {9, 2, 1, 8, 4, 0}},
    {"attention_decode", {40, 6, 3, 8, 2, 40}},
    {"matmul_gelu", {1, 1, 1}},
    {"matmul_gelu", {37, 67, 131}},
    {"matmul_gelu", {64, 96, 256}},
    {"adamw", {1, 1}},
    {"adamw", {33, 1}},
    {"adamw", {16385, 10}},
    {"adamw", {100003, 1000}},
    {"sum_squares", {1}},
    {"sum_squares", {31}},
    {"sum_squares", {1000003}},
    {"scale", {1}},
    {"scale", {33}},
    {"scale", {100003}},
};

std::string case_name(const testing::TestParamInfo<OpCase>& info) {
  std::string s = info.param.op;
  for (int d : info.param.shape) {
    s.push_back('_');  // not `"_" + to_string(d)`: GCC 12 -O3 warns falsely there (PR 105329)
    s.append(std::to_string(d));
  }
  return s;
}

class OpTest : public testing::TestWithParam<OpCase> {};
class OpTestDouble : public testing::TestWithParam<OpCase> {};

TEST_P(OpTest, FastFloatMatchesDoubleReference) {
  const auto& c = GetParam();
  op_table().at(c.op).f32(c.shape);
}

TEST_P(OpTestDouble, FastDoubleMatchesDoubleReference) {
  const auto& c = GetParam();
  op_table().at(c.op).f64(c.shape);
}

// The cases of ops that also have a double instantiation (the optimizer ops are float-only).
std::vector<OpCase> double_cases() {
  std::vector<OpCase> v;
  for (const auto& c : kCases)
    if (op_table().at(c.op).f64) v.push_back(c);
  return v;
}

INSTANTIATE_TEST_SUITE_P(CpuOps, OpTest, testing::ValuesIn(kCases), case_name);
INSTANTIATE_TEST_SUITE_P(CpuOps, OpTestDouble, testing::ValuesIn(double_cases()), case_name);

// With KVH = NH, grouped-query attention is multi-head attention: the same BLAS calls and row
// kernels in the same order, only the leading dimensions differ, so the results are bitwise equal.
TEST(AttentionGqa, MatchesAttentionWhenKvhEqualsNh) {
  const int B = 2, T_ = 70, NH = 3, hs = 8, C = NH * hs;
  const Vec q = rand_vec((size_t)B * T_ * C, 54), k = rand_vec((size_t)B * T_ * C, 55),
            v = rand_vec((size_t)B * T_ * C, 56), dout = rand_vec((size_t)B * T_ * C, 57);
  std::vector<float> qkv((size_t)B * T_ * 3 * C);
  for (size_t bt = 0; bt < (size_t)B * T_; ++bt)
    for (int c = 0; c < C; ++c) {
      qkv[bt * 3 * C + c] = (float)q[bt * C + c];
      qkv[bt * 3 * C + C + c] = (float)k[bt * C + c];
      qkv[bt * 3 * C + 2 * C + c] = (float)v[bt * C + c];
    }
  auto q_t = cast<float>(q), k_t = cast<float>(k), v_t = cast<float>(v), dout_t = cast<float>(dout);
  const size_t n = q.size(), nl = (size_t)B * NH * T_;
  auto out_a = nans<float>(n), lse_a = nans<float>(nl), dqkv = nans<float>(qkv.size());
  attention_forward<float>(out_a.data(), lse_a.data(), qkv.data(), B, T_, C, NH);
  attention_backward<float>(dqkv.data(), dout_t.data(), qkv.data(), out_a.data(), lse_a.data(), B,
                            T_, C, NH);
  auto out_g = nans<float>(n), lse_g = nans<float>(nl), dq = nans<float>(n), dk = nans<float>(n),
       dv = nans<float>(n);
  attention_gqa_forward<float>(out_g.data(), lse_g.data(), q_t.data(), k_t.data(), v_t.data(), B,
                               T_, NH, NH, hs);
  attention_gqa_backward<float>(dq.data(), dk.data(), dv.data(), dout_t.data(), q_t.data(),
                                k_t.data(), v_t.data(), out_g.data(), lse_g.data(), B, T_, NH, NH,
                                hs);
  EXPECT_TRUE(out_a == out_g) << "out";
  EXPECT_TRUE(lse_a == lse_g) << "lse";
  for (size_t bt = 0; bt < (size_t)B * T_; ++bt)
    for (int c = 0; c < C; ++c) {
      ASSERT_EQ(dqkv[bt * 3 * C + c], dq[bt * C + c]) << "dq at " << bt << ", " << c;
      ASSERT_EQ(dqkv[bt * 3 * C + C + c], dk[bt * C + c]) << "dk at " << bt << ", " << c;
      ASSERT_EQ(dqkv[bt * 3 * C + 2 * C + c], dv[bt * C + c]) << "dv at " << bt << ", " << c;
    }
}

// cpu::gemm sends a single row (M = 1) to GEMV and a few rows times B^T (M up to kSkinnyRows) to
// gemm_skinny: every layout of A and B, with leading dimensions wider than the rows, alpha and
// beta (0: C not read, NaN there), against the product in double; M from 1 to past the limit.
TEST(CpuGemm, FewRowsMatchTheProductInEveryLayout) {
  const int N = 70, pad = 3;
  const float alpha = 0.75f;
  for (int K : {5, 32, 37})  // under a vector of 16, whole vectors, and a tail
  for (int M : {1, 2, 5, cpu::kSkinnyRows, cpu::kSkinnyRows + 1})
    for (float beta : {0.5f, 0.0f})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          SCOPED_TRACE(testing::Message() << "K " << K << " M " << M << " beta " << beta << " trans_a " << ta
                                          << " trans_b " << tb);
          // A: (M, K), or A^T with A (K, M); B: (K, N), or B^T with B (N, K); C (M, N). Each padded.
          const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
          const Vec a = rand_vec(size_t(ta ? K : M) * lda, 61), b = rand_vec(size_t(tb ? N : K) * ldb, 62),
                    c0 = rand_vec(size_t(M) * ldc, 63);
          auto a_t = cast<float>(a), b_t = cast<float>(b), c_t = cast<float>(c0);
          if (beta == 0.0f) std::fill(c_t.begin(), c_t.end(), std::numeric_limits<float>::quiet_NaN());
          cpu::gemm<float>(ta, tb, M, N, K, alpha, a_t.data(), lda, b_t.data(), ldb, beta, c_t.data(), ldc);
          std::vector<float> got;
          Vec want;
          for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) {
              double s = 0;
              for (int k = 0; k < K; ++k)
                s += a[ta ? size_t(k) * lda + i : size_t(i) * lda + k] *
                     b[tb ? size_t(j) * ldb + k : size_t(k) * ldb + j];
              want.push_back(alpha * s + beta * c0[size_t(i) * ldc + j]);
              got.push_back(c_t[size_t(i) * ldc + j]);
            }
          // K products and the scaled C: a sum of K + 1 terms, each at most |a| |b| or |c0|.
          expect_close("c", got, want, tol_for<float>().gamma(K + 1) * (K * max_abs(a) * max_abs(b) + max_abs(c0)));
        }
}

// gemm_skinny over bf16 weights computes what it does over the same weights widened to float, bit
// for bit (the bf16 decoders' products are the float op's on the widened weights), for any rows,
// lengths with and without a tail, padded rows and beta.
TEST(CpuGemm, SkinnyOverBf16WeightsIsTheFloatKernelOnThemWidened) {
  const int N = 70, pad = 3;
  for (int K : {5, 37, 768})
    for (int M : {1, 3, cpu::kSkinnyRows})
      for (float beta : {0.0f, 1.0f}) {
        SCOPED_TRACE(testing::Message() << "K " << K << " M " << M << " beta " << beta);
        const int lda = K + pad, ldb = K + pad, ldc = N + pad;
        const auto a = cast<float>(rand_vec(size_t(M) * lda, 64)), c0 = cast<float>(rand_vec(size_t(M) * ldc, 65));
        const Vec b = rand_vec(size_t(N) * ldb, 66);
        std::vector<bf16> b16(b.size());
        std::vector<float> wide(b.size());
        for (size_t i = 0; i < b.size(); ++i) wide[i] = float(b16[i] = bf16(float(b[i])));
        auto c16 = c0, c32 = c0;
        cpu::gemm_skinny(M, N, K, 0.5f, a.data(), lda, b16.data(), ldb, beta, c16.data(), ldc);
        cpu::gemm_skinny(M, N, K, 0.5f, a.data(), lda, wide.data(), ldb, beta, c32.data(), ldc);
        EXPECT_EQ(0, std::memcmp(c16.data(), c32.data(), c16.size() * sizeof(float)));
        EXPECT_NE(c16, c0);
      }
}

TEST(RopeInvFreq, ScalingRules) {
  const int hs = 128;
  const double theta = 500000.0;
  const auto base = rope_inv_freq(hs, theta);
  ASSERT_EQ(base.size(), size_t(hs / 2));
  for (int j = 0; j < hs / 2; ++j) EXPECT_DOUBLE_EQ(base[j], std::pow(theta, -2.0 * j / hs)) << j;
  RopeScaling lin;
  lin.kind = RopeScaling::Kind::kLinear;
  lin.factor = 4;
  const auto fl = rope_inv_freq(hs, theta, lin);
  for (int j = 0; j < hs / 2; ++j) EXPECT_DOUBLE_EQ(fl[j], base[j] / 4) << j;
  // Llama 3.1's published settings: short wavelengths kept, long ones / factor, a monotone blend
  // between that meets both ends.
  RopeScaling l3;
  l3.kind = RopeScaling::Kind::kLlama3;
  l3.factor = 8;
  l3.low_freq_factor = 1;
  l3.high_freq_factor = 4;
  l3.original_context = 8192;
  const auto f3 = rope_inv_freq(hs, theta, l3);
  int kept = 0, divided = 0, blended = 0;
  for (int j = 0; j < hs / 2; ++j) {
    const double wavelen = 2 * std::numbers::pi / base[j];
    if (wavelen < 8192.0 / 4) {
      EXPECT_DOUBLE_EQ(f3[j], base[j]) << j;
      ++kept;
    } else if (wavelen > 8192.0) {
      EXPECT_DOUBLE_EQ(f3[j], base[j] / 8) << j;
      ++divided;
    } else {
      EXPECT_LT(f3[j], base[j]) << j;
      EXPECT_GT(f3[j], base[j] / 8) << j;
      ++blended;
    }
    if (j > 0) {
      EXPECT_LT(f3[j], f3[j - 1]) << "frequencies must fall with j, at " << j;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

// The multi-tensor AdamW is, element for element, the per-range one on the clipped gradient
// (g * grad_scale, as the scale op writes it): the same bits; the gaps between chunks untouched.
TEST(AdamwChunks, SameBitsAsPerRangeUpdatesOfTheScaledGradient) {
  const size_t n = 200003;
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const long step = 7;
  const auto chunks = test::test_adamw_chunks(n, wd);
  ASSERT_GT(chunks.size(), 5u);
  for (const float gs : {1.0f, 0.3f}) {
    SCOPED_TRACE("grad_scale = " + std::to_string(gs));
    auto p = cast<float>(rand_vec(n, 41)), g = cast<float>(rand_vec(n, 42)),
         m = cast<float>(rand_vec(n, 43, -0.1, 0.1)), v = cast<float>(rand_vec(n, 44, 0.0, 0.01));
    auto p2 = p, m2 = m, v2 = v, gscaled = g;
    scale(gscaled.data(), gs, n);
    for (const auto& c : chunks)
      adamw_update(p2.data() + c.offset, gscaled.data() + c.offset, m2.data() + c.offset, v2.data() + c.offset,
                   c.size, lr, b1, b2, eps, c.wd, step);
    const auto p0 = p;
    adamw_chunks(p.data(), g.data(), m.data(), v.data(), chunks.data(), chunks.size(),
                 AdamwStep::at(lr, b1, b2, eps, /*unused*/ 0.5f, step), gs);
    EXPECT_EQ(p, p2);
    EXPECT_EQ(m, m2);
    EXPECT_EQ(v, v2);
    EXPECT_NE(p, p0);
    const size_t gap = chunks[2].offset + chunks[2].size;  // the first gap: 5 values
    for (size_t i = gap; i < gap + 5; ++i) EXPECT_EQ(p[i], p0[i]) << i;
  }
}

TEST(OpTable, EveryOpHasACase) {
  for (const auto& [name, entry] : op_table()) {
    const bool found =
        std::any_of(kCases.begin(), kCases.end(), [&](const OpCase& c) { return c.op == name; });
    EXPECT_TRUE(found) << name;
  }
}

}  // namespace
}  // namespace lmf::ops
