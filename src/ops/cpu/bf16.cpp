// The CPU backend over bf16 storage (ops/backend.h, cpu_backend<bf16>): the specification of what
// a GPU computes when activations and the compute copy of the weights are stored in bf16. Every op
// widens its bf16 inputs to float (exactly), runs the float op of the bf16 matmul-precision table
// (so the products of the GEMMs, the classifier and attention read bf16 operands, and the
// intermediate operands a tensor core would read, dlogits, P and dS, are rounded to bf16 too), and
// rounds each bf16 result once, to nearest even, as a kernel that computes in float and stores bf16
// does. Master-typed (dw, db: accumulated) and statistics-typed (mean, rstd, lse, losses, logits)
// arguments are float already and pass through. An output that accumulates (the norms' dinp, the
// residual stream's gradient) is widened, accumulated in float and rounded.
//
// This is for testing and for predicting a GPU run, not for speed: each call copies its operands.
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "ops/backend.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/rounded.h"

namespace lmf::ops {
namespace {

using Wide = std::vector<float>;

// float copy of x (n); empty for nullptr (an optional operand), whose data() is then nullptr too.
Wide widen(const bf16* x, size_t n) {
  if (!x) return {};
  Wide w(n);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; ++i) w[i] = float(x[i]);
  return w;
}
float* data_or_null(Wide& w) { return w.empty() ? nullptr : w.data(); }

// dst[0, n) = src rounded to bf16.
void narrow(bf16* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; ++i) dst[i] = bf16(src[i]);
}
void narrow(bf16* dst, const Wide& src) { narrow(dst, src.data(), src.size()); }

// A float output of n values that is rounded into `dst` (if not null) when the scope ends.
// accumulate: it starts as dst's values (an op that adds into its output), else as zeros.
class Out {
 public:
  Out(bf16* dst, size_t n, bool accumulate = false) : dst_(dst) {
    if (!dst) return;
    v_ = accumulate ? widen(dst, n) : Wide(n);
  }
  ~Out() {
    if (dst_) narrow(dst_, v_);
  }
  Out(const Out&) = delete;
  Out& operator=(const Out&) = delete;
  float* get() { return dst_ ? v_.data() : nullptr; }

 private:
  bf16* dst_;
  Wide v_;
};

const Backend<float>& f32() { return cpu_backend<float>(MatmulPrecision::bf16); }

// A product of at most kSkinnyRows rows (a decoder's step): out (N, OC) = inp w^T (+ bias) in float,
// read from the bf16 weights as they are (cpu::gemm_skinny over bf16), not from a widened copy of
// them per call: the float op's own computation (the bias seeded, then gemm_skinny), bit for bit.
void skinny_product(float* out, const bf16* inp, const bf16* w, const bf16* bias, int N, int C, int OC) {
  Wide i = widen(inp, size_t(N) * C);
  float beta = 0.0f;
  if (bias) {
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < OC; ++o) out[size_t(n) * OC + o] = float(bias[o]);
    beta = 1.0f;
  }
  cpu::gemm_skinny(N, OC, C, 1.0f, i.data(), C, w, C, beta, out, OC);
}

void matmul_forward(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int N, int C, int OC) {
  Out o(out, size_t(N) * OC);
  if (N <= cpu::kSkinnyRows) return skinny_product(o.get(), inp, w, bias, N, C, OC);
  Wide i = widen(inp, size_t(N) * C), ww = widen(w, size_t(OC) * C), b = widen(bias, size_t(OC));
  f32().matmul_forward(o.get(), i.data(), ww.data(), data_or_null(b), N, C, OC);
}
void matmul_backward(bf16* dinp, float* dw, float* dbias, const bf16* dout, const bf16* inp, const bf16* w, int N,
                     int C, int OC) {
  Wide d = widen(dout, size_t(N) * OC), i = widen(inp, size_t(N) * C), ww = widen(w, size_t(OC) * C);
  Out di(dinp, size_t(N) * C);
  f32().matmul_backward(di.get(), dw, dbias, d.data(), i.data(), ww.data(), N, C, OC);
}
void encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B, int T, int C) {
  // The rows read are few of wte's V; widen only them: row t of `rows` is wte[tokens[t]].
  const size_t N = size_t(B) * T;
  Wide rows(N * C), pos = widen(wpe, size_t(T) * C);
  for (size_t n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) rows[n * C + c] = float(wte[size_t(tokens[n]) * C + c]);
  std::vector<int32_t> ids(N);
  for (size_t n = 0; n < N; ++n) ids[n] = int32_t(n);
  Out o(out, N * C);
  f32().encoder_forward(o.get(), ids.data(), rows.data(), data_or_null(pos), B, T, C);
}
void encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int B, int T, int C) {
  Wide d = widen(dout, size_t(B) * T * C);
  f32().encoder_backward(dwte, dwpe, d.data(), tokens, B, T, C);
}
void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w, const bf16* b, int N,
                       int C) {
  Wide i = widen(inp, size_t(N) * C), ww = widen(w, C), bb = widen(b, C);
  Out o(out, size_t(N) * C);
  f32().layernorm_forward(o.get(), mean, rstd, i.data(), ww.data(), bb.data(), N, C);
}
void layernorm_backward(bf16* dinp, float* dw, float* db, const bf16* dout, const bf16* inp, const bf16* w,
                        const float* mean, const float* rstd, int N, int C) {
  Wide d = widen(dout, size_t(N) * C), i = widen(inp, size_t(N) * C), ww = widen(w, C);
  Out di(dinp, size_t(N) * C, /*accumulate=*/true);
  f32().layernorm_backward(di.get(), dw, db, d.data(), i.data(), ww.data(), mean, rstd, N, C);
}
void gelu_forward(bf16* out, const bf16* inp, size_t n) {
  Wide i = widen(inp, n);
  Out o(out, n);
  f32().gelu_forward(o.get(), i.data(), n);
}
void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
  Wide i = widen(inp, n), d = widen(dout, n);
  Out di(dinp, n);
  f32().gelu_backward(di.get(), i.data(), d.data(), n);
}
// The float composition (cpu/matmul_gelu.h), rounded once: GELU acts on the GEMM's float result,
// as in a GPU epilogue; pre is the same float result rounded.
void matmul_gelu_forward(bf16* out, bf16* pre, const bf16* inp, const bf16* w, const bf16* bias, int N, int C,
                         int OC) {
  Wide i = widen(inp, size_t(N) * C), ww = widen(w, size_t(OC) * C), b = widen(bias, size_t(OC));
  Out o(out, size_t(N) * OC), p(pre, size_t(N) * OC);
  f32().matmul_gelu_forward(o.get(), p.get(), i.data(), ww.data(), data_or_null(b), N, C, OC);
}
// dout w in float, times gelu'(pre) (pre as stored), rounded once.
void matmul_dgelu_backward(bf16* dinp, float* dw, float* dbias, const bf16* dout, const bf16* inp, const bf16* w,
                           const bf16* pre, int N, int C, int OC) {
  Wide d = widen(dout, size_t(N) * OC), i = widen(inp, size_t(N) * C), ww = widen(w, size_t(OC) * C),
       p = widen(pre, size_t(N) * C);
  Out di(dinp, size_t(N) * C);
  f32().matmul_dgelu_backward(di.get(), dw, dbias, d.data(), i.data(), ww.data(), p.data(), N, C, OC);
}
void residual_forward(bf16* out, const bf16* a, const bf16* b, size_t n) {
  Wide aa = widen(a, n), bb = widen(b, n);
  Out o(out, n);
  f32().residual_forward(o.get(), aa.data(), bb.data(), n);
}
// The norm reads the sum as stored, rounded to bf16 (what a kernel that writes res and then
// normalises its own registers must reproduce).
void residual_layernorm_forward(bf16* res, bf16* out, float* mean, float* rstd, const bf16* a, const bf16* b,
                                const bf16* w, const bf16* bias, int N, int C) {
  residual_forward(res, a, b, size_t(N) * C);
  layernorm_forward(out, mean, rstd, res, w, bias, N, C);
}
void attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH) {
  Wide q = widen(qkv, size_t(B) * T * 3 * C);
  Out o(out, size_t(B) * T * C);
  f32().attention_forward(o.get(), lse, q.data(), B, T, C, NH);
}
void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse, int B,
                        int T, int C, int NH) {
  const size_t N = size_t(B) * T;
  Wide d = widen(dout, N * C), q = widen(qkv, N * 3 * C), o = widen(out, N * C);
  Out dq(dqkv, N * 3 * C);
  f32().attention_backward(dq.get(), d.data(), q.data(), o.data(), lse, B, T, C, NH);
}
double classifier_ce_forward(float* losses, bf16* dx, float* dw, const bf16* x, const bf16* w,
                             const int32_t* targets, const float* dloss, int N, int C, int V) {
  Wide xx = widen(x, size_t(N) * C), ww = widen(w, size_t(V) * C);
  Out d(dx, size_t(N) * C);
  return f32().classifier_ce_forward(losses, d.get(), dw, xx.data(), ww.data(), targets, dloss, N, C, V);
}
void classifier_logits(float* logits, const bf16* x, const bf16* w, int N, int C, int V) {
  if (N <= cpu::kSkinnyRows) return skinny_product(logits, x, w, nullptr, N, C, V);
  Wide xx = widen(x, size_t(N) * C), ww = widen(w, size_t(V) * C);
  f32().classifier_logits(logits, xx.data(), ww.data(), N, C, V);
}
void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* w, int N, int C, float eps) {
  Wide i = widen(inp, size_t(N) * C), ww = widen(w, C);
  Out o(out, size_t(N) * C);
  f32().rmsnorm_forward(o.get(), rstd, i.data(), ww.data(), N, C, eps);
}
void residual_rmsnorm_forward(bf16* res, bf16* out, float* rstd, const bf16* a, const bf16* b, const bf16* w, int N,
                              int C, float eps) {
  residual_forward(res, a, b, size_t(N) * C);
  rmsnorm_forward(out, rstd, res, w, N, C, eps);
}
void rmsnorm_backward(bf16* dinp, float* dw, const bf16* dout, const bf16* inp, const bf16* w, const float* rstd,
                      int N, int C) {
  Wide d = widen(dout, size_t(N) * C), i = widen(inp, size_t(N) * C), ww = widen(w, C);
  Out di(dinp, size_t(N) * C, /*accumulate=*/true);
  f32().rmsnorm_backward(di.get(), dw, d.data(), i.data(), ww.data(), rstd, N, C);
}
void rope_forward(bf16* out, const bf16* inp, int B, int T, int NH, int hs, const double* inv_freq, bool interleaved,
                  int pos0) {
  const size_t n = size_t(B) * T * NH * hs;
  Wide i = widen(inp, n);  // before `out` is written: out == inp is allowed
  Out o(out, n);
  f32().rope_forward(o.get(), i.data(), B, T, NH, hs, inv_freq, interleaved, pos0);
}
void rope_backward(bf16* dinp, const bf16* dout, int B, int T, int NH, int hs, const double* inv_freq,
                   bool interleaved, int pos0) {
  const size_t n = size_t(B) * T * NH * hs;
  Wide d = widen(dout, n);
  Out di(dinp, n);
  f32().rope_backward(di.get(), d.data(), B, T, NH, hs, inv_freq, interleaved, pos0);
}
void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, size_t n) {
  Wide g = widen(gate, n), u = widen(up, n);
  Out o(out, n);
  f32().swiglu_forward(o.get(), g.data(), u.data(), n);
}
void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, size_t n) {
  Wide d = widen(dout, n), g = widen(gate, n), u = widen(up, n);
  Out dg(dgate, n), du(dup, n);
  f32().swiglu_backward(dg.get(), du.get(), d.data(), g.data(), u.data(), n);
}
void attention_gqa_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int NH,
                           int KVH, int hs) {
  const size_t N = size_t(B) * T, Q = size_t(NH) * hs, KV = size_t(KVH) * hs;
  Wide qq = widen(q, N * Q), kk = widen(k, N * KV), vv = widen(v, N * KV);
  Out o(out, N * Q);
  f32().attention_gqa_forward(o.get(), lse, qq.data(), kk.data(), vv.data(), B, T, NH, KVH, hs);
}
void attention_gqa_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                            const bf16* v, const bf16* out, const float* lse, int B, int T, int NH, int KVH, int hs) {
  const size_t N = size_t(B) * T, Q = size_t(NH) * hs, KV = size_t(KVH) * hs;
  Wide d = widen(dout, N * Q), qq = widen(q, N * Q), kk = widen(k, N * KV), vv = widen(v, N * KV),
       o = widen(out, N * Q);
  Out dqo(dq, N * Q), dko(dk, N * KV), dvo(dv, N * KV);
  f32().attention_gqa_backward(dqo.get(), dko.get(), dvo.get(), d.data(), qq.data(), kk.data(), vv.data(), o.data(),
                               lse, B, T, NH, KVH, hs);
}
// The float op on the widened values, which it reads from the bf16 queries and caches as they are
// (a step reads every cache once; a widened copy of them per call would cost more than the op).
void attention_decode(bf16* y, float* scratch, const bf16* q, const bf16* k, const bf16* v, DecodeLayout c, int NH,
                      int KVH, int hs) {
  Out o(y, size_t(c.B) * NH * hs);
  ops::attention_decode(o.get(), scratch, q, k, v, c, NH, KVH, hs);
}
void fill(bf16* x, bf16 value, size_t n) { std::fill(x, x + n, value); }
void fill_stat(float* x, float value, size_t n) { std::fill(x, x + n, value); }
void copy(bf16* dst, const bf16* src, size_t n) { std::copy(src, src + n, dst); }
void to_compute(bf16* dst, const float* src, size_t n) { narrow(dst, src, n); }

Backend<bf16> make() {
  const Backend<float>& f = f32();
  return Backend<bf16>{
      .name = "cpu",
      .memory = f.memory,
      .matmul_precision = MatmulPrecision::bf16,
      .matmul_forward = &matmul_forward,
      .matmul_backward = &matmul_backward,
      .encoder_forward = &encoder_forward,
      .encoder_backward = &encoder_backward,
      .layernorm_forward = &layernorm_forward,
      .layernorm_backward = &layernorm_backward,
      .gelu_forward = &gelu_forward,
      .gelu_backward = &gelu_backward,
      .matmul_gelu_forward = &matmul_gelu_forward,
      .matmul_dgelu_backward = &matmul_dgelu_backward,
      .residual_forward = &residual_forward,
      .residual_layernorm_forward = &residual_layernorm_forward,
      .residual_rmsnorm_forward = &residual_rmsnorm_forward,
      .attention_forward = &attention_forward,
      .attention_backward = &attention_backward,
      .classifier_ce_forward = &classifier_ce_forward,
      .classifier_logits = &classifier_logits,
      .rmsnorm_forward = &rmsnorm_forward,
      .rmsnorm_backward = &rmsnorm_backward,
      .rope_forward = &rope_forward,
      .rope_backward = &rope_backward,
      .swiglu_forward = &swiglu_forward,
      .swiglu_backward = &swiglu_backward,
      .attention_gqa_forward = &attention_gqa_forward,
      .attention_gqa_backward = &attention_gqa_backward,
      .attention_decode = &attention_decode,
      .fill = &fill,
      .fill_stat = &fill_stat,
      .copy = &copy,
      .to_compute = &to_compute,
      .adamw_update = f.adamw_update,
      .adamw_chunks = f.adamw_chunks,
      .sum_squares = f.sum_squares,
      .scale = f.scale,
      .synchronize = f.synchronize,
      .peak_memory_bytes = f.peak_memory_bytes,
  };
}

}  // namespace

template <>
const Backend<bf16>& cpu_backend<bf16>(MatmulPrecision p) {
  if (p == MatmulPrecision::tf32)
    throw UserError("matmul precision tf32 does not exist for bf16 storage (its products are bf16)");
  static const Backend<bf16> b = make();
  return b;
}

}  // namespace lmf::ops
