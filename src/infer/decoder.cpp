#include "infer/decoder.h"

#include <algorithm>
#include <cmath>
#include <vector>

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
// is made), and only the tokens go in and the logits (float) come out (to host memory) per step.
// On the CPU backend in fp32 the ops are the CPU ops, called as before: the same numbers bit for
// bit. The cache of layer l and sequence b is rows [0, maxT) of block (l, b) of (L, batch, maxT,
// width) for k and for v; after a prefill of alike rows, rows [0, shared_) of sequence 0's block
// serve every sequence (the others' are not written).

// Host logits of a step, (batch, V): the backend's buffer itself on the host, else a downloaded
// copy.
class Logits {
 public:
  template <class A>
  Logits(const ops::Backend<A>& be, size_t n) : host_(be.on_host()), dev_(*be.memory) {
    dev_.resize(n);
    if (!host_) copy_.resize(n);
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

// What both families' prefills do around their blocks: the tokens into the backend's memory, and
// the last row of each of the `rows` sequences gathered into (batch, C) for the final norm and
// the classifier; where rows is 1 (the batch's tokens all alike), that row for every sequence.
template <class A>
Array<int32_t> upload_tokens(const ops::Backend<A>& be, const int32_t* tokens, size_t n) {
  Array<int32_t> t = rows_of<int32_t>(*be.memory, int(n), 1);
  t.upload(tokens, n);
  return t;
}
template <class A>
void gather_last_rows(const ops::Backend<A>& be, A* out /*(batch, C)*/, const A* x /*(rows, n, C)*/, int rows, int n,
                      int batch, int C) {
  for (int b = 0; b < batch; ++b)
    be.copy(out + size_t(b) * C, x + (size_t(rows == 1 ? 0 : b) * n + n - 1) * C, size_t(C));
}
// k or v of a prefill, (rows, n, width), into the cache's first n rows of each of the `rows`
// sequences of layer l (rows 1: sequence 0's only, the prefix all of them share).
template <class A>
void store_rows(const ops::Backend<A>& be, A* cache, const A* src, int l, int rows, int n, int batch, int max_t,
                size_t width) {
  for (int b = 0; b < rows; ++b)
    be.copy(cache + (size_t(l) * batch + b) * max_t * width, src + size_t(b) * n * width, size_t(n) * width);
}
// Where the batch's caches of layer l are for attention_decode: position pos_ is the new one.
inline ops::DecodeLayout decode_layout(int batch, int pos, int shared, int max_t, size_t width, int q_ld) {
  return {.B = batch, .T = pos + 1, .shared = shared, .ld = int(width), .seq = size_t(max_t) * width, .q_ld = q_ld};
}

template <class A>
class Gpt2Decoder final : public Decoder {
  using S = ops::stat_t<A>;

 public:
  Gpt2Decoder(const Gpt2<A>& m, int max_context, int batch)
      : Decoder(context_of(m.config(), max_context), m.config().vocab_size, batch),
        m_(m),
        be_(m.backend()),
        C_(m.config().n_embd),
        NH_(m.config().n_head),
        L_(m.config().n_layer),
        k_(*be_.memory), v_(*be_.memory), x_(*be_.memory), h_(*be_.memory), qkv_(*be_.memory),
        y_(*be_.memory), wide_(*be_.memory), a_(*be_.memory), stats_(*be_.memory), tok_(*be_.memory),
        logits_(be_, size_t(batch) * vocab_) {
    const size_t B = size_t(batch), C = size_t(C_);
    k_.resize(size_t(L_) * B * max_t_ * C);
    v_.resize(size_t(L_) * B * max_t_ * C);
    x_.resize(B * C);
    h_.resize(B * C);
    qkv_.resize(B * 3 * C);
    y_.resize(B * C);
    a_.resize(B * NH_ * max_t_);
    wide_.resize(B * 8 * C);
    stats_.resize(2 * B);
    tok_.resize(B);
    m.round_weights();
  }

 private:
  A* cache(Array<A>& kv, int l, int b) { return kv.data() + (size_t(l) * batch_ + b) * max_t_ * C_; }

  // One token for each sequence: the block's ops over (batch, C) rows, then the attention of each
  // sequence over its cache (k and v of the new position copied in first).
  const float* feed_checked(const int32_t* tokens) override {
    const auto& ix = m_.index();
    const auto& be = be_;
    auto w = [this](size_t i) { return m_.weight(i); };
    const int B = batch_, C = C_;
    A *x = x_.data(), *h = h_.data(), *qkv = qkv_.data(), *y = y_.data();
    S *mean = stats_.data(), *rstd = stats_.data() + B;
    tok_.upload(tokens, size_t(B));
    be.encoder_forward(x, tok_.data(), w(ix.wte), w(ix.wpe) + size_t(pos_) * C, B, 1, C);
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      be.layernorm_forward(h, mean, rstd, x, w(li.ln1_w), w(li.ln1_b), B, C);
      be.matmul_forward(qkv, h, w(li.qkv_w), w(li.qkv_b), B, C, 3 * C);
      for (int b = 0; b < B; ++b) {
        const A* row = qkv + size_t(b) * 3 * C;
        be.copy(cache(k_, l, b) + size_t(pos_) * C, row + C, C);
        be.copy(cache(v_, l, b) + size_t(pos_) * C, row + 2 * C, C);
      }
      be.attention_decode(y, a_.data(), qkv, cache(k_, l, 0), cache(v_, l, 0),
                          decode_layout(B, pos_, shared_, max_t_, C, 3 * C), NH_, NH_, C / NH_);
      be.matmul_forward(h, y, w(li.proj_w), w(li.proj_b), B, C, C);
      be.residual_forward(x, x, h, size_t(B) * C);
      be.layernorm_forward(h, mean, rstd, x, w(li.ln2_w), w(li.ln2_b), B, C);
      A* fch = wide_.data();
      A* act = wide_.data() + size_t(B) * 4 * C;
      be.matmul_forward(fch, h, w(li.fc_w), w(li.fc_b), B, C, 4 * C);
      be.gelu_forward(act, fch, size_t(B) * 4 * C);
      be.matmul_forward(h, act, w(li.fcproj_w), w(li.fcproj_b), B, 4 * C, C);
      be.residual_forward(x, x, h, size_t(B) * C);
    }
    be.layernorm_forward(h, mean, rstd, x, w(ix.lnf_w), w(ix.lnf_b), B, C);
    be.classifier_logits(logits_.dev(), h, w(ix.lm_head), B, C, vocab_);
    return logits_.to_host();
  }

  // The forward over rows x n tokens: qkv's weight rows [C, 2C) and [2C, 3C) give k and v, and
  // the causal attention of each sequence is the GQA op with NH groups (multi-head).
  const float* prefill_empty(const int32_t* tokens, int n, int rows) override {
    const auto& ix = m_.index();
    const auto& be = be_;
    const MemorySpace& mem = *be.memory;
    auto w = [this](size_t i) { return m_.weight(i); };
    const int C = C_, hs = C_ / NH_, N = rows * n;
    Array<A> x = rows_of<A>(mem, N, C), h = rows_of<A>(mem, N, C), q = rows_of<A>(mem, N, C),
             k = rows_of<A>(mem, N, C), v = rows_of<A>(mem, N, C), y = rows_of<A>(mem, N, C),
             fch = rows_of<A>(mem, N, 4 * size_t(C)), act = rows_of<A>(mem, N, 4 * size_t(C));
    Array<S> mean = rows_of<S>(mem, N, 1), rstd = rows_of<S>(mem, N, 1), lse = rows_of<S>(mem, N, NH_);
    Array<int32_t> tok = upload_tokens(be, tokens, size_t(N));
    be.encoder_forward(x.data(), tok.data(), w(ix.wte), w(ix.wpe), rows, n, C);
    const size_t CC = size_t(C) * C;
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      auto part = [&](int i) { return w(li.qkv_b) + size_t(i) * C; };
      be.layernorm_forward(h.data(), mean.data(), rstd.data(), x.data(), w(li.ln1_w), w(li.ln1_b), N, C);
      be.matmul_forward(q.data(), h.data(), w(li.qkv_w), part(0), N, C, C);
      be.matmul_forward(k.data(), h.data(), w(li.qkv_w) + CC, part(1), N, C, C);
      be.matmul_forward(v.data(), h.data(), w(li.qkv_w) + 2 * CC, part(2), N, C, C);
      be.attention_gqa_forward(y.data(), lse.data(), q.data(), k.data(), v.data(), rows, n, NH_, NH_, hs);
      store_rows(be, k_.data(), k.data(), l, rows, n, batch_, max_t_, C);
      store_rows(be, v_.data(), v.data(), l, rows, n, batch_, max_t_, C);
      be.matmul_forward(h.data(), y.data(), w(li.proj_w), w(li.proj_b), N, C, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(N) * C);
      be.layernorm_forward(h.data(), mean.data(), rstd.data(), x.data(), w(li.ln2_w), w(li.ln2_b), N, C);
      be.matmul_forward(fch.data(), h.data(), w(li.fc_w), w(li.fc_b), N, C, 4 * C);
      be.gelu_forward(act.data(), fch.data(), size_t(N) * 4 * C);
      be.matmul_forward(h.data(), act.data(), w(li.fcproj_w), w(li.fcproj_b), N, 4 * C, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(N) * C);
    }
    // Only the last row of each sequence is wanted.
    gather_last_rows(be, y_.data(), x.data(), rows, n, batch_, C);
    be.layernorm_forward(h_.data(), stats_.data(), stats_.data() + batch_, y_.data(), w(ix.lnf_w), w(ix.lnf_b),
                         batch_, C);
    be.classifier_logits(logits_.dev(), h_.data(), w(ix.lm_head), batch_, C, vocab_);
    return logits_.to_host();
  }

  const Gpt2<A>& m_;
  const ops::Backend<A>& be_;
  int C_, NH_, L_;
  Array<A> k_, v_;  // (L, batch, maxT, C) each: head h in columns [h*hs, (h+1)*hs)
  Array<A> x_, h_, qkv_, y_, wide_;
  Array<S> a_, stats_;
  Array<int32_t> tok_;
  Logits logits_;
};

template <class A>
class LlamaDecoder final : public Decoder {
  using S = ops::stat_t<A>;

 public:
  LlamaDecoder(const Llama<A>& m, int max_context, int batch)
      : Decoder(context_of(m.config(), max_context), m.config().vocab_size, batch),
        m_(m),
        be_(m.backend()),
        C_(m.config().n_embd),
        NH_(m.config().n_head),
        KVH_(m.n_kv_head()),
        hs_(m.config().head_size()),
        H_(m.ffn_hidden()),
        L_(m.config().n_layer),
        k_(*be_.memory), v_(*be_.memory), x_(*be_.memory), h_(*be_.memory), q_(*be_.memory),
        kt_(*be_.memory), vt_(*be_.memory), y_(*be_.memory), g_(*be_.memory), u_(*be_.memory),
        a_(*be_.memory), stats_(*be_.memory), tok_(*be_.memory), logits_(be_, size_t(batch) * vocab_) {
    const size_t B = size_t(batch), kv = size_t(KVH_) * hs_;
    k_.resize(size_t(L_) * B * max_t_ * kv);
    v_.resize(size_t(L_) * B * max_t_ * kv);
    x_.resize(B * C_);
    h_.resize(B * C_);
    q_.resize(B * C_);
    kt_.resize(B * kv);
    vt_.resize(B * kv);
    y_.resize(B * C_);
    a_.resize(B * NH_ * max_t_);
    g_.resize(B * H_);
    u_.resize(B * H_);
    stats_.resize(B);
    tok_.resize(B);
    m.round_weights();
  }

 private:
  size_t kv_width() const { return size_t(KVH_) * hs_; }
  A* cache(Array<A>& kv, int l, int b) { return kv.data() + (size_t(l) * batch_ + b) * max_t_ * kv_width(); }

  // One token for each sequence: the block's ops over (batch, ...) rows; k and v of the new
  // position, rotated, copied into each sequence's cache, then the attention of each sequence.
  const float* feed_checked(const int32_t* tokens) override {
    const auto& ix = m_.index();
    const auto& cfg = m_.config();
    const auto& be = be_;
    const int B = batch_, C = C_, KV = int(kv_width()), H = H_;
    const float eps = static_cast<float>(cfg.norm_eps);
    const double* inv_freq = m_.rope_inv_freq_device();
    auto w = [this](size_t i) { return m_.weight(i); };
    auto bias = [&](size_t i) { return i == Llama<A>::kNone ? nullptr : w(i); };
    A *x = x_.data(), *h = h_.data(), *q = q_.data(), *kt = kt_.data(), *vt = vt_.data(), *y = y_.data(),
      *g = g_.data(), *u = u_.data();
    S* rstd = stats_.data();
    tok_.upload(tokens, size_t(B));
    be.encoder_forward(x, tok_.data(), w(ix.embed), nullptr, B, 1, C);
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      be.rmsnorm_forward(h, rstd, x, w(li.attn_norm), B, C, eps);
      be.matmul_forward(q, h, w(li.wq), bias(li.bq), B, C, C);
      be.matmul_forward(kt, h, w(li.wk), bias(li.bk), B, C, KV);
      be.matmul_forward(vt, h, w(li.wv), bias(li.bv), B, C, KV);
      be.rope_forward(q, q, B, 1, NH_, hs_, inv_freq, cfg.rope_interleaved, pos_);
      be.rope_forward(kt, kt, B, 1, KVH_, hs_, inv_freq, cfg.rope_interleaved, pos_);
      for (int b = 0; b < B; ++b) {
        be.copy(cache(k_, l, b) + size_t(pos_) * KV, kt + size_t(b) * KV, size_t(KV));
        be.copy(cache(v_, l, b) + size_t(pos_) * KV, vt + size_t(b) * KV, size_t(KV));
      }
      be.attention_decode(y, a_.data(), q, cache(k_, l, 0), cache(v_, l, 0),
                          decode_layout(B, pos_, shared_, max_t_, size_t(KV), C), NH_, KVH_, hs_);
      be.matmul_forward(h, y, w(li.wo), bias(li.bo), B, C, C);
      be.residual_forward(x, x, h, size_t(B) * C);
      be.rmsnorm_forward(h, rstd, x, w(li.ffn_norm), B, C, eps);
      be.matmul_forward(g, h, w(li.gate), bias(li.bgate), B, C, H);
      be.matmul_forward(u, h, w(li.up), bias(li.bup), B, C, H);
      be.swiglu_forward(g, g, u, size_t(B) * H);
      be.matmul_forward(h, g, w(li.down), bias(li.bdown), B, H, C);
      be.residual_forward(x, x, h, size_t(B) * C);
    }
    be.rmsnorm_forward(h, rstd, x, w(ix.norm), B, C, eps);
    be.classifier_logits(logits_.dev(), h, w(ix.lm_head), B, C, vocab_);
    return logits_.to_host();
  }

  // The forward over rows x n tokens; k and v, rotated, then into each sequence's cache.
  const float* prefill_empty(const int32_t* tokens, int n, int rows) override {
    const auto& ix = m_.index();
    const auto& cfg = m_.config();
    const auto& be = be_;
    const MemorySpace& mem = *be.memory;
    const int C = C_, KV = int(kv_width()), H = H_, N = rows * n;
    const float eps = static_cast<float>(cfg.norm_eps);
    const double* inv_freq = m_.rope_inv_freq_device();
    auto w = [this](size_t i) { return m_.weight(i); };
    auto bias = [&](size_t i) { return i == Llama<A>::kNone ? nullptr : w(i); };
    Array<A> x = rows_of<A>(mem, N, C), h = rows_of<A>(mem, N, C), q = rows_of<A>(mem, N, C),
             k = rows_of<A>(mem, N, KV), v = rows_of<A>(mem, N, KV), y = rows_of<A>(mem, N, C),
             g = rows_of<A>(mem, N, H), u = rows_of<A>(mem, N, H);
    Array<S> rstd = rows_of<S>(mem, N, 1), lse = rows_of<S>(mem, N, NH_);
    Array<int32_t> tok = upload_tokens(be, tokens, size_t(N));
    be.encoder_forward(x.data(), tok.data(), w(ix.embed), nullptr, rows, n, C);
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      be.rmsnorm_forward(h.data(), rstd.data(), x.data(), w(li.attn_norm), N, C, eps);
      be.matmul_forward(q.data(), h.data(), w(li.wq), bias(li.bq), N, C, C);
      be.matmul_forward(k.data(), h.data(), w(li.wk), bias(li.bk), N, C, KV);
      be.matmul_forward(v.data(), h.data(), w(li.wv), bias(li.bv), N, C, KV);
      be.rope_forward(q.data(), q.data(), rows, n, NH_, hs_, inv_freq, cfg.rope_interleaved, 0);
      be.rope_forward(k.data(), k.data(), rows, n, KVH_, hs_, inv_freq, cfg.rope_interleaved, 0);
      be.attention_gqa_forward(y.data(), lse.data(), q.data(), k.data(), v.data(), rows, n, NH_, KVH_, hs_);
      store_rows(be, k_.data(), k.data(), l, rows, n, batch_, max_t_, size_t(KV));
      store_rows(be, v_.data(), v.data(), l, rows, n, batch_, max_t_, size_t(KV));
      be.matmul_forward(h.data(), y.data(), w(li.wo), bias(li.bo), N, C, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(N) * C);
      be.rmsnorm_forward(h.data(), rstd.data(), x.data(), w(li.ffn_norm), N, C, eps);
      be.matmul_forward(g.data(), h.data(), w(li.gate), bias(li.bgate), N, C, H);
      be.matmul_forward(u.data(), h.data(), w(li.up), bias(li.bup), N, C, H);
      be.swiglu_forward(g.data(), g.data(), u.data(), size_t(N) * H);
      be.matmul_forward(h.data(), g.data(), w(li.down), bias(li.bdown), N, H, C);
      be.residual_forward(x.data(), x.data(), h.data(), size_t(N) * C);
    }
    gather_last_rows(be, y_.data(), x.data(), rows, n, batch_, C);
    be.rmsnorm_forward(h_.data(), stats_.data(), y_.data(), w(ix.norm), batch_, C, eps);
    be.classifier_logits(logits_.dev(), h_.data(), w(ix.lm_head), batch_, C, vocab_);
    return logits_.to_host();
  }

  const Llama<A>& m_;
  const ops::Backend<A>& be_;
  int C_, NH_, KVH_, hs_, H_, L_;
  Array<A> k_, v_;  // (L, batch, maxT, KVH*hs) each, after RoPE
  Array<A> x_, h_, q_, kt_, vt_, y_, g_, u_;
  Array<S> a_, stats_;
  Array<int32_t> tok_;
  Logits logits_;
};

}  // namespace

const float* Decoder::feed(const int32_t* tokens) {
  LMF_CHECK(pos_ < max_t_, "KV cache full ({} positions)", max_t_);
  for (int b = 0; b < batch_; ++b) check_token(tokens[b], vocab_);
  const float* logits = feed_checked(tokens);
  ++pos_;
  return logits;
}

const float* Decoder::prefill(const int32_t* tokens, int n) {
  if (n < 1) throw UserError("a prefill needs at least one token");
  if (n > max_t_ - pos_)
    throw UserError("{} tokens do not fit the KV cache: {} of its {} positions are free", n, max_t_ - pos_, max_t_);
  const size_t all = size_t(batch_) * n;
  for (size_t i = 0; i < all; ++i) check_token(tokens[i], vocab_);
  if (pos_ == 0) {
    bool alike = true;  // every sequence gets row 0's tokens: one pass for all
    for (size_t i = size_t(n); i < all && alike; ++i) alike = tokens[i] == tokens[i % size_t(n)];
    const float* logits = prefill_empty(tokens, n, alike ? 1 : batch_);
    pos_ = n;
    shared_ = alike ? n : 0;
    return logits;
  }
  std::vector<int32_t> column(batch_);
  const float* logits = nullptr;
  for (int i = 0; i < n; ++i) {
    for (int b = 0; b < batch_; ++b) column[b] = tokens[size_t(b) * n + i];
    logits = feed(column.data());
  }
  return logits;
}

std::unique_ptr<Decoder> make_decoder(const Model& model, int max_context, int batch) {
  LMF_CHECK(batch >= 1, "a decoder's batch must be at least 1 (got {})", batch);
  if (auto* g = family<Gpt2<float>>(model)) return std::make_unique<Gpt2Decoder<float>>(*g, max_context, batch);
  if (auto* l = family<Llama<float>>(model)) return std::make_unique<LlamaDecoder<float>>(*l, max_context, batch);
  if (auto* g = family<Gpt2<bf16>>(model)) return std::make_unique<Gpt2Decoder<bf16>>(*g, max_context, batch);
  if (auto* l = family<Llama<bf16>>(model)) return std::make_unique<LlamaDecoder<bf16>>(*l, max_context, batch);
  throw UserError("no KV-cache decoder for model family \"{}\"", model.config().arch);
}

}  // namespace lmf
