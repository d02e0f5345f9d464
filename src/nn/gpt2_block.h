#pragma once
// The GPT-2 transformer block (pre-LayerNorm):
//   r = x + proj(attn(qkv(ln1(x))));   out = r + fcproj(gelu(fc(ln2(r))))
// Under tensor parallelism (nn.h) qkv and fc are column-parallel, proj and fcproj row-parallel:
// this rank runs NH of the heads (attention width A = NH * head size) and M of the MLP's hidden
// columns; the widths below are this rank's.
#include "nn/nn.h"

namespace lmf::nn {

template <class F>
struct Gpt2Block {
  LayerNorm<F> ln1, ln2;
  Linear<F> qkv, proj, fc, fcproj;
  int C = 0;   // model width (the residual stream)
  int NH = 0;  // this rank's heads
  int A = 0;   // this rank's attention width, NH * head size (C without tensor parallelism)
  int M = 0;   // this rank's MLP hidden width (4C without tensor parallelism)
  bool recompute_mlp = true;  // GELU's output recomputed in backward (else kept in Saved::act)
  TensorParallel tp;
  const ops::Backend<F>* be = &ops::cpu_backend<F>();  // every buffer in its memory
  using S = ops::stat_t<F>;

  // Binds the block and its layers to a backend.
  void set_backend(const ops::Backend<F>* b) {
    be = ln1.be = ln2.be = b;
    for (Linear<F>* l : {&qkv, &proj, &fc, &fcproj}) l->be = b;
  }

  // Activations saved by forward for backward; one slot per application of the block.
  struct Saved {
    F* ln1;                   // (N, C)
    LayerNorm<F>::Saved ln1s;
    F* qkv;                   // (N, 3A)
    F* atty;                  // (N, A) attention output, before proj
    S* lse;                   // (B, NH, T)
    F* res;                   // (N, C) x + attention branch
    F* ln2;                   // (N, C)
    LayerNorm<F>::Saved ln2s;
    F* fch;                   // (N, M) fc output, before GELU
    F* act;                   // (N, M) GELU output; nullptr when recompute_mlp (recomputed in backward)
  };
  // Buffers shared by all blocks, reused layer after layer.
  struct Scratch {
    F* wide;     // (N, M): GELU output in forward / recomputed in backward (with recompute_mlp)
    F* dwide;    // (N, M)
    F* dnarrow;  // (N, C)
    F* dqkv;     // (N, 3A)
  };
  Sizes saved_size(int B, int T) const {  // as carve() takes them
    size_t N = size_t(B) * T;
    return {N * C * 3 + N * 4 * A + N * M * (recompute_mlp ? 1 : 2), N * 4 + size_t(B) * NH * T};
  }
  // Activations from p, statistics from q.
  Saved carve(F*& p, S*& q, int B, int T) const {
    size_t N = size_t(B) * T;
    Saved s;
    s.ln1 = take(p, N * C);
    s.ln1s = {take(q, N), take(q, N)};
    s.qkv = take(p, N * 3 * A);
    s.atty = take(p, N * A);
    s.lse = take(q, size_t(B) * NH * T);
    s.res = take(p, N * C);
    s.ln2 = take(p, N * C);
    s.ln2s = {take(q, N), take(q, N)};
    s.fch = take(p, N * M);
    s.act = recompute_mlp ? nullptr : take(p, N * M);
    return s;
  }
  size_t scratch_size(int B, int T) const { return size_t(B) * T * (2 * size_t(M) + C + 3 * size_t(A)); }
  Scratch carve_scratch(F*& p, int B, int T) const {
    size_t N = size_t(B) * T;
    Scratch s;
    s.wide = take(p, N * M);
    s.dwide = take(p, N * M);
    s.dnarrow = take(p, N * C);
    s.dqkv = take(p, N * 3 * A);
    return s;
  }

  void forward(F* out /*(N,C)*/, const F* x /*(N,C)*/, Saved& s, Scratch& sc, int B, int T) const {
    int N = B * T;
    ln1.forward(s.ln1, s.ln1s, x, N);
    qkv.forward(s.qkv, s.ln1, N);
    be->attention_forward(s.atty, s.lse, s.qkv, B, T, A, NH);
    proj.forward(sc.dnarrow, s.atty, N);  // dnarrow is free in forward: use it for proj's output
    tp.all_reduce(sc.dnarrow, size_t(N) * C);
    ln2.forward_add(s.res, s.ln2, s.ln2s, x, sc.dnarrow, N);  // res = x + attention branch
    F* act = recompute_mlp ? sc.wide : s.act;
    fc.forward_gelu(act, s.fch, s.ln2, N);  // fch = fc(ln2), act = gelu(fch): one fused op
    fcproj.forward(out, act, N);
    tp.all_reduce(out, size_t(N) * C);
    be->residual_forward(out, out, s.res, size_t(N) * C);
  }

  // dres: on entry dL/d(out), on exit dL/dx (updated in place: the residual stream).
  void backward(F* dres /*(N,C)*/, const F* x /*(N,C)*/, const Saved& s, Scratch& sc, int B, int T) const {
    int N = B * T;
    size_t nm = size_t(N) * M;
    const F* act = s.act;
    if (recompute_mlp) {
      be->gelu_forward(sc.wide, s.fch, nm);  // recompute instead of storing (N, M)
      act = sc.wide;
    }
    fcproj.backward_dgelu(sc.dwide, dres, act, s.fch, N);  // dfch = gelu'(fch) d(act): one fused op
    fc.backward(sc.dnarrow, sc.dwide, s.ln2, N);           // dln2 (this rank's columns' part)
    tp.all_reduce(sc.dnarrow, size_t(N) * C);
    ln2.backward(dres, sc.dnarrow, s.res, s.ln2s, N);  // dres = dL/d(res)
    proj.backward(sc.dnarrow, dres, s.atty, N);        // datty (N, A)
    be->attention_backward(sc.dqkv, sc.dnarrow, s.qkv, s.atty, s.lse, B, T, A, NH);
    qkv.backward(sc.dnarrow, sc.dqkv, s.ln1, N);  // dln1 (this rank's heads' part)
    tp.all_reduce(sc.dnarrow, size_t(N) * C);
    ln1.backward(dres, sc.dnarrow, x, s.ln1s, N);  // dres = dL/dx
  }
};

}  // namespace lmf::nn
