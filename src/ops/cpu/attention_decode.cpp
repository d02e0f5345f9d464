// Attention of one new query over a KV cache, for decoding (ops.h attention_decode): the plain
// loops of the KV-cache decoders (infer/decoder.cpp), the heads over the threads (each head's
// arithmetic is the same whatever thread runs it). A decode step is one row of causal attention;
// its cost is O(T hs) per head, reading the whole cache: 8% of GPT-2's step at T = 750.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "ops/ops.h"

namespace lmf::ops {

template <class F>
void attention_decode(F* y, F* scratch, const F* q, const F* k, const F* v, int T, int NH, int KVH, int hs,
                      int ld) {
  LMF_CHECK(T > 0 && NH > 0 && KVH > 0 && NH % KVH == 0 && hs > 0 && ld >= KVH * hs,
            "attention_decode: T={} NH={} KVH={} hs={} ld={}", T, NH, KVH, hs, ld);
  const F scale = F(1) / std::sqrt(F(hs));
  const int group = NH / KVH;
#pragma omp parallel for schedule(static) if (size_t(T) * NH * hs >= (size_t(1) << 15))
  for (int h = 0; h < NH; ++h) {
    const F* qh = q + size_t(h) * hs;
    const size_t koff = size_t(h / group) * hs;
    F* a = scratch + size_t(h) * T;
    F mx = -std::numeric_limits<F>::infinity();
    for (int t = 0; t < T; ++t) {
      const F* kt = k + size_t(t) * ld + koff;
      F s = 0;
      for (int d = 0; d < hs; ++d) s += qh[d] * kt[d];
      a[t] = s * scale;
      mx = std::max(mx, a[t]);
    }
    F z = 0;
    for (int t = 0; t < T; ++t) z += (a[t] = std::exp(a[t] - mx));
    F* yh = y + size_t(h) * hs;
    std::fill(yh, yh + hs, F(0));
    for (int t = 0; t < T; ++t) {
      const F* vt = v + size_t(t) * ld + koff;
      const F p = a[t] / z;
      for (int d = 0; d < hs; ++d) yh[d] += p * vt[d];
    }
  }
}

template void attention_decode<float>(float*, float*, const float*, const float*, const float*, int, int, int, int,
                                      int);
template void attention_decode<double>(double*, double*, const double*, const double*, const double*, int, int, int,
                                       int, int);

}  // namespace lmf::ops
