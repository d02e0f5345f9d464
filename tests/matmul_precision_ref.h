#pragma once
// Shared by tests/unit/test_matmul_precision.cpp (the CPU's emulation of the tf32 / bf16 GEMM
// modes) and tests/gpu/test_cuda_matmul.cpp (the tensor-core GEMMs): exact references of the
// GEMM ops with rounded operands, and the bounds.
//
// A mode's GEMM computes sum_k r(a_k) r(b_k), r = round_operand, in fp32. Against the exact sum
// of the ROUNDED operands only the fp32 accumulation errs: gamma32(K) sum|terms| (op_tolerance.h).
// Against the exact sum of the UNROUNDED operands each product also carries a relative error
// below 2u' + u'^2 (u' = twice the operand's unit roundoff, so that a GPU that truncates rather
// than rounds also passes): the sum's error is below (2u' + u'^2 + gamma32(K)) sum|terms|, for any
// rounding rule and summation order.
#include <cmath>
#include <cstdint>
#include <vector>

#include "op_tolerance.h"
#include "ops/backend.h"

namespace lmf::test {

// The operand precision of p applied to every element (the values stay doubles; each is a float).
inline Vec rounded(const Vec& v, ops::MatmulPrecision p) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = (double)ops::round_operand((float)v[i], p);
  return r;
}

// The relative error of one product of two operands of precision p against the unrounded
// product, allowing rounding toward zero (unit roundoff doubled): 2u' + u'^2, u' = 2u.
inline double product_error(ops::MatmulPrecision p) {
  const double u = 2 * ops::operand_unit_roundoff(p);
  return 2 * u + u * u;
}

// The exact classifier of the rounded-operand mode, in double (the CPU's and the GPU's emulated
// computation without its fp32 rounding): logits = r(x) r(w)^T, losses, dlogits =
// (softmax - onehot) dloss; if grad, dx = r(dlogits) r(w) (assigned) and dw += r(dlogits)^T r(x).
// Targets < 0 are ignored (loss 0, zero dlogits row).
struct ClassifierRef {
  Vec losses, dx, dw, dlogits;
};
inline ClassifierRef classifier_rounded_ref(const Vec& x, const Vec& w, const Vec& dw0,
                                            const std::vector<int32_t>& targets, const Vec& dloss,
                                            int N, int C, int V, ops::MatmulPrecision p) {
  const Vec rx = rounded(x, p), rw = rounded(w, p);
  ClassifierRef r{Vec(N), Vec((size_t)N * C), dw0, Vec((size_t)N * V)};
  Vec l(V);
  for (int i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;
    double mx = -INFINITY;
    for (int v = 0; v < V; ++v) {
      double s = 0;
      for (int c = 0; c < C; ++c) s += rx[(size_t)i * C + c] * rw[(size_t)v * C + c];
      l[v] = s;
      mx = std::max(mx, s);
    }
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
    r.losses[i] = mx + std::log(sum) - l[targets[i]];
    for (int v = 0; v < V; ++v)
      r.dlogits[(size_t)i * V + v] =
          (std::exp(l[v] - mx) / sum - (v == targets[i] ? 1.0 : 0.0)) * dloss[i];
  }
  // The modes round the fp32 dlogits; the reference rounds the exact ones (a value near a
  // rounding boundary may land on the other side: the tests allow for that, see their bounds).
  const Vec rdl = rounded(r.dlogits, p);
  for (int i = 0; i < N; ++i)
    for (int v = 0; v < V; ++v) {
      const double d = rdl[(size_t)i * V + v];
      if (d == 0) continue;
      for (int c = 0; c < C; ++c) {
        r.dx[(size_t)i * C + c] += d * rw[(size_t)v * C + c];
        r.dw[(size_t)v * C + c] += d * rx[(size_t)i * C + c];
      }
    }
  return r;
}

}  // namespace lmf::test
