// Attention of one new query per sequence over its KV cache, for decoding (ops.h attention_decode):
// the plain loops of the KV-cache decoders (infer/decoder.cpp), the (head, sequence) pairs over the
// threads (each pair's arithmetic is the same whatever thread runs it). A decode step is one row
// of causal attention per sequence; its cost is O(T hs) per pair, reading the whole cache. The
// pairs go head by head, a head's sequences in a row, so the rows of a shared prefix one thread
// reads for one sequence are still in its cache for the next. A score q . k_t is a sum in
// simd.h's fixed lane order (the float and the bf16 caches' kernels compute the same numbers on
// the same values); y's sum over t is in t order, each element its own.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/half.h"
#include "ops/cpu/simd.h"
#include "ops/ops.h"

namespace lmf::ops {

namespace {

using cpu::dot_lanes;
using cpu::lane_value;

// One (head, sequence) pair: y (hs) over its T positions, a (T) the scratch, row(kv, t) the row
// of position t of k or v at this head's columns; F the arithmetic's type, E the elements'.
template <class F, class E, class Row>
[[gnu::always_inline]] inline void one_pair(F* y, F* a, const E* qh, const E* k, const E* v, const Row& row, int T,
                                            int hs, F scale) {
  F mx = -std::numeric_limits<F>::infinity();
  for (int t = 0; t < T; ++t) {
    a[t] = dot_lanes<F>(qh, row(k, t), hs) * scale;
    mx = std::max(mx, a[t]);
  }
  F z = 0;
  for (int t = 0; t < T; ++t) z += (a[t] = std::exp(a[t] - mx));
  std::fill(y, y + hs, F(0));
  for (int t = 0; t < T; ++t) {
    const E* vt = row(v, t);
    const F p = a[t] / z;
#pragma omp simd
    for (int d = 0; d < hs; ++d) y[d] += p * lane_value(vt[d]);
  }
}

// Row t of the cache kv for the sequence whose own cache is `own` elements in: the shared prefix's
// rows are sequence 0's.
template <class E>
struct Row {
  int shared, ld;
  size_t own, koff;
  const E* operator()(const E* kv, int t) const { return kv + (t < shared ? 0 : own) + size_t(t) * ld + koff; }
};

// The pair's kernel per ISA (simd.h's clones), for float and bf16 elements; double, for the tests'
// reference, unspecialised.
LMF_CLONES void pair(float* y, float* a, const float* qh, const float* k, const float* v, Row<float> row, int T, int hs,
                     float scale) {
  one_pair(y, a, qh, k, v, row, T, hs, scale);
}
LMF_CLONES void pair(float* y, float* a, const bf16* qh, const bf16* k, const bf16* v, Row<bf16> row, int T, int hs,
                     float scale) {
  one_pair(y, a, qh, k, v, row, T, hs, scale);
}
void pair(double* y, double* a, const double* qh, const double* k, const double* v, Row<double> row, int T, int hs,
          double scale) {
  one_pair(y, a, qh, k, v, row, T, hs, scale);
}

// The op over elements of type E (F, or bf16 read as it is), computing in F.
template <class F, class E>
void decode(F* y, F* scratch, const E* q, const E* k, const E* v, DecodeLayout c, int NH, int KVH, int hs) {
  LMF_CHECK(decode_layout_ok(c, NH, KVH, hs),
            "attention_decode: B={} T={} shared={} ld={} seq={} q_ld={} NH={} KVH={} hs={}", c.B, c.T, c.shared, c.ld,
            c.seq, c.q_ld, NH, KVH, hs);
  const F scale = F(1) / std::sqrt(F(hs));
  const int group = NH / KVH, T = c.T;
  const int pairs = NH * c.B;
#pragma omp parallel for schedule(static) if (size_t(T) * pairs * hs >= (size_t(1) << 15))
  for (int i = 0; i < pairs; ++i) {
    const int h = i / c.B, b = i % c.B;
    const Row<E> row{c.shared, c.ld, size_t(b) * c.seq, size_t(h / group) * hs};
    pair(y + (size_t(b) * NH + h) * hs, scratch + (size_t(b) * NH + h) * T, q + size_t(b) * c.q_ld + size_t(h) * hs,
         k, v, row, T, hs, scale);
  }
}

}  // namespace

template <class F>
void attention_decode(F* y, F* scratch, const F* q, const F* k, const F* v, DecodeLayout c, int NH, int KVH,
                      int hs) {
  decode(y, scratch, q, k, v, c, NH, KVH, hs);
}
void attention_decode(float* y, float* scratch, const bf16* q, const bf16* k, const bf16* v, DecodeLayout c, int NH,
                      int KVH, int hs) {
  decode(y, scratch, q, k, v, c, NH, KVH, hs);
}

template void attention_decode<float>(float*, float*, const float*, const float*, const float*, DecodeLayout, int, int,
                                      int);
template void attention_decode<double>(double*, double*, const double*, const double*, const double*, DecodeLayout,
                                       int, int, int);

}  // namespace lmf::ops
