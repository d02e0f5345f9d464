#pragma once
// The Llama transformer block (pre-RMSNorm, rotary positions, grouped-query attention, SwiGLU):
//   r = x + o(attn(rope(q(h)), rope(k(h)), v(h))),  h = rmsnorm(x) * w_attn
//   out = r + down(silu(gate(h2)) * up(h2)),          h2 = rmsnorm(r) * w_ffn
// Biases on the projections are optional (Linear with or without). Under tensor parallelism
// (nn.h) q, k, v, gate and up are column-parallel, o and down row-parallel: this rank runs NH
// query heads and KVH kv heads (whole groups) and H of the MLP's hidden columns.
#include "nn/nn.h"

namespace lmf::nn {

template <class F>
struct RmsNorm {
  using S = ops::stat_t<F>;
  P<F> weight;  // (C)
  int C = 0;
  float eps = 1e-5f;
  const ops::Backend<F>* be = &ops::cpu_backend<F>();
  void forward(F* y /*(N,C)*/, S* rstd /*(N)*/, const F* x /*(N,C)*/, int N) const {
    be->rmsnorm_forward(y, rstd, x, weight.w, N, C, eps);
  }
  // res = a + b, then y = rmsnorm(res): the residual add fused with this norm (ops.h).
  void forward_add(F* res /*(N,C)*/, F* y /*(N,C)*/, S* rstd /*(N)*/, const F* a, const F* b, int N) const {
    be->residual_rmsnorm_forward(res, y, rstd, a, b, weight.w, N, C, eps);
  }
  // dx += ...: the residual-stream exception of the gradient rule.
  void backward(F* dx /*(N,C)*/, const F* dy, const F* x, const S* rstd, int N) const {
    be->rmsnorm_backward(dx, weight.dw, dy, x, weight.w, rstd, N, C);
  }
};

template <class F>
struct LlamaBlock {
  RmsNorm<F> attn_norm, ffn_norm;
  Linear<F> wq, wk, wv, wo, gate, up, down;
  int C = 0, NH = 0, KVH = 0, hs = 0, H = 0;  // width, heads, kv heads, head size, ffn hidden
  const double* inv_freq = nullptr;  // (hs/2) RoPE frequencies, owned by the model
  bool interleaved = false;
  bool recompute_mlp = true;  // SwiGLU's output recomputed in backward (else kept in Saved::act)
  TensorParallel tp;
  const ops::Backend<F>* be = &ops::cpu_backend<F>();  // inv_freq and every buffer in its memory
  using S = ops::stat_t<F>;

  // Binds the block and its layers to a backend.
  void set_backend(const ops::Backend<F>* b) {
    be = attn_norm.be = ffn_norm.be = b;
    for (Linear<F>* l : {&wq, &wk, &wv, &wo, &gate, &up, &down}) l->be = b;
  }

  int q_dim() const { return NH * hs; }  // Q: C without tensor parallelism
  int kv_dim() const { return KVH * hs; }

  // Activations saved by forward for backward; one slot per application of the block.
  struct Saved {
    F* h1;     // (N, C) attention-norm output
    S* rstd1;  // (N)
    F* q;      // (N, Q) after RoPE
    F* k;      // (N, KV) after RoPE
    F* v;      // (N, KV)
    F* atty;   // (N, Q) attention output, before o_proj
    S* lse;    // (B, NH, T)
    F* res;    // (N, C) x + attention branch
    F* h2;     // (N, C) ffn-norm output
    S* rstd2;  // (N)
    F* g;      // (N, H) gate_proj output
    F* u;      // (N, H) up_proj output
    F* act;    // (N, H) SwiGLU output; nullptr when recompute_mlp (recomputed in backward)
  };
  // Buffers shared by all blocks, reused layer after layer.
  struct Scratch {
    F* wide;      // (N, H): SwiGLU output in forward / recomputed, then dgate, in backward
    F* dwide;     // (N, H)
    F* dup;       // (N, H)
    F* dnarrow;   // (N, C)
    F* dnarrow2;  // (N, C)
    F* dq;        // (N, Q)
    F* dk;        // (N, KV)
    F* dv;        // (N, KV)
  };
  Sizes saved_size(int B, int T) const {  // as carve() takes them
    size_t N = size_t(B) * T, Q = q_dim(), KV = kv_dim();
    return {N * C * 3 + N * 2 * Q + N * 2 * KV + N * H * (recompute_mlp ? 2 : 3), N * 2 + size_t(B) * NH * T};
  }
  // Activations from p, statistics from q.
  Saved carve(F*& p, S*& q, int B, int T) const {
    size_t N = size_t(B) * T, Q = q_dim(), KV = kv_dim();
    Saved s;
    s.h1 = take(p, N * C);
    s.rstd1 = take(q, N);
    s.q = take(p, N * Q);
    s.k = take(p, N * KV);
    s.v = take(p, N * KV);
    s.atty = take(p, N * Q);
    s.lse = take(q, size_t(B) * NH * T);
    s.res = take(p, N * C);
    s.h2 = take(p, N * C);
    s.rstd2 = take(q, N);
    s.g = take(p, N * H);
    s.u = take(p, N * H);
    s.act = recompute_mlp ? nullptr : take(p, N * H);
    return s;
  }
  size_t scratch_size(int B, int T) const {
    size_t N = size_t(B) * T;
    return N * 3 * H + N * 2 * C + N * q_dim() + N * 2 * kv_dim();
  }
  Scratch carve_scratch(F*& p, int B, int T) const {
    size_t N = size_t(B) * T, KV = kv_dim();
    Scratch s;
    s.wide = take(p, N * H);
    s.dwide = take(p, N * H);
    s.dup = take(p, N * H);
    s.dnarrow = take(p, N * C);
    s.dnarrow2 = take(p, N * C);
    s.dq = take(p, N * q_dim());
    s.dk = take(p, N * KV);
    s.dv = take(p, N * KV);
    return s;
  }

  void forward(F* out /*(N,C)*/, const F* x /*(N,C)*/, Saved& s, Scratch& sc, int B, int T) const {
    int N = B * T;
    attn_norm.forward(s.h1, s.rstd1, x, N);
    wq.forward(s.q, s.h1, N);
    wk.forward(s.k, s.h1, N);
    wv.forward(s.v, s.h1, N);
    be->rope_forward(s.q, s.q, B, T, NH, hs, inv_freq, interleaved, 0);
    be->rope_forward(s.k, s.k, B, T, KVH, hs, inv_freq, interleaved, 0);
    be->attention_gqa_forward(s.atty, s.lse, s.q, s.k, s.v, B, T, NH, KVH, hs);
    wo.forward(sc.dnarrow, s.atty, N);  // dnarrow is free in forward
    tp.all_reduce(sc.dnarrow, size_t(N) * C);
    ffn_norm.forward_add(s.res, s.h2, s.rstd2, x, sc.dnarrow, N);  // res = x + attention branch
    gate.forward(s.g, s.h2, N);
    up.forward(s.u, s.h2, N);
    F* act = recompute_mlp ? sc.wide : s.act;
    be->swiglu_forward(act, s.g, s.u, size_t(N) * H);
    down.forward(out, act, N);
    tp.all_reduce(out, size_t(N) * C);
    be->residual_forward(out, out, s.res, size_t(N) * C);
  }

  // dres: on entry dL/d(out), on exit dL/dx (updated in place: the residual stream).
  void backward(F* dres /*(N,C)*/, const F* x /*(N,C)*/, const Saved& s, Scratch& sc, int B, int T) const {
    int N = B * T;
    size_t nc = size_t(N) * C, nh = size_t(N) * H;
    const F* act = s.act;
    if (recompute_mlp) {
      be->swiglu_forward(sc.wide, s.g, s.u, nh);  // recompute instead of storing (N, H)
      act = sc.wide;
    }
    down.backward(sc.dwide, dres, act, N);
    be->swiglu_backward(sc.wide /*dgate*/, sc.dup, sc.dwide, s.g, s.u, nh);
    gate.backward(sc.dnarrow, sc.wide, s.h2, N);
    up.backward(sc.dnarrow2, sc.dup, s.h2, N);
    be->residual_forward(sc.dnarrow, sc.dnarrow, sc.dnarrow2, nc);  // dh2 (this rank's part)
    tp.all_reduce(sc.dnarrow, nc);
    ffn_norm.backward(dres, sc.dnarrow, s.res, s.rstd2, N);          // dres = dL/d(res)
    wo.backward(sc.dnarrow, dres, s.atty, N);                        // datty
    be->attention_gqa_backward(sc.dq, sc.dk, sc.dv, sc.dnarrow, s.q, s.k, s.v, s.atty, s.lse, B, T, NH,
                                KVH, hs);
    be->rope_backward(sc.dq, sc.dq, B, T, NH, hs, inv_freq, interleaved, 0);
    be->rope_backward(sc.dk, sc.dk, B, T, KVH, hs, inv_freq, interleaved, 0);
    wq.backward(sc.dnarrow, sc.dq, s.h1, N);
    wk.backward(sc.dnarrow2, sc.dk, s.h1, N);
    be->residual_forward(sc.dnarrow, sc.dnarrow, sc.dnarrow2, nc);
    wv.backward(sc.dnarrow2, sc.dv, s.h1, N);
    be->residual_forward(sc.dnarrow, sc.dnarrow, sc.dnarrow2, nc);  // dh1 (this rank's part)
    tp.all_reduce(sc.dnarrow, nc);
    attn_norm.backward(dres, sc.dnarrow, x, s.rstd1, N);             // dres = dL/dx
  }
};

}  // namespace lmf::nn
