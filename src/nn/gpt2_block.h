#pragma once
// The GPT-2 transformer block (pre-LayerNorm):
//   r = x + proj(attn(qkv(ln1(x))));   out = r + fcproj(gelu(fc(ln2(r))))
#include "nn/nn.h"

namespace lmf::nn {

template <class F>
struct Gpt2Block {
  LayerNorm<F> ln1, ln2;
  Linear<F> qkv, proj, fc, fcproj;
  int C = 0, NH = 0;

  // Activations saved by forward for backward; one slot per application of the block.
  struct Saved {
    F* ln1;                   // (N, C)
    LayerNorm<F>::Saved ln1s;
    F* qkv;                   // (N, 3C)
    F* atty;                  // (N, C) attention output, before proj
    F* lse;                   // (B, NH, T)
    F* res;                   // (N, C) x + attention branch
    F* ln2;                   // (N, C)
    LayerNorm<F>::Saved ln2s;
    F* fch;                   // (N, 4C) fc output, before GELU (GELU is recomputed in backward)
  };
  // Buffers shared by all blocks, reused layer after layer.
  struct Scratch {
    F* wide;   // (N, 4C): GELU output in forward / recomputed in backward
    F* dwide;  // (N, 4C)
    F* dnarrow;  // (N, C)
    F* dqkv;   // (N, 3C)
  };
  static size_t saved_size(int B, int T, int C, int NH) {
    size_t N = size_t(B) * T;
    return N * C * 4 + N * 3 * C + N * 4 * C + N * 4 + size_t(B) * NH * T;  // as carve() takes it
  }
  static Saved carve(F*& p, int B, int T, int C, int NH) {
    size_t N = size_t(B) * T;
    Saved s;
    auto take = [&p](size_t n) { F* q = p; p += n; return q; };
    s.ln1 = take(N * C);
    s.ln1s = {take(N), take(N)};
    s.qkv = take(N * 3 * C);
    s.atty = take(N * C);
    s.lse = take(size_t(B) * NH * T);
    s.res = take(N * C);
    s.ln2 = take(N * C);
    s.ln2s = {take(N), take(N)};
    s.fch = take(N * 4 * C);
    return s;
  }

  void forward(F* out /*(N,C)*/, const F* x /*(N,C)*/, Saved& s, Scratch& sc, int B, int T) const {
    int N = B * T;
    ln1.forward(s.ln1, s.ln1s, x, N);
    qkv.forward(s.qkv, s.ln1, N);
    ops::attention_forward(s.atty, s.lse, s.qkv, B, T, C, NH);
    proj.forward(sc.dnarrow, s.atty, N);  // dnarrow is free in forward: use it for proj's output
    ops::residual_forward(s.res, x, sc.dnarrow, size_t(N) * C);
    ln2.forward(s.ln2, s.ln2s, s.res, N);
    fc.forward(s.fch, s.ln2, N);
    ops::gelu_forward(sc.wide, s.fch, size_t(N) * 4 * C);
    fcproj.forward(out, sc.wide, N);
    ops::residual_forward(out, out, s.res, size_t(N) * C);
  }

  // dres: on entry dL/d(out), on exit dL/dx (updated in place: the residual stream).
  void backward(F* dres /*(N,C)*/, const F* x /*(N,C)*/, const Saved& s, Scratch& sc, int B, int T) const {
    int N = B * T;
    size_t n4 = size_t(N) * 4 * C;
    ops::gelu_forward(sc.wide, s.fch, n4);             // recompute instead of storing (N, 4C)
    fcproj.backward(sc.dwide, dres, sc.wide, N);       // dgelu
    ops::gelu_backward(sc.dwide, s.fch, sc.dwide, n4);  // dfch (in place)
    fc.backward(sc.dnarrow, sc.dwide, s.ln2, N);       // dln2
    ln2.backward(dres, sc.dnarrow, s.res, s.ln2s, N);  // dres = dL/d(res)
    proj.backward(sc.dnarrow, dres, s.atty, N);        // datty
    ops::attention_backward(sc.dqkv, sc.dnarrow, s.qkv, s.atty, s.lse, B, T, C, NH);
    qkv.backward(sc.dnarrow, sc.dqkv, s.ln1, N);       // dln1
    ln1.backward(dres, sc.dnarrow, x, s.ln1s, N);      // dres = dL/dx
  }
};

}  // namespace lmf::nn
