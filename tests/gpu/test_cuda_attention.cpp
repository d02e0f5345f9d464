// CUDA attention and encoder ops (ops/cuda/attention.cu, encoder.cu) against the CPU ops
// (ops/ops.h), the specification, in fp32 on the same inputs. Every test that runs a kernel skips
// without a CUDA device; in a build without CUDA only a placeholder runs.
//
// Tolerances as in tests/gpu/test_cuda_ops.cpp: for each output a bound on |computed - exact| from
// tests/unit/test_ops.cpp (gamma(K) = lambda sqrt(K) u, Higham & Mary's probabilistic bound; the
// attention chain is its check_attention_gqa, see attention_bounds below). Both the GPU and the
// CPU result lie within that bound of the exact (double) value, so they lie within twice it of
// each other: every tolerance here is kBoth times the bound. The encoder is compared bitwise: the
// GPU adds the same terms in the same order as the CPU (see check_encoder).
// Shapes are odd on purpose: T not a multiple of the 32-key chunk (37, 33, 257), hs below, at and
// above the warp (10, 16, 32, 33, 64, 96, 256: 1, 2, 4 and 8 dimensions per lane).
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "ops/cuda_backend.h"

#ifndef LMF_HAVE_CUDA

TEST(CudaAttention, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/cuda_util.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/ops.h"
#include "ops/reference.h"
#include "gpu/cuda_test_util.h"

namespace lmf {
namespace {

using namespace test;  // NOLINT: the shared GPU test helpers (cuda_test_util.h)

// ---- attention ----------------------------------------------------------------------------------

struct AttnShape {
  int B, T, NH, KVH, hs;
};
std::string describe(const AttnShape& s) {
  return "B = " + std::to_string(s.B) + ", T = " + std::to_string(s.T) +
         ", NH = " + std::to_string(s.NH) + ", KVH = " + std::to_string(s.KVH) +
         ", hs = " + std::to_string(s.hs);
}

// Per-element tolerances for GPU vs CPU, in the separate layouts: out, dq (B, T, NH*hs);
// lse (B, NH, T); dk, dv (B, T, KVH*hs).
struct AttnTol {
  Vec out, lse, dq, dk, dv;
};

// The bound of test_ops.cpp check_attention_gqa (derivation there), from the exact (double)
// probabilities and the actual magnitudes of each (b, kv head), times kBoth:
//  score s_ij = scale q_i . k_j: error ds_ij = gamma(hs) scale sum_d |q_id k_jd|;
//  lse_i: the largest score error in the row, a sum of T exps (gamma(T)), one log (gamma(4));
//  P_ij = exp(s_ij - lse_i): relative error dp_i = max_j ds_ij + dlse_i + gamma(16) (exp);
//  out_i = sum_j P_ij v_j: V (dp_i + gamma(T)).
//  Backward: D_i = dO_i . O_i (length hs, plus out's error), dP_ij = dO_i . v_j, dS_ij =
//  P_ij (dP_ij - D_i) scale with error e_ij; dQ_i = sum_j dS_ij k_j (T terms), dK_j = sum_i
//  dS_ij q_i and dV_j = sum_i P_ij dO_i (group * T terms per kv head).
// One term more than test_ops.cpp, for the GPU's online softmax: row i is seen in ceil((i+1)/32)
// chunks, and each chunk rescales the running sum and accumulator by corr = exp(m_old - m_new),
// an exp (16 roundings, test_ops.cpp's convention) and a multiply: a relative error of at most
// gamma(17 ceil((i+1)/32)), added to lse_i (through l) and so to dp_i and out_i. The CPU's error
// is within the smaller bound without it, so kBoth times this bound covers |GPU - CPU|.
AttnTol attention_tolerances(const AttnShape& s, const Vec& q, const Vec& k, const Vec& v,
                             const Vec& dout) {
  const int B = s.B, T_ = s.T, NH = s.NH, KVH = s.KVH, hs = s.hs, group = NH / KVH;
  const int C = NH * hs, KC = KVH * hs;
  const Tol t = tol_f32();
  Vec out_r(q.size()), lse_r((size_t)B * NH * T_);
  ops::ref::attention_gqa_forward(out_r.data(), lse_r.data(), q.data(), k.data(), v.data(), B, T_,
                                  NH, KVH, hs);
  const double scale = 1 / std::sqrt((double)hs);
  AttnTol r{Vec(out_r.size()), Vec(lse_r.size()), Vec(q.size()), Vec(k.size()), Vec(v.size())};
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
        ops::ref::attention_gqa_probs(P.data(), static_cast<double*>(nullptr), q.data(), k.data(),
                                      b, h, T_, NH, KVH, hs);
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
            ds_i = std::max(ds_i, t.gamma(hs) * scale * sab);
          }
          const size_t li = ((size_t)b * NH + h) * T_ + i;
          const double online = t.gamma(17.0 * ((i + 32) / 32));
          r.lse[li] = ds_i + t.gamma(T_) + t.gamma(4) * std::abs(lse_r[li]) + online;
          dp[i] = ds_i + r.lse[li] + t.gamma(16);
          for (int d = 0; d < hs; ++d) r.out[qi(i, d)] = V * (dp[i] + t.gamma(T_));
        }
        for (int i = 0; i < T_; ++i) {
          double g1 = 0, D = 0, Dab = 0;  // |dO_i|_1, D_i, sum |dO O|
          for (int d = 0; d < hs; ++d) {
            g1 += std::abs(dout[qi(i, d)]);
            D += dout[qi(i, d)] * out_r[qi(i, d)];
            Dab += std::abs(dout[qi(i, d)] * out_r[qi(i, d)]);
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
            const double e = scale * p * (diff * (dp[i] + t.gamma(3)) + t.gamma(hs) * dPab + dD);
            const double a = scale * p * diff;
            row_e += e;
            row_abs += a;
            col_e[j] += e;
            col_abs[j] += a;
            col_v[j] += p * (dp[i] + t.gamma(TG));
          }
          for (int d = 0; d < hs; ++d) r.dq[qi(i, d)] = K * (row_e + t.gamma(T_) * row_abs);
        }
      }
      for (int j = 0; j < T_; ++j)
        for (int d = 0; d < hs; ++d) {
          r.dk[ki(j, d)] = Q * (col_e[j] + t.gamma(TG) * col_abs[j]);
          r.dv[ki(j, d)] = G * col_v[j];
        }
    }
  for (Vec* x : {&r.out, &r.lse, &r.dq, &r.dk, &r.dv})
    for (double& e : *x) e *= kBoth;
  return r;
}

// Multi-head attention over a packed qkv (B, T, 3C), C = NH * hs.
void check_attention(int B, int T_, int NH, int hs) {
  const AttnShape s{B, T_, NH, NH, hs};
  SCOPED_TRACE(describe(s));
  const int C = NH * hs;
  const size_t BT = (size_t)B * T_;
  const Vec qkv = rand_vec(BT * 3 * C, 24), dout = rand_vec(BT * C, 25);
  Vec q(BT * C), k(BT * C), v(BT * C);
  for (size_t bt = 0; bt < BT; ++bt)
    for (int c = 0; c < C; ++c) {
      q[bt * C + c] = qkv[bt * 3 * C + c];
      k[bt * C + c] = qkv[bt * 3 * C + C + c];
      v[bt * C + c] = qkv[bt * 3 * C + 2 * C + c];
    }
  const AttnTol tol = attention_tolerances(s, q, k, v, dout);
  Vec tol_dqkv(qkv.size());
  for (size_t bt = 0; bt < BT; ++bt)
    for (int c = 0; c < C; ++c) {
      tol_dqkv[bt * 3 * C + c] = tol.dq[bt * C + c];
      tol_dqkv[bt * 3 * C + C + c] = tol.dk[bt * C + c];
      tol_dqkv[bt * 3 * C + 2 * C + c] = tol.dv[bt * C + c];
    }

  // CPU, the specification.
  const FVec qkv_f = to_f(qkv), dout_f = to_f(dout);
  FVec out_c(BT * C), lse_c((size_t)B * NH * T_), dqkv_c = nans(qkv.size());
  ops::attention_forward<float>(out_c.data(), lse_c.data(), qkv_f.data(), B, T_, C, NH);
  ops::attention_backward<float>(dqkv_c.data(), dout_f.data(), qkv_f.data(), out_c.data(),
                                 lse_c.data(), B, T_, C, NH);
  // GPU: every output starts as NaN, so an element left unwritten fails.
  DeviceBuffer<float> d_qkv(qkv_f), d_dout(dout_f), d_out(nans(out_c.size())),
      d_lse(nans(lse_c.size())), d_dqkv(nans(qkv.size()));
  cuda::attention_forward(d_out.data(), d_lse.data(), d_qkv.data(), B, T_, C, NH);
  cuda::attention_backward(d_dqkv.data(), d_dout.data(), d_qkv.data(), d_out.data(), d_lse.data(),
                           B, T_, C, NH);
  const FVec dqkv_g = d_dqkv.to_host();
  expect_close("out", d_out.to_host(), out_c, tol.out);
  expect_close("lse", d_lse.to_host(), lse_c, tol.lse);
  expect_close("dqkv", dqkv_g, dqkv_c, tol_dqkv);

  // Deterministic: the same calls again give the same bits.
  DeviceBuffer<float> d_out2(nans(out_c.size())), d_lse2(nans(lse_c.size())),
      d_dqkv2(nans(qkv.size()));
  cuda::attention_forward(d_out2.data(), d_lse2.data(), d_qkv.data(), B, T_, C, NH);
  cuda::attention_backward(d_dqkv2.data(), d_dout.data(), d_qkv.data(), d_out.data(), d_lse.data(),
                           B, T_, C, NH);
  EXPECT_EQ(d_out2.to_host(), d_out.to_host());
  EXPECT_EQ(d_lse2.to_host(), d_lse.to_host());
  EXPECT_EQ(d_dqkv2.to_host(), dqkv_g);
}

void check_attention_gqa(const AttnShape& s) {
  SCOPED_TRACE(describe(s));
  const int B = s.B, T_ = s.T, NH = s.NH, KVH = s.KVH, hs = s.hs;
  const size_t BT = (size_t)B * T_, C = (size_t)NH * hs, KC = (size_t)KVH * hs;
  const Vec q = rand_vec(BT * C, 50), k = rand_vec(BT * KC, 51), v = rand_vec(BT * KC, 52),
            dout = rand_vec(BT * C, 53);
  const AttnTol tol = attention_tolerances(s, q, k, v, dout);

  const FVec qf = to_f(q), kf = to_f(k), vf = to_f(v), dof = to_f(dout);
  FVec out_c(BT * C), lse_c((size_t)B * NH * T_), dq_c = nans(q.size()), dk_c = nans(k.size()),
                                                  dv_c = nans(v.size());
  ops::attention_gqa_forward<float>(out_c.data(), lse_c.data(), qf.data(), kf.data(), vf.data(), B,
                                    T_, NH, KVH, hs);
  ops::attention_gqa_backward<float>(dq_c.data(), dk_c.data(), dv_c.data(), dof.data(), qf.data(),
                                     kf.data(), vf.data(), out_c.data(), lse_c.data(), B, T_, NH,
                                     KVH, hs);

  DeviceBuffer<float> d_q(qf), d_k(kf), d_v(vf), d_dout(dof), d_out(nans(out_c.size())),
      d_lse(nans(lse_c.size()));
  cuda::attention_gqa_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), B, T_,
                              NH, KVH, hs);
  auto backward = [&](DeviceBuffer<float>& dq, DeviceBuffer<float>& dk, DeviceBuffer<float>& dv) {
    cuda::attention_gqa_backward(dq.data(), dk.data(), dv.data(), d_dout.data(), d_q.data(),
                                 d_k.data(), d_v.data(), d_out.data(), d_lse.data(), B, T_, NH, KVH,
                                 hs);
  };
  DeviceBuffer<float> d_dq(nans(q.size())), d_dk(nans(k.size())), d_dv(nans(v.size()));
  backward(d_dq, d_dk, d_dv);
  expect_close("out", d_out.to_host(), out_c, tol.out);
  expect_close("lse", d_lse.to_host(), lse_c, tol.lse);
  expect_close("dq", d_dq.to_host(), dq_c, tol.dq);
  expect_close("dk", d_dk.to_host(), dk_c, tol.dk);
  expect_close("dv", d_dv.to_host(), dv_c, tol.dv);

  // Deterministic: the same backward again gives the same bits (dk, dv sum over the group in a
  // fixed order).
  DeviceBuffer<float> d_dq2(nans(q.size())), d_dk2(nans(k.size())), d_dv2(nans(v.size()));
  backward(d_dq2, d_dk2, d_dv2);
  EXPECT_EQ(d_dq2.to_host(), d_dq.to_host());
  EXPECT_EQ(d_dk2.to_host(), d_dk.to_host());
  EXPECT_EQ(d_dv2.to_host(), d_dv.to_host());
}

TEST(CudaAttention, MultiHead) {
  SKIP_WITHOUT_DEVICE();
  check_attention(2, 37, 3, 10);  // T past one 32-key chunk, hs below the warp
  check_attention(1, 1, 2, 8);    // one key
  check_attention(2, 33, 2, 32);  // hs exactly one dimension per lane
  check_attention(2, 257, 2, 64);
}

TEST(CudaAttention, GroupedQuery) {
  SKIP_WITHOUT_DEVICE();
  check_attention_gqa({2, 37, 4, 2, 16});
  check_attention_gqa({2, 37, 4, 1, 16});  // multi-query
  check_attention_gqa({1, 257, 4, 2, 64});
  check_attention_gqa({1, 40, 3, 3, 33});   // KVH == NH; 2 dimensions per lane, one partial
  check_attention_gqa({1, 20, 2, 1, 96});   // 4 per lane (96 rounds up), the last one idle
  check_attention_gqa({1, 65, 2, 1, 256});  // the largest head: 8 per lane
}

// The shape checks run on the host before any launch: no device needed.
TEST(CudaAttention, RejectsBadHeads) {
  EXPECT_THROW(
      cuda::attention_gqa_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4, 2, 1, 257),
      Error);  // head size above the limit
  EXPECT_THROW(cuda::attention_gqa_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, nullptr, 1, 4, 3, 2, 16),
               Error);  // NH not a multiple of KVH
  EXPECT_THROW(cuda::attention_forward(nullptr, nullptr, nullptr, 1, 4, 30, 4), Error);
}

// ---- encoder ------------------------------------------------------------------------------------

// Bitwise against the CPU. Forward: each element is one fp32 add (or a copy), the same on both.
// Backward: the CPU adds dout[b, t] into each dwte element in (b, t) order and into each dwpe
// element in b order, one rounding per add; the GPU starts from the same value and adds the same
// terms in the same order, so the results are identical (no tolerance to derive).
void check_encoder(int B, int T_, int C, int V, bool with_wpe) {
  SCOPED_TRACE("B = " + std::to_string(B) + ", T = " + std::to_string(T_) +
               ", C = " + std::to_string(C) + ", V = " + std::to_string(V) +
               (with_wpe ? ", with wpe" : ", no wpe"));
  const size_t BT = (size_t)B * T_;
  const auto tokens = rand_tokens(BT, V, 7);
  const FVec wte = to_f(rand_vec((size_t)V * C, 8)), wpe = to_f(rand_vec((size_t)T_ * C, 9)),
             dout = to_f(rand_vec(BT * C, 10)), dwte0 = to_f(rand_vec(wte.size(), 11)),
             dwpe0 = to_f(rand_vec(wpe.size(), 12));

  FVec out_c = nans(BT * C), dwte_c = dwte0, dwpe_c = dwpe0;
  ops::encoder_forward<float>(out_c.data(), tokens.data(), wte.data(),
                              with_wpe ? wpe.data() : nullptr, B, T_, C);
  ops::encoder_backward<float>(dwte_c.data(), with_wpe ? dwpe_c.data() : nullptr, dout.data(),
                               tokens.data(), B, T_, C);

  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<float> d_wte(wte), d_wpe(wpe), d_dout(dout), d_out(nans(BT * C)), d_dwte(dwte0),
      d_dwpe(dwpe0);
  cuda::encoder_forward(d_out.data(), d_tokens.data(), d_wte.data(),
                        with_wpe ? d_wpe.data() : nullptr, B, T_, C);
  // Gradients start from dwte0, dwpe0 (nonzero): a kernel that assigned fails.
  cuda::encoder_backward(d_dwte.data(), with_wpe ? d_dwpe.data() : nullptr, d_dout.data(),
                         tokens.data(), B, T_, C);
  EXPECT_EQ(d_out.to_host(), out_c);
  EXPECT_EQ(d_dwte.to_host(), dwte_c);
  EXPECT_EQ(d_dwpe.to_host(), with_wpe ? dwpe_c : dwpe0);  // untouched without a position table

  // A second backward accumulates again, and still matches the CPU doing the same.
  ops::encoder_backward<float>(dwte_c.data(), with_wpe ? dwpe_c.data() : nullptr, dout.data(),
                               tokens.data(), B, T_, C);
  cuda::encoder_backward(d_dwte.data(), with_wpe ? d_dwpe.data() : nullptr, d_dout.data(),
                         tokens.data(), B, T_, C);
  EXPECT_EQ(d_dwte.to_host(), dwte_c);
  EXPECT_EQ(d_dwpe.to_host(), with_wpe ? dwpe_c : dwpe0);
}

TEST(CudaEncoder, MatchesCpuBitwise) {
  SKIP_WITHOUT_DEVICE();
  // V = 7 over 74 positions: every token repeats about ten times, so each dwte row sums many
  // terms and the order matters.
  check_encoder(2, 37, 33, 7, true);
  check_encoder(2, 37, 33, 7, false);
  check_encoder(3, 33, 300, 1000,
                true);  // C past one 256-thread channel tile; most rows untouched
  check_encoder(4, 130, 96, 50,
                false);  // the largest first, then smaller: the workspace is reused
  check_encoder(1, 1, 1, 1, true);
  check_encoder(2, 8, 130, 3, true);
}

// Tokens in a sorted run and in reverse: the grouping by token must keep (b, t) order inside each
// group whatever the input order (a stable sort), here with one token repeated everywhere.
TEST(CudaEncoder, RepeatedTokenSumsInPositionOrder) {
  SKIP_WITHOUT_DEVICE();
  const int B = 3, T_ = 50, C = 5;
  const size_t BT = (size_t)B * T_;
  std::vector<int32_t> tokens(BT);
  for (size_t i = 0; i < BT; ++i) tokens[i] = i % 3 == 0 ? 2 : (int32_t)(BT - i) % 4;
  // Magnitudes spread over many binades, so a different summation order changes the bits.
  Vec dd = rand_vec(BT * C, 60);
  for (size_t i = 0; i < dd.size(); ++i)
    dd[i] = (double)(float)(dd[i] * std::ldexp(1.0, (int)(i % 40) - 20));
  const FVec dout = to_f(dd), dwte0 = to_f(rand_vec(4 * C, 61));
  FVec dwte_c = dwte0;
  ops::encoder_backward<float>(dwte_c.data(), nullptr, dout.data(), tokens.data(), B, T_, C);
  DeviceBuffer<float> d_dwte(dwte0), d_dout(dout);
  cuda::encoder_backward(d_dwte.data(), nullptr, d_dout.data(), tokens.data(), B, T_, C);
  EXPECT_EQ(d_dwte.to_host(), dwte_c);
}

TEST(CudaEncoder, RejectsNegativeToken) {  // checked on the host before any launch
  const std::vector<int32_t> tokens = {0, -1};
  EXPECT_THROW(cuda::encoder_backward(nullptr, nullptr, nullptr, tokens.data(), 1, 2, 4), Error);
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
