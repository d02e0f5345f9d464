#include "infer/decoder.h"

#include <algorithm>
#include <cmath>

#include "core/buffer.h"
#include "core/memory.h"
#include "core/error.h"
#include "ops/backend.h"

namespace lmf {

namespace {

int context_of(const ModelConfig& c, int max_context) {
  return max_context > 0 ? std::min(max_context, c.block_size) : c.block_size;
}

void check_token(int32_t token, int V) {
  if (token < 0 || token >= V) throw UserError("token id {} is outside the model's vocabulary of {}", token, V);
}

// A prefill's activations: (n, width) buffers in the backend's memory, for one call.
template <class T>
Array<T> rows_of(const MemorySpace& space, int n, size_t width) {
  Array<T> a(space);
  a.resize(size_t(n) * width);
  return a;
}

// The decoders run on the model's backend (the family's own table: over bf16 storage the bf16
// one): the KV cache and every activation live in its memory and its number type, the weights
// are the ones the layers read (dev_param, or their bf16 compute copy, rounded when the decoder
// is made), and only the token goes in and the logits (float) come out (to host memory) per step.
// On the CPU backend in fp32 the ops are the CPU ops, called as before: the same numbers bit for
// bit.

// Host logits of a step: the backend's buffer itself on the host, else a downloaded copy.
class Logits {
 public:
  template <class A>
  Logits(const ops::Backend<A>& be, int V) : host_(be.on_host()), dev_(*be.memory) {
    dev_.resize(size_t(V));
    if (!host_) copy_.resize(size_t(V));
  }
  float* dev() { return dev_.data(); }
  const float* to_host() {
    if (host_) return dev_.data();
    dev_.download(copy_.data(), copy_.size());
    return copy_.data();
  }

 private:
  bool host_;
  Array<float> dev_;
  Buffer<float> copy_;
};

template <class A>
class Gpt2Decoder final : public Decoder {
  using S = ops::stat_t<A>;

 public:
  Gpt2Decoder(const Gpt2<A>& m, int max_context)
      : Decoder(context_of(m.config(), max_context), m.config().vocab_size),
        m_(m),
        be_(m.backend()),
        C_(m.config().n_embd),
        NH_(m.config().n_head),
        V_(m.config().vocab_size),
        L_(m.config().n_layer),
        k_(*be_.memory), v_(*be_.memory), x_(*be_.memory), h_(*be_.memory), qkv_(*be_.memory),
        y_(*be_.memory), wide_(*be_.memory), a_(*be_.memory), stats_(*be_.memory), tok_(*be_.memory),
        logits_(be_, V_) {
    k_.resize(size_t(L_) * max_t_ * C_);
    v_.resize(size_t(L_) * max_t_ * C_);
    x_.resize(C_);
    h_.resize(C_);
    qkv_.resize(3 * C_);
    y_.resize(C_);
    a_.resize(size_t(NH_) * max_t_);
    wide_.resize(8 * C_);
    stats_.resize(2);
    tok_.resize(1);
    m.round_weights();
  }

  const float* feed(int32_t token) override {
    LMF_CHECK(pos_ < max_t_, "KV cache full ({} positions)", max_t_);
    check_token(token, V_);
    const auto& ix = m_.index();
    const auto& be = be_;
    auto w = [this](size_t i) { return m_.weight(i); };
    const int C = C_;
    A *x = x_.data(), *h = h_.data(), *qkv = qkv_.data(), *y = y_.data();
    S *mean = stats_.data(), *rstd = stats_.data() + 1;
    tok_.upload(&token, 1);
    be.encoder_forward(x, tok_.data(), w(ix.wte), w(ix.wpe) + size_t(pos_) * C, 1, 1, C);
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      A* kc = k_.data() + size_t(l) * max_t_ * C;  // (maxT, C)
      A* vc = v_.data() + size_t(l) * max_t_ * C;
      be.layernorm_forward(h, mean, rstd, x, w(li.ln1_w), w(li.ln1_b), 1, C);
      be.matmul_forward(qkv, h, w(li.qkv_w), w(li.qkv_b), 1, C, 3 * C);
      be.copy(kc + size_t(pos_) * C, qkv + C, C);
      be.copy(vc + size_t(pos_) * C, qkv + 2 * C, C);
      be.attention_decode(y, a_.data(), qkv, kc, vc, pos_ + 1, NH_, NH_, C / NH_, C);
      be.matmul_forward(h, y, w(li.proj_w), w(li.proj_b), 1, C, C);
      be.residual_forward(x, x, h, C);
      be.layernorm_forward(h, mean, rstd, x, w(li.ln2_w), w(li.ln2_b), 1, C);
      A* fch = wide_.data();
      A* act = wide_.data() + 4 * C;
      be.matmul_forward(fch, h, w(li.fc_w), w(li.fc_b), 1, C, 4 * C);
      be.gelu_forward(act, fch, size_t(4) * C);
      be.matmul_forward(h, act, w(li.fcproj_w), w(li.fcproj_b), 1, 4 * C, C);
      be.residual_forward(x, x, h, C);
    }
    be.layernorm_forward(h, mean, rstd, x, w(ix.lnf_w), w(ix.lnf_b), 1, C);
    be.classifier_logits(logits_.dev(), h, w(ix.lm_head), 1, C, V_);
    ++pos_;
    return logits_.to_host();
  }

  // The forward over n rows: qkv's weight rows [C, 2C) and [2C, 3C) give k and v straight into
  // the cache's first n rows, and the causal attention is the GQA op with NH groups (multi-head).
  const float* prefill_empty(const int32_t* tokens, int n) override {
    const auto& ix = m_.index();
    const auto& be = be_;
    const MemorySpace& mem = *be.memory;
    auto w = [this](size_t i) { return m_.weight(i); };
    const int C = C_, hs = C_ / NH_;
    Array<A> x = rows_of<A>(mem, n, C), h = rows_of<A>(mem, n, C), q = rows_of<A>(mem, n, C),
             y = rows_of<A>(mem, n, C), fch = rows_of<A>(mem, n, 4 * size_t(C)),
             act = rows_of<A>(mem, n, 4 * size_t(C));
    Array<S> mean = rows_of<S>(mem, n, 1), rstd = rows_of<S>(mem, n, 1), lse = rows_of<S>(mem, n, NH_);
    Array<int32_t> tok = rows_of<int32_t>(mem, n, 1);
    tok.upload(tokens, size_t(n));
    be.encoder_forward(x.data(), tok.data(), w(ix.wte), w(ix.wpe), 1, n, C);
    const size_t CC = size_t(C) * C;
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      A* kc = k_.data() + size_t(l) * max_t_ * C;  // (maxT, C): rows [0, n) written here
      A* vc = v_.data() + size_t(l) * max_t_ * C;
      auto part = [&](int i) { return w(li.qkv_b) + size_t(i) * C; };
      be.layernorm_forward(h.data(), mean.data(), rstd.data(), x.data(), w(li.ln1_w), w(li.ln1_b), n, C);
      be.matmul_forward(q.data(), h.data(), w(li.qkv_w), part(0), n, C, C);
      be.matmul_forward(kc, h.data(), w(li.qkv_w) + CC, part(1), n, C, C);
      be.matmul_forward(vc, h.data(), w(li.qkv_w) + 2 * CC, part(2), n, C, C);
      be.attention_gqa_forward(y.data(), lse.data(), q.data(), kc, vc, 1, n, NH_, NH_, hs);
      be.matmul_forward(h.data(), y.data(), w(li.proj_w), w(li.proj_b), n, C, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(n) * C);
      be.layernorm_forward(h.data(), mean.data(), rstd.data(), x.data(), w(li.ln2_w), w(li.ln2_b), n, C);
      be.matmul_forward(fch.data(), h.data(), w(li.fc_w), w(li.fc_b), n, C, 4 * C);
      be.gelu_forward(act.data(), fch.data(), size_t(n) * 4 * C);
      be.matmul_forward(h.data(), act.data(), w(li.fcproj_w), w(li.fcproj_b), n, 4 * C, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(n) * C);
    }
    // Only the last row's logits are wanted.
    const A* last = x.data() + size_t(n - 1) * C;
    be.layernorm_forward(h.data(), mean.data(), rstd.data(), last, w(ix.lnf_w), w(ix.lnf_b), 1, C);
    be.classifier_logits(logits_.dev(), h.data(), w(ix.lm_head), 1, C, V_);
    pos_ = n;
    return logits_.to_host();
  }

 private:
  const Gpt2<A>& m_;
  const ops::Backend<A>& be_;
  int C_, NH_, V_, L_;
  Array<A> k_, v_;  // (L, maxT, C) each: head h in columns [h*hs, (h+1)*hs)
  Array<A> x_, h_, qkv_, y_, wide_;
  Array<S> a_, stats_;
  Array<int32_t> tok_;
  Logits logits_;
};

template <class A>
class LlamaDecoder final : public Decoder {
  using S = ops::stat_t<A>;

 public:
  LlamaDecoder(const Llama<A>& m, int max_context)
      : Decoder(context_of(m.config(), max_context), m.config().vocab_size),
        m_(m),
        be_(m.backend()),
        C_(m.config().n_embd),
        NH_(m.config().n_head),
        KVH_(m.n_kv_head()),
        hs_(m.config().head_size()),
        H_(m.ffn_hidden()),
        V_(m.config().vocab_size),
        L_(m.config().n_layer),
        k_(*be_.memory), v_(*be_.memory), x_(*be_.memory), h_(*be_.memory), q_(*be_.memory),
        y_(*be_.memory), g_(*be_.memory), u_(*be_.memory), a_(*be_.memory), stats_(*be_.memory),
        tok_(*be_.memory), logits_(be_, V_) {
    const size_t kv = size_t(KVH_) * hs_;
    k_.resize(size_t(L_) * max_t_ * kv);
    v_.resize(size_t(L_) * max_t_ * kv);
    x_.resize(C_);
    h_.resize(C_);
    q_.resize(C_);
    y_.resize(C_);
    a_.resize(size_t(NH_) * max_t_);
    g_.resize(H_);
    u_.resize(H_);
    stats_.resize(1);
    tok_.resize(1);
    m.round_weights();
  }

  const float* feed(int32_t token) override {
    LMF_CHECK(pos_ < max_t_, "KV cache full ({} positions)", max_t_);
    check_token(token, V_);
    const auto& ix = m_.index();
    const auto& cfg = m_.config();
    const auto& be = be_;
    const int C = C_, KV = KVH_ * hs_, H = H_;
    const float eps = static_cast<float>(cfg.norm_eps);
    const double* inv_freq = m_.rope_inv_freq_device();
    auto w = [this](size_t i) { return m_.weight(i); };
    auto bias = [&](size_t i) { return i == Llama<A>::kNone ? nullptr : w(i); };
    A *x = x_.data(), *h = h_.data(), *q = q_.data(), *y = y_.data(), *g = g_.data(), *u = u_.data();
    S* rstd = stats_.data();
    tok_.upload(&token, 1);
    be.encoder_forward(x, tok_.data(), w(ix.embed), nullptr, 1, 1, C);
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      A* kc = k_.data() + size_t(l) * max_t_ * KV;  // (maxT, KV)
      A* vc = v_.data() + size_t(l) * max_t_ * KV;
      A* kt = kc + size_t(pos_) * KV;
      A* vt = vc + size_t(pos_) * KV;
      be.rmsnorm_forward(h, rstd, x, w(li.attn_norm), 1, C, eps);
      be.matmul_forward(q, h, w(li.wq), bias(li.bq), 1, C, C);
      be.matmul_forward(kt, h, w(li.wk), bias(li.bk), 1, C, KV);
      be.matmul_forward(vt, h, w(li.wv), bias(li.bv), 1, C, KV);
      be.rope_forward(q, q, 1, 1, NH_, hs_, inv_freq, cfg.rope_interleaved, pos_);
      be.rope_forward(kt, kt, 1, 1, KVH_, hs_, inv_freq, cfg.rope_interleaved, pos_);
      be.attention_decode(y, a_.data(), q, kc, vc, pos_ + 1, NH_, KVH_, hs_, KV);
      be.matmul_forward(h, y, w(li.wo), bias(li.bo), 1, C, C);
      be.residual_forward(x, x, h, C);
      be.rmsnorm_forward(h, rstd, x, w(li.ffn_norm), 1, C, eps);
      be.matmul_forward(g, h, w(li.gate), bias(li.bgate), 1, C, H);
      be.matmul_forward(u, h, w(li.up), bias(li.bup), 1, C, H);
      be.swiglu_forward(g, g, u, size_t(H));
      be.matmul_forward(h, g, w(li.down), bias(li.bdown), 1, H, C);
      be.residual_forward(x, x, h, C);
    }
    be.rmsnorm_forward(h, rstd, x, w(ix.norm), 1, C, eps);
    be.classifier_logits(logits_.dev(), h, w(ix.lm_head), 1, C, V_);
    ++pos_;
    return logits_.to_host();
  }

  // The forward over n rows, k and v straight into the cache's first n rows (rotated there).
  const float* prefill_empty(const int32_t* tokens, int n) override {
    const auto& ix = m_.index();
    const auto& cfg = m_.config();
    const auto& be = be_;
    const MemorySpace& mem = *be.memory;
    const int C = C_, KV = KVH_ * hs_, H = H_;
    const float eps = static_cast<float>(cfg.norm_eps);
    const double* inv_freq = m_.rope_inv_freq_device();
    auto w = [this](size_t i) { return m_.weight(i); };
    auto bias = [&](size_t i) { return i == Llama<A>::kNone ? nullptr : w(i); };
    Array<A> x = rows_of<A>(mem, n, C), h = rows_of<A>(mem, n, C), q = rows_of<A>(mem, n, C),
             y = rows_of<A>(mem, n, C), g = rows_of<A>(mem, n, H), u = rows_of<A>(mem, n, H);
    Array<S> rstd = rows_of<S>(mem, n, 1), lse = rows_of<S>(mem, n, NH_);
    Array<int32_t> tok = rows_of<int32_t>(mem, n, 1);
    tok.upload(tokens, size_t(n));
    be.encoder_forward(x.data(), tok.data(), w(ix.embed), nullptr, 1, n, C);
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      A* kc = k_.data() + size_t(l) * max_t_ * KV;  // (maxT, KV): rows [0, n) written here
      A* vc = v_.data() + size_t(l) * max_t_ * KV;
      be.rmsnorm_forward(h.data(), rstd.data(), x.data(), w(li.attn_norm), n, C, eps);
      be.matmul_forward(q.data(), h.data(), w(li.wq), bias(li.bq), n, C, C);
      be.matmul_forward(kc, h.data(), w(li.wk), bias(li.bk), n, C, KV);
      be.matmul_forward(vc, h.data(), w(li.wv), bias(li.bv), n, C, KV);
      be.rope_forward(q.data(), q.data(), 1, n, NH_, hs_, inv_freq, cfg.rope_interleaved, 0);
      be.rope_forward(kc, kc, 1, n, KVH_, hs_, inv_freq, cfg.rope_interleaved, 0);
      be.attention_gqa_forward(y.data(), lse.data(), q.data(), kc, vc, 1, n, NH_, KVH_, hs_);
      be.matmul_forward(h.data(), y.data(), w(li.wo), bias(li.bo), n, C, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(n) * C);
      be.rmsnorm_forward(h.data(), rstd.data(), x.data(), w(li.ffn_norm), n, C, eps);
      be.matmul_forward(g.data(), h.data(), w(li.gate), bias(li.bgate), n, C, H);
      be.matmul_forward(u.data(), h.data(), w(li.up), bias(li.bup), n, C, H);
      be.swiglu_forward(g.data(), g.data(), u.data(), size_t(n) * H);
      be.matmul_forward(h.data(), g.data(), w(li.down), bias(li.bdown), n, H, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(n) * C);
    }
    const A* last = x.data() + size_t(n - 1) * C;
    be.rmsnorm_forward(h.data(), rstd.data(), last, w(ix.norm), 1, C, eps);
    be.classifier_logits(logits_.dev(), h.data(), w(ix.lm_head), 1, C, V_);
    pos_ = n;
    return logits_.to_host();
  }

 private:
  const Llama<A>& m_;
  const ops::Backend<A>& be_;
  int C_, NH_, KVH_, hs_, H_, V_, L_;
  Array<A> k_, v_;  // (L, maxT, KVH*hs) each, after RoPE
  Array<A> x_, h_, q_, y_, g_, u_;
  Array<S> a_, stats_;
  Array<int32_t> tok_;
  Logits logits_;
};

}  // namespace

const float* Decoder::prefill(const int32_t* tokens, int n) {
  if (n < 1) throw UserError("a prefill needs at least one token");
  if (n > max_t_ - pos_)
    throw UserError("{} tokens do not fit the KV cache: {} of its {} positions are free", n, max_t_ - pos_, max_t_);
  for (int i = 0; i < n; ++i) check_token(tokens[i], vocab_);
  if (pos_ == 0) return prefill_empty(tokens, n);
  const float* logits = nullptr;
  for (int i = 0; i < n; ++i) logits = feed(tokens[i]);
  return logits;
}

std::unique_ptr<Decoder> make_decoder(const Model& model, int max_context) {
  if (auto* g = family<Gpt2<float>>(model)) return std::make_unique<Gpt2Decoder<float>>(*g, max_context);
  if (auto* l = family<Llama<float>>(model)) return std::make_unique<LlamaDecoder<float>>(*l, max_context);
  if (auto* g = family<Gpt2<bf16>>(model)) return std::make_unique<Gpt2Decoder<bf16>>(*g, max_context);
  if (auto* l = family<Llama<bf16>>(model)) return std::make_unique<LlamaDecoder<bf16>>(*l, max_context);
  throw UserError("no KV-cache decoder for model family \"{}\"", model.config().arch);
}

}  // namespace lmf
