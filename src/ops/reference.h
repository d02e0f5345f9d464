#pragma once
// Plain references for the ops in ops.h: the specification the fast kernels are tested against.
// Written to be obviously right, not fast: naive loops, the full (T, T) attention matrix, the
// full (N, V) logits, the textbook softmax Jacobian. Templates over the number type so they run
// in double. Used only by tests and benchmarks. Same argument conventions as ops.h (including
// which gradients accumulate).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace lmf::ops::ref {

// out (N, OC) = inp (N, C) @ w^T (OC, C) + bias (OC) or nullptr
template <class T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC) {
  for (int i = 0; i < N; ++i)
    for (int o = 0; o < OC; ++o) {
      T s = bias ? bias[o] : T(0);
      for (int c = 0; c < C; ++c) s += inp[(size_t)i * C + c] * w[(size_t)o * C + c];
      out[(size_t)i * OC + o] = s;
    }
}

// dinp (N, C) = dout @ w (if non-null); dw (OC, C) += dout^T @ inp; dbias (OC) += colsum(dout)
template <class T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                     int C, int OC) {
  if (dinp)
    for (int i = 0; i < N; ++i)
      for (int c = 0; c < C; ++c) {
        T s = 0;
        for (int o = 0; o < OC; ++o) s += dout[(size_t)i * OC + o] * w[(size_t)o * C + c];
        dinp[(size_t)i * C + c] = s;
      }
  for (int o = 0; o < OC; ++o)
    for (int c = 0; c < C; ++c) {
      T s = 0;
      for (int i = 0; i < N; ++i) s += dout[(size_t)i * OC + o] * inp[(size_t)i * C + c];
      dw[(size_t)o * C + c] += s;
    }
  if (dbias)
    for (int o = 0; o < OC; ++o) {
      T s = 0;
      for (int i = 0; i < N; ++i) s += dout[(size_t)i * OC + o];
      dbias[o] += s;
    }
}

// out (B, T, C) = wte (V, C)[tokens (B, T)] + wpe (maxT, C)[t]
template <class T>
void encoder_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_,
                     int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int c = 0; c < C; ++c) {
        const size_t bt = (size_t)b * T_ + t;
        out[bt * C + c] = wte[(size_t)tokens[bt] * C + c] + (wpe ? wpe[(size_t)t * C + c] : T(0));
      }
}

template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_,
                      int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int c = 0; c < C; ++c) {
        const size_t bt = (size_t)b * T_ + t;
        dwte[(size_t)tokens[bt] * C + c] += dout[bt * C + c];
        if (dwpe) dwpe[(size_t)t * C + c] += dout[bt * C + c];
      }
}

// out (N, C); mean, rstd (N); w, b (C)
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N,
                       int C) {
  for (int i = 0; i < N; ++i) {
    const T* x = inp + (size_t)i * C;
    T m = 0;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    T v = 0;
    for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
    v /= C;
    const T r = T(1) / std::sqrt(v + T(1e-5));
    for (int c = 0; c < C; ++c) out[(size_t)i * C + c] = (x[c] - m) * r * w[c] + b[c];
    mean[i] = m;
    rstd[i] = r;
  }
}

// dinp (N, C) += ...; dw, db (C) += ...  (y = norm * w + b, norm = (x - mean) * rstd)
template <class T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int C) {
  for (int i = 0; i < N; ++i) {
    const T* x = inp + (size_t)i * C;
    const T* d = dout + (size_t)i * C;
    T dnorm_mean = 0, dnorm_norm_mean = 0;
    for (int c = 0; c < C; ++c) {
      const T norm = (x[c] - mean[i]) * rstd[i];
      dnorm_mean += w[c] * d[c];
      dnorm_norm_mean += w[c] * d[c] * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    for (int c = 0; c < C; ++c) {
      const T norm = (x[c] - mean[i]) * rstd[i];
      db[c] += d[c];
      dw[c] += norm * d[c];
      dinp[(size_t)i * C + c] += (w[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * rstd[i];
    }
  }
}

template <class T>
T gelu(T x) {
  const T s = T(0.7978845608028654);
  return T(0.5) * x * (T(1) + std::tanh(s * (x + T(0.044715) * x * x * x)));
}
template <class T>
T gelu_grad(T x) {
  const T s = T(0.7978845608028654), a = T(0.044715);
  const T th = std::tanh(s * (x + a * x * x * x));
  const T sech2 = T(1) - th * th;
  return T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * s * (T(1) + T(3) * a * x * x);
}
template <class T>
void gelu_forward(T* out, const T* inp, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = gelu(inp[i]);
}
template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) {
  for (size_t i = 0; i < n; ++i) dinp[i] = gelu_grad(inp[i]) * dout[i];
}

template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// P (T, T): causal softmax probabilities of head h of sequence b, zero above the diagonal;
// lse (T) or nullptr: the log-sum-exp of each row of scaled scores. qkv (B, T, 3C).
template <class T>
void attention_probs(T* P, T* lse, const T* qkv, int b, int h, int T_, int C, int NH) {
  const int hs = C / NH;
  const T scale = T(1) / std::sqrt(T(hs));
  const T* q = qkv + (size_t)b * T_ * 3 * C + (size_t)h * hs;
  const T* k = q + C;
  for (int i = 0; i < T_; ++i) {
    T* row = P + (size_t)i * T_;
    T mx = -std::numeric_limits<T>::infinity();
    for (int j = 0; j <= i; ++j) {
      T s = 0;
      for (int d = 0; d < hs; ++d) s += q[(size_t)i * 3 * C + d] * k[(size_t)j * 3 * C + d];
      row[j] = s * scale;
      mx = std::max(mx, row[j]);
    }
    T sum = 0;
    for (int j = 0; j <= i; ++j) sum += std::exp(row[j] - mx);
    for (int j = 0; j < T_; ++j) row[j] = j <= i ? std::exp(row[j] - mx) / sum : T(0);
    if (lse) lse[i] = mx + std::log(sum);
  }
}

// Causal attention with the whole (T, T) probability matrix of each (b, h) materialised.
// out (B, T, C); lse (B, NH, T); qkv (B, T, 3C).
template <class T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  std::vector<T> P((size_t)T_ * T_);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      attention_probs(P.data(), lse + ((size_t)b * NH + h) * T_, qkv, b, h, T_, C, NH);
      const T* v = qkv + (size_t)b * T_ * 3 * C + 2 * C + (size_t)h * hs;
      for (int i = 0; i < T_; ++i)
        for (int d = 0; d < hs; ++d) {
          T s = 0;
          for (int j = 0; j < T_; ++j) s += P[(size_t)i * T_ + j] * v[(size_t)j * 3 * C + d];
          out[((size_t)b * T_ + i) * C + (size_t)h * hs + d] = s;
        }
    }
}

// dqkv (B, T, 3C) assigned; out and lse are unused. Recomputes P from scratch and uses the
// softmax Jacobian dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik): deliberately not the fast path's
// D = dO . O shortcut.
template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                        int T_, int C, int NH) {
  const int hs = C / NH;
  const T scale = T(1) / std::sqrt(T(hs));
  std::fill_n(dqkv, (size_t)B * T_ * 3 * C, T(0));
  std::vector<T> P((size_t)T_ * T_), dP((size_t)T_ * T_);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      attention_probs(P.data(), static_cast<T*>(nullptr), qkv, b, h, T_, C, NH);
      auto at = [&](int t, int part, int d) {
        return ((size_t)b * T_ + t) * 3 * C + (size_t)part * C + (size_t)h * hs + d;
      };
      auto dO = [&](int t, int d) { return dout[((size_t)b * T_ + t) * C + (size_t)h * hs + d]; };
      for (int i = 0; i < T_; ++i)
        for (int j = 0; j <= i; ++j) {
          T acc = 0;
          for (int d = 0; d < hs; ++d) acc += dO(i, d) * qkv[at(j, 2, d)];
          dP[(size_t)i * T_ + j] = acc;
          for (int d = 0; d < hs; ++d) dqkv[at(j, 2, d)] += P[(size_t)i * T_ + j] * dO(i, d);
        }
      for (int i = 0; i < T_; ++i) {
        T pdp = 0;
        for (int j = 0; j <= i; ++j) pdp += P[(size_t)i * T_ + j] * dP[(size_t)i * T_ + j];
        for (int j = 0; j <= i; ++j) {
          const T ds = P[(size_t)i * T_ + j] * (dP[(size_t)i * T_ + j] - pdp) * scale;
          for (int d = 0; d < hs; ++d) {
            dqkv[at(i, 0, d)] += ds * qkv[at(j, 1, d)];
            dqkv[at(j, 1, d)] += ds * qkv[at(i, 0, d)];
          }
        }
      }
    }
}

// Whole (N, V) logits; losses (N); dx (N, C) assigned, dw (V, C) accumulated if dx non-null.
template <class T>
double classifier_ce_forward(T* losses, T* dx, T* dw, const T* x, const T* w,
                             const int32_t* targets, const T* dloss, int N, int C, int V) {
  std::vector<T> logits((size_t)N * V);
  matmul_forward<T>(logits.data(), x, w, nullptr, N, C, V);
  double total = 0;
  for (int i = 0; i < N; ++i) {
    T* l = logits.data() + (size_t)i * V;
    if (targets[i] < 0) {
      losses[i] = 0;
      std::fill_n(l, V, T(0));  // no gradient from an ignored row
      continue;
    }
    const T mx = *std::max_element(l, l + V);
    T sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(l[j] - mx);
    const T lse = mx + std::log(sum);
    losses[i] = lse - l[targets[i]];
    total += (double)losses[i];
    if (dx) {
      for (int j = 0; j < V; ++j)
        l[j] = (std::exp(l[j] - lse) - (j == targets[i] ? T(1) : T(0))) * dloss[i];
    }
  }
  if (dx) {
    for (int i = 0; i < N; ++i)
      for (int c = 0; c < C; ++c) {
        T s = 0;
        for (int j = 0; j < V; ++j) s += logits[(size_t)i * V + j] * w[(size_t)j * C + c];
        dx[(size_t)i * C + c] = s;
      }
    for (int j = 0; j < V; ++j)
      for (int c = 0; c < C; ++c) {
        T s = 0;
        for (int i = 0; i < N; ++i) s += logits[(size_t)i * V + j] * x[(size_t)i * C + c];
        dw[(size_t)j * C + c] += s;
      }
  }
  return total;
}

template <class T>
void classifier_logits(T* logits, const T* x, const T* w, int N, int C, int V) {
  matmul_forward<T>(logits, x, w, nullptr, N, C, V);
}

// AdamW on one flat range; same update as ops::adamw_update, over any number type.
template <class T>
void adamw_update(T* p, const T* g, T* m, T* v, size_t n, T lr, T beta1, T beta2, T eps, T wd,
                  long t) {
  const T b1c = T(1) - std::pow(beta1, T(t)), b2c = T(1) - std::pow(beta2, T(t));
  for (size_t i = 0; i < n; ++i) {
    m[i] = beta1 * m[i] + (T(1) - beta1) * g[i];
    v[i] = beta2 * v[i] + (T(1) - beta2) * g[i] * g[i];
    const T mhat = m[i] / b1c, vhat = v[i] / b2c;
    p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
  }
}

template <class T>
double sum_squares(const T* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += (double)x[i] * (double)x[i];
  return s;
}

template <class T>
void scale(T* x, T s, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= s;
}

// ---- Llama family ------------------------------------------------------------------------------

// out (N, C) = inp * rstd * w; rstd (N) = 1 / sqrt(mean(inp^2) + eps); w (C)
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C, float eps) {
  for (int i = 0; i < N; ++i) {
    const T* x = inp + (size_t)i * C;
    T ms = 0;
    for (int c = 0; c < C; ++c) ms += x[c] * x[c];
    ms /= C;
    const T r = T(1) / std::sqrt(ms + T(eps));
    for (int c = 0; c < C; ++c) out[(size_t)i * C + c] = x[c] * r * w[c];
    rstd[i] = r;
  }
}

// dinp (N, C) += ...; dw (C) += ...: the chain rule through rstd written out term by term,
// d rstd / d x_k = -rstd^3 x_k / C.
template <class T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int N,
                      int C) {
  for (int i = 0; i < N; ++i) {
    const T* x = inp + (size_t)i * C;
    const T* d = dout + (size_t)i * C;
    const T r = rstd[i];
    T dr = 0;  // dL/d rstd
    for (int c = 0; c < C; ++c) dr += d[c] * w[c] * x[c];
    for (int c = 0; c < C; ++c) {
      dw[c] += x[c] * r * d[c];
      dinp[(size_t)i * C + c] += d[c] * w[c] * r + dr * (-r * r * r * x[c] / C);
    }
  }
}

// out, inp (B, T, NH, hs): each pair rotated by angle (pos0 + t) * inv_freq[j] (sign +1), or by
// its negative (sign -1, the backward). Pairs (2j, 2j+1) if interleaved, else (j, j + hs/2).
template <class T>
void rope_rotate(T* out, const T* inp, int B, int T_, int NH, int hs, const double* inv_freq,
                 bool interleaved, int pos0, int sign) {
  const int half = hs / 2;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int h = 0; h < NH; ++h) {
        const size_t off = (((size_t)b * T_ + t) * NH + h) * hs;
        for (int j = 0; j < half; ++j) {
          const double angle = sign * double(pos0 + t) * inv_freq[j];
          const size_t ia = off + (interleaved ? 2 * j : j);
          const size_t ib = off + (interleaved ? 2 * j + 1 : j + half);
          const T a = inp[ia], bb = inp[ib];
          out[ia] = a * T(std::cos(angle)) - bb * T(std::sin(angle));
          out[ib] = a * T(std::sin(angle)) + bb * T(std::cos(angle));
        }
      }
}
template <class T>
void rope_forward(T* out, const T* inp, int B, int T_, int NH, int hs, const double* inv_freq,
                  bool interleaved, int pos0 = 0) {
  rope_rotate(out, inp, B, T_, NH, hs, inv_freq, interleaved, pos0, 1);
}
template <class T>
void rope_backward(T* dinp, const T* dout, int B, int T_, int NH, int hs, const double* inv_freq,
                   bool interleaved, int pos0 = 0) {
  rope_rotate(dinp, dout, B, T_, NH, hs, inv_freq, interleaved, pos0, -1);
}

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
// out (n) = gate * sigmoid(gate) * up
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}
// dgate = dout * up * silu'(gate), dup = dout * silu(gate) (assigned)
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const T s = sigmoid(gate[i]);
    dgate[i] = dout[i] * up[i] * (s + gate[i] * s * (T(1) - s));
    dup[i] = dout[i] * gate[i] * s;
  }
}

// P (T, T): causal softmax probabilities of query head h of sequence b, which reads kv head
// h / (NH / KVH); zero above the diagonal. lse (T) or nullptr. q (B, T, NH*hs); k (B, T, KVH*hs).
template <class T>
void attention_gqa_probs(T* P, T* lse, const T* q, const T* k, int b, int h, int T_, int NH,
                         int KVH, int hs) {
  const T scale = T(1) / std::sqrt(T(hs));
  const int kh = h / (NH / KVH);
  std::vector<T> S((size_t)T_ * T_);
  for (int i = 0; i < T_; ++i)
    for (int j = 0; j < T_; ++j) {  // the full (T, T) scores, masked afterwards
      T s = 0;
      for (int d = 0; d < hs; ++d)
        s += q[((size_t)b * T_ + i) * NH * hs + (size_t)h * hs + d] *
             k[((size_t)b * T_ + j) * KVH * hs + (size_t)kh * hs + d];
      S[(size_t)i * T_ + j] = s * scale;
    }
  for (int i = 0; i < T_; ++i) {
    T mx = -std::numeric_limits<T>::infinity();
    for (int j = 0; j <= i; ++j) mx = std::max(mx, S[(size_t)i * T_ + j]);
    T sum = 0;
    for (int j = 0; j <= i; ++j) sum += std::exp(S[(size_t)i * T_ + j] - mx);
    for (int j = 0; j < T_; ++j)
      P[(size_t)i * T_ + j] = j <= i ? std::exp(S[(size_t)i * T_ + j] - mx) / sum : T(0);
    if (lse) lse[i] = mx + std::log(sum);
  }
}

// out (B, T, NH*hs); lse (B, NH, T); q (B, T, NH*hs); k, v (B, T, KVH*hs)
template <class T>
void attention_gqa_forward(T* out, T* lse, const T* q, const T* k, const T* v, int B, int T_,
                           int NH, int KVH, int hs) {
  std::vector<T> P((size_t)T_ * T_);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      attention_gqa_probs(P.data(), lse + ((size_t)b * NH + h) * T_, q, k, b, h, T_, NH, KVH, hs);
      const int kh = h / (NH / KVH);
      for (int i = 0; i < T_; ++i)
        for (int d = 0; d < hs; ++d) {
          T s = 0;
          for (int j = 0; j < T_; ++j)
            s += P[(size_t)i * T_ + j] * v[((size_t)b * T_ + j) * KVH * hs + (size_t)kh * hs + d];
          out[((size_t)b * T_ + i) * NH * hs + (size_t)h * hs + d] = s;
        }
    }
}

// dq (B, T, NH*hs), dk, dv (B, T, KVH*hs) assigned; out and lse unused. Softmax Jacobian as in
// attention_backward; a kv head's gradient is the plain sum over the query heads reading it.
template <class T>
void attention_gqa_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                            const T* out, const T* lse, int B, int T_, int NH, int KVH, int hs) {
  const T scale = T(1) / std::sqrt(T(hs));
  std::fill_n(dq, (size_t)B * T_ * NH * hs, T(0));
  std::fill_n(dk, (size_t)B * T_ * KVH * hs, T(0));
  std::fill_n(dv, (size_t)B * T_ * KVH * hs, T(0));
  std::vector<T> P((size_t)T_ * T_), dP((size_t)T_ * T_);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      attention_gqa_probs(P.data(), static_cast<T*>(nullptr), q, k, b, h, T_, NH, KVH, hs);
      const int kh = h / (NH / KVH);
      auto qi = [&](int t, int d) { return ((size_t)b * T_ + t) * NH * hs + (size_t)h * hs + d; };
      auto ki = [&](int t, int d) { return ((size_t)b * T_ + t) * KVH * hs + (size_t)kh * hs + d; };
      for (int i = 0; i < T_; ++i)
        for (int j = 0; j <= i; ++j) {
          T acc = 0;
          for (int d = 0; d < hs; ++d) acc += dout[qi(i, d)] * v[ki(j, d)];
          dP[(size_t)i * T_ + j] = acc;
          for (int d = 0; d < hs; ++d) dv[ki(j, d)] += P[(size_t)i * T_ + j] * dout[qi(i, d)];
        }
      for (int i = 0; i < T_; ++i) {
        T pdp = 0;
        for (int j = 0; j <= i; ++j) pdp += P[(size_t)i * T_ + j] * dP[(size_t)i * T_ + j];
        for (int j = 0; j <= i; ++j) {
          const T ds = P[(size_t)i * T_ + j] * (dP[(size_t)i * T_ + j] - pdp) * scale;
          for (int d = 0; d < hs; ++d) {
            dq[qi(i, d)] += ds * k[ki(j, d)];
            dk[ki(j, d)] += ds * q[qi(i, d)];
          }
        }
      }
    }
}

}  // namespace lmf::ops::ref
