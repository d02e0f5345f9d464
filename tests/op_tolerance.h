#pragma once
// Shared by the op tests (tests/unit/test_ops.cpp, the CPU ops against the double reference;
// tests/gpu/test_cuda_*.cpp, the CUDA ops against the CPU ops): inputs exactly representable in
// float, and derived tolerances. For a sum of K rounded terms the probabilistic bound of Higham &
// Mary (SIAM J. Sci. Comput. 2019, Thm. 3.1) gives |computed - exact| <= gamma(K) sum |terms|,
// gamma(K) = lambda sqrt(K) u; test_ops.cpp's header explains lambda = 6 and the choice of u.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "ops/adamw_step.h"
#include "ops/reference.h"

namespace lmf::test {

using Vec = std::vector<double>;

constexpr double kLambda = 6.0;

struct Tol {
  double u;
  // Where a kernel rounds both operands of each product to a narrower type before an fp32 sum
  // (bf16 tensor cores): the relative error of one such product, 2 u_op + u_op^2, once per term
  // and not growing with the sum's length. 0: the operands are used as they are.
  double op = 0;
  double gamma(double K) const { return kLambda * std::sqrt(K) * u; }
  // A sum of K products: its accumulation bound plus the operands' rounding.
  double dot(double K) const { return gamma(K) + op; }
};

// n values uniform in [lo, hi), exactly representable in float.
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
inline double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// ---- multi-tensor AdamW -------------------------------------------------------------------------

// [0, n) cut into chunks of the sizes a registry gives (1, 37, one full kAdamwChunk, 1000, a
// chunk's remainder, ...), decay alternating between wd and 0, with an unused gap of 5 values
// after every third chunk (the registry's padding), which an update must leave alone.
inline std::vector<ops::AdamwChunk> test_adamw_chunks(size_t n, float wd) {
  const size_t sizes[] = {1, 37, ops::kAdamwChunk, 1000, 4097};
  std::vector<ops::AdamwChunk> c;
  size_t at = 0;
  for (size_t k = 0; at < n; ++k) {
    const size_t len = std::min(sizes[k % 5], n - at);
    c.push_back({at, (uint32_t)len, k % 2 ? 0.0f : wd});
    at += len + (k % 3 == 2 ? 5 : 0);
  }
  return c;
}

// ---- causal (grouped-query) attention ----------------------------------------------------------

// Per-element bounds on |computed - exact| for attention_gqa_forward/backward, in their layouts:
// out, dq (B, T, NH*hs); lse (B, NH, T); dk, dv (B, T, KVH*hs).
struct AttentionTolerance {
  Vec out, lse, dq, dk, dv;
};

// From the exact (double) probabilities and the actual magnitudes of each (b, kv head); q, k, v,
// dout the inputs and out, lse the exact forward results (ops::ref), in the layouts above:
//  score s_ij = scale q_i . k_j: error ds_ij = gamma(hs) scale sum_d |q_id k_jd|;
//  lse_i: the largest score error in the row, the relative error of a sum of T exps, one log;
//  P_ij = exp(s_ij - lse_i): relative error dp_i = max_j ds_ij + dlse_i + exp's own (16);
//  out_i = sum_j P_ij v_j: V (dp_i + gamma(T)).
// Backward: dP_ij = dO_i . v_j and D_i = dO_i . O_i (dot products of length hs, D also carries
// out's error); dS_ij = P_ij (dP_ij - D_i) scale has error e_ij; then dQ_i = sum_j dS_ij k_j
// (T terms), dK_j = sum_i dS_ij q_i and dV_j = sum_i P_ij dO_i, each with its own sum of errors
// plus gamma(terms) times its sum of |terms|. A kv head's dK, dV sum the errors of the group's
// query heads, over group * T terms; |k|, |q|, |v|, |dO| are bounded by their maxima over the
// kv head and its group.
// online_chunk > 0 adds the error of an online softmax over key chunks of that size (the GPU
// kernel): row i is seen in ceil((i+1)/chunk) chunks, each rescaling the running sum and
// accumulator by an exp and a multiply, a relative error of gamma(17 ceil((i+1)/chunk)) on
// lse_i (through the sum), and so on dp_i and out_i.
// With t.op > 0 (bf16 tensor cores) every sum of products above (the scores, P v, dP, and the
// sums into dQ, dK, dV) carries t.op per term on top of gamma: t.dot. D_i stays an fp32 dot.
inline AttentionTolerance attention_tolerance(const Vec& q, const Vec& k, const Vec& v, const Vec& dout,
                                              const Vec& out, const Vec& lse, int B, int T_, int NH, int KVH,
                                              int hs, const Tol& t, int online_chunk = 0) {
  const int group = NH / KVH, C = NH * hs, KC = KVH * hs;
  const double scale = 1 / std::sqrt((double)hs);
  AttentionTolerance r{Vec(out.size()), Vec(lse.size()), Vec(q.size()), Vec(k.size()), Vec(v.size())};
  Vec P((size_t)T_ * T_), dp(T_), col_e(T_), col_abs(T_), col_v(T_);
  for (int b = 0; b < B; ++b)
    for (int kh = 0; kh < KVH; ++kh) {
      auto ki = [&](int tt, int d) { return ((size_t)b * T_ + tt) * KC + (size_t)kh * hs + d; };
      double K = 0, V = 0, Q = 0, G = 0;  // Q, G: over the group's query heads
      for (int tt = 0; tt < T_; ++tt)
        for (int d = 0; d < hs; ++d) {
          K = std::max(K, std::abs(k[ki(tt, d)]));
          V = std::max(V, std::abs(v[ki(tt, d)]));
        }
      std::fill(col_e.begin(), col_e.end(), 0.0);
      std::fill(col_abs.begin(), col_abs.end(), 0.0);
      std::fill(col_v.begin(), col_v.end(), 0.0);
      const int TG = T_ * group;
      for (int h = kh * group; h < (kh + 1) * group; ++h) {
        ops::ref::attention_gqa_probs(P.data(), static_cast<double*>(nullptr), q.data(), k.data(), b, h, T_, NH,
                                      KVH, hs);
        auto qi = [&](int tt, int d) { return ((size_t)b * T_ + tt) * C + (size_t)h * hs + d; };
        for (int tt = 0; tt < T_; ++tt)
          for (int d = 0; d < hs; ++d) {
            Q = std::max(Q, std::abs(q[qi(tt, d)]));
            G = std::max(G, std::abs(dout[qi(tt, d)]));
          }
        for (int i = 0; i < T_; ++i) {
          double ds_i = 0;
          for (int j = 0; j <= i; ++j) {
            double sab = 0;
            for (int d = 0; d < hs; ++d) sab += std::abs(q[qi(i, d)] * k[ki(j, d)]);
            ds_i = std::max(ds_i, t.dot(hs) * scale * sab);
          }
          const size_t li = ((size_t)b * NH + h) * T_ + i;
          const double online =
              online_chunk > 0 ? t.gamma(17.0 * ((i + online_chunk) / online_chunk)) : 0.0;
          r.lse[li] = ds_i + t.gamma(T_) + t.gamma(4) * std::abs(lse[li]) + online;
          dp[i] = ds_i + r.lse[li] + t.gamma(16);
          for (int d = 0; d < hs; ++d) r.out[qi(i, d)] = V * (dp[i] + t.dot(T_));
        }
        for (int i = 0; i < T_; ++i) {
          double g1 = 0, D = 0, Dab = 0;  // |dO_i|_1, D_i, sum |dO O|
          for (int d = 0; d < hs; ++d) {
            g1 += std::abs(dout[qi(i, d)]);
            D += dout[qi(i, d)] * out[qi(i, d)];
            Dab += std::abs(dout[qi(i, d)] * out[qi(i, d)]);
          }
          const double dD = t.gamma(hs) * Dab + g1 * r.out[qi(i, 0)];
          double row_e = 0, row_abs = 0;
          for (int j = 0; j <= i; ++j) {
            double dP = 0, dPab = 0;
            for (int d = 0; d < hs; ++d) {
              dP += dout[qi(i, d)] * v[ki(j, d)];
              dPab += std::abs(dout[qi(i, d)] * v[ki(j, d)]);
            }
            const double p = P[(size_t)i * T_ + j], diff = std::abs(dP - D);
            const double e = scale * p * (diff * (dp[i] + t.gamma(3)) + t.dot(hs) * dPab + dD);
            const double a = scale * p * diff;
            row_e += e;
            row_abs += a;
            col_e[j] += e;
            col_abs[j] += a;
            col_v[j] += p * (dp[i] + t.dot(TG));
          }
          for (int d = 0; d < hs; ++d) r.dq[qi(i, d)] = K * (row_e + t.dot(T_) * row_abs);
        }
      }
      for (int j = 0; j < T_; ++j)
        for (int d = 0; d < hs; ++d) {
          r.dk[ki(j, d)] = Q * (col_e[j] + t.dot(TG) * col_abs[j]);
          r.dv[ki(j, d)] = G * col_v[j];
        }
    }
  return r;
}

// Packed multi-head attention's qkv (B T, 3C) as separate q, k, v (B T, C), and back: a bound
// per element of dqkv from the bounds of dq, dk, dv.
struct Qkv {
  Vec q, k, v;
};
inline Qkv split_qkv(const Vec& qkv, size_t BT, int C) {
  Qkv s{Vec(BT * C), Vec(BT * C), Vec(BT * C)};
  for (size_t bt = 0; bt < BT; ++bt)
    for (int c = 0; c < C; ++c) {
      s.q[bt * C + c] = qkv[bt * 3 * C + c];
      s.k[bt * C + c] = qkv[bt * 3 * C + C + c];
      s.v[bt * C + c] = qkv[bt * 3 * C + 2 * C + c];
    }
  return s;
}
inline Vec join_qkv(const Vec& q, const Vec& k, const Vec& v, size_t BT, int C) {
  Vec qkv(BT * 3 * C);
  for (size_t bt = 0; bt < BT; ++bt)
    for (int c = 0; c < C; ++c) {
      qkv[bt * 3 * C + c] = q[bt * C + c];
      qkv[bt * 3 * C + C + c] = k[bt * C + c];
      qkv[bt * 3 * C + 2 * C + c] = v[bt * C + c];
    }
  return qkv;
}

// ---- classifier fused with cross-entropy --------------------------------------------------------

// Per-element bounds for classifier_ce_forward (losses (N), dx (N, C), dw (V, C), their sum) and
// classifier_logits (N, V).
struct ClassifierTolerance {
  Vec loss, dx, dw, logits;
  double total = 0;
};

// From the actual magnitudes, with the logits from the double reference; x (N, C), w (V, C),
// dloss (N), dw0 (V, C) what dw held before, losses (N) the exact losses:
//  logit l_ij: error dl_ij = gamma(C) sum_c |x_ic w_jc| (a dot product of length C);
//  lse_i: the row's largest logit error, the relative error of a sum of V exps, one log;
//  loss_i = lse_i - l_it; p_ij = exp(l_ij - lse_i) has relative error dp_i;
//  dlogit_ij = (p_ij - y_ij) dloss_i: error e_ij = |dloss_i| (p_ij dp_i + gamma(2) (p_ij +
//  y_ij)); dx_i = sum_j dlogit_ij w_j and dw_j = dw0_j + sum_i dlogit_ij x_i: their sums of e
//  plus gamma(V) (resp. gamma(N + 1)) times their sums of |terms| (|w|, |x| bounded by the max).
// gamma(N + 1) for dw holds however the N rows are split into chunks, each adding onto dw: every
// term is still one of N + 1 summed in some order. Ignored rows (target < 0) are exact: 0.
// online_threads > 0 adds the error of a one-pass (online) softmax sum split over that many
// threads (the GPU kernel): a thread's running sum is rescaled by an exp and a multiply at most
// once per element it sees, ceil(V / threads), and once more when the block combines: a relative
// error of gamma(17 (ceil(V / threads) + 1)) on the sum, so on lse.
inline ClassifierTolerance classifier_tolerance(const Vec& x, const Vec& w, const std::vector<int32_t>& targets,
                                                const Vec& dloss, const Vec& dw0, const Vec& losses, int N, int C,
                                                int V, const Tol& t, int online_threads = 0) {
  const double online =
      online_threads > 0 ? t.gamma(17.0 * ((V + online_threads - 1) / online_threads + 1)) : 0.0;
  const double X = max_abs(x), W = max_abs(w);
  Vec logits((size_t)N * V), labs((size_t)N * V), xa(x.size()), wa(w.size());
  for (size_t i = 0; i < x.size(); ++i) xa[i] = std::abs(x[i]);
  for (size_t i = 0; i < w.size(); ++i) wa[i] = std::abs(w[i]);
  ops::ref::classifier_logits(logits.data(), x.data(), w.data(), N, C, V);
  ops::ref::classifier_logits(labs.data(), xa.data(), wa.data(), N, C, V);
  ClassifierTolerance r{Vec(N), Vec((size_t)N * C), Vec((size_t)V * C), Vec(labs.size()), 0.0};
  Vec col_e(V), col_abs(V);
  for (int i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;  // loss 0, gradient 0: tolerance 0
    const double* l = logits.data() + (size_t)i * V;
    double dl = 0, mx = -1e300, sum = 0;
    for (int j = 0; j < V; ++j) {
      dl = std::max(dl, t.gamma(C) * labs[(size_t)i * V + j]);
      mx = std::max(mx, l[j]);
    }
    for (int j = 0; j < V; ++j) sum += std::exp(l[j] - mx);
    const double lse = mx + std::log(sum);
    const double dlse = dl + t.gamma(V) + t.gamma(4) * std::abs(lse) + online;
    r.loss[i] = dlse + dl + t.gamma(1) * std::abs(losses[i]);
    r.total += r.loss[i];
    const double dp = dl + dlse + t.gamma(16), g = std::abs(dloss[i]);
    double row_e = 0, row_abs = 0;
    for (int j = 0; j < V; ++j) {
      const double p = std::exp(l[j] - lse), y = j == targets[i] ? 1.0 : 0.0;
      const double e = g * (p * dp + t.gamma(2) * (p + y)), a = g * std::abs(p - y);
      row_e += e;
      row_abs += a;
      col_e[j] += e;
      col_abs[j] += a;
    }
    for (int c = 0; c < C; ++c) r.dx[(size_t)i * C + c] = W * (row_e + t.gamma(V) * row_abs);
  }
  for (int j = 0; j < V; ++j)
    for (int c = 0; c < C; ++c) {
      const size_t k = (size_t)j * C + c;
      r.dw[k] = X * (col_e[j] + t.gamma(N + 1) * col_abs[j]) + t.gamma(N + 1) * std::abs(dw0[k]);
    }
  for (size_t k = 0; k < labs.size(); ++k) r.logits[k] = t.gamma(C) * labs[k];
  return r;
}

// ---- GELU (tanh approximation) -----------------------------------------------------------------

// Per-element bounds for gelu_forward (out) and gelu_backward (dinp) at x, with dout and the exact
// outputs out. tanh's absolute error: its own (16 roundings, of 1) plus its argument's relative
// error times u sech^2(u), the condition of tanh at u; gelu' = 0.5 (1 + th) + 0.5 x (1 - th^2)
// du/dx: th enters both terms.
struct GeluTolerance {
  Vec out, dinp;
};
inline GeluTolerance gelu_tolerance(const Vec& x, const Vec& dout, const Vec& out, const Tol& t) {
  GeluTolerance r{Vec(x.size()), Vec(x.size())};
  const double sq = 0.7978845608028654, a = 0.044715;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xi = std::abs(x[i]), u = sq * (xi + a * xi * xi * xi), th = std::tanh(u);
    const double sech2 = 1 - th * th, dudx = sq * (1 + 3 * a * xi * xi);
    const double dth = t.gamma(16) * (1 + u * sech2);
    r.out[i] = 0.5 * xi * dth + t.gamma(4) * std::abs(out[i]);
    r.dinp[i] = std::abs(dout[i]) * (dth * (0.5 + xi * dudx * std::abs(th)) + t.gamma(8) * (1 + 0.5 * xi * sech2 * dudx));
  }
  return r;
}

}  // namespace lmf::test
