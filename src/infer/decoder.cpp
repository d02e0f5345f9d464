#include "infer/decoder.h"

#include <algorithm>
#include <cmath>

#include "core/buffer.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lmf {

namespace {

int context_of(const ModelConfig& c, int max_context) {
  return max_context > 0 ? std::min(max_context, c.block_size) : c.block_size;
}

void check_token(int32_t token, int V) {
  if (token < 0 || token >= V) throw UserError("token id {} is outside the model's vocabulary of {}", token, V);
}

// y (NH*hs) = softmax(q k^T / sqrt(hs)) v over cached positions [0, T), query head h reading kv
// head h / (NH / KVH). k, v rows hold KVH*hs values; a (T) is scratch.
void attend(float* y, const float* q, const float* k, const float* v, float* a, int T, int NH, int KVH, int hs,
            size_t row) {
  const float scale = 1.0f / std::sqrt(float(hs));
  const int group = NH / KVH;
  for (int h = 0; h < NH; ++h) {
    const float* qh = q + size_t(h) * hs;
    const size_t koff = size_t(h / group) * hs;
    float mx = -INFINITY;
    for (int t = 0; t < T; ++t) {
      const float* kt = k + size_t(t) * row + koff;
      float s = 0;
      for (int d = 0; d < hs; ++d) s += qh[d] * kt[d];
      a[t] = s * scale;
      mx = std::max(mx, a[t]);
    }
    float z = 0;
    for (int t = 0; t < T; ++t) z += (a[t] = std::exp(a[t] - mx));
    float* yh = y + size_t(h) * hs;
    std::fill(yh, yh + hs, 0.0f);
    for (int t = 0; t < T; ++t) {
      const float* vt = v + size_t(t) * row + koff;
      const float p = a[t] / z;
      for (int d = 0; d < hs; ++d) yh[d] += p * vt[d];
    }
  }
}

class Gpt2Decoder final : public Decoder {
 public:
  Gpt2Decoder(const Gpt2<float>& m, int max_context)
      : Decoder(context_of(m.config(), max_context)),
        m_(m),
        C_(m.config().n_embd),
        NH_(m.config().n_head),
        V_(m.config().vocab_size),
        L_(m.config().n_layer) {
    k_.resize(size_t(L_) * max_t_ * C_);
    v_.resize(size_t(L_) * max_t_ * C_);
    x_.resize(C_);
    h_.resize(C_);
    qkv_.resize(3 * C_);
    y_.resize(C_);
    a_.resize(max_t_);
    wide_.resize(8 * C_);
    logits_.resize(V_);
  }

  const float* feed(int32_t token) override {
    LMF_CHECK(pos_ < max_t_, "KV cache full ({} positions)", max_t_);
    check_token(token, V_);
    const auto& ps = m_.params();
    const auto& ix = m_.index();
    const int C = C_;
    const float* wte = ps.param(ix.wte);
    const float* wpe = ps.param(ix.wpe);
    for (int c = 0; c < C; ++c) x_[c] = wte[size_t(token) * C + c] + wpe[size_t(pos_) * C + c];
    float mean, rstd;
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      float* kc = k_.data() + size_t(l) * max_t_ * C;  // (maxT, C)
      float* vc = v_.data() + size_t(l) * max_t_ * C;
      ops::layernorm_forward(h_.data(), &mean, &rstd, x_.data(), ps.param(li.ln1_w), ps.param(li.ln1_b), 1, C);
      ops::matmul_forward(qkv_.data(), h_.data(), ps.param(li.qkv_w), ps.param(li.qkv_b), 1, C, 3 * C);
      std::copy_n(qkv_.data() + C, C, kc + size_t(pos_) * C);
      std::copy_n(qkv_.data() + 2 * C, C, vc + size_t(pos_) * C);
      attend(y_.data(), qkv_.data(), kc, vc, a_.data(), pos_ + 1, NH_, NH_, C / NH_, C);
      ops::matmul_forward(h_.data(), y_.data(), ps.param(li.proj_w), ps.param(li.proj_b), 1, C, C);
      ops::residual_forward(x_.data(), x_.data(), h_.data(), C);
      ops::layernorm_forward(h_.data(), &mean, &rstd, x_.data(), ps.param(li.ln2_w), ps.param(li.ln2_b), 1, C);
      float* fch = wide_.data();
      float* act = wide_.data() + 4 * C;
      ops::matmul_forward(fch, h_.data(), ps.param(li.fc_w), ps.param(li.fc_b), 1, C, 4 * C);
      ops::gelu_forward(act, fch, size_t(4) * C);
      ops::matmul_forward(h_.data(), act, ps.param(li.fcproj_w), ps.param(li.fcproj_b), 1, 4 * C, C);
      ops::residual_forward(x_.data(), x_.data(), h_.data(), C);
    }
    ops::layernorm_forward(h_.data(), &mean, &rstd, x_.data(), ps.param(ix.lnf_w), ps.param(ix.lnf_b), 1, C);
    ops::classifier_logits(logits_.data(), h_.data(), ps.param(ix.lm_head), 1, C, V_);
    ++pos_;
    return logits_.data();
  }

 private:
  const Gpt2<float>& m_;
  int C_, NH_, V_, L_;
  Buffer<float> k_, v_;  // (L, maxT, C) each: head h in columns [h*hs, (h+1)*hs)
  Buffer<float> x_, h_, qkv_, y_, a_, wide_, logits_;
};

class LlamaDecoder final : public Decoder {
 public:
  LlamaDecoder(const Llama<float>& m, int max_context)
      : Decoder(context_of(m.config(), max_context)),
        m_(m),
        C_(m.config().n_embd),
        NH_(m.config().n_head),
        KVH_(m.n_kv_head()),
        hs_(m.config().head_size()),
        H_(m.ffn_hidden()),
        V_(m.config().vocab_size),
        L_(m.config().n_layer) {
    const size_t kv = size_t(KVH_) * hs_;
    k_.resize(size_t(L_) * max_t_ * kv);
    v_.resize(size_t(L_) * max_t_ * kv);
    x_.resize(C_);
    h_.resize(C_);
    q_.resize(C_);
    y_.resize(C_);
    a_.resize(max_t_);
    g_.resize(H_);
    u_.resize(H_);
    logits_.resize(V_);
  }

  const float* feed(int32_t token) override {
    LMF_CHECK(pos_ < max_t_, "KV cache full ({} positions)", max_t_);
    check_token(token, V_);
    const auto& ps = m_.params();
    const auto& ix = m_.index();
    const auto& cfg = m_.config();
    const int C = C_, KV = KVH_ * hs_, H = H_;
    const float eps = static_cast<float>(cfg.norm_eps);
    const double* inv_freq = m_.rope_inv_freq().data();
    auto bias = [&](size_t i) { return i == Llama<float>::kNone ? nullptr : ps.param(i); };
    std::copy_n(ps.param(ix.embed) + size_t(token) * C, C, x_.data());
    float rstd;
    for (int l = 0; l < L_; ++l) {
      const auto& li = ix.layers[l];
      float* kc = k_.data() + size_t(l) * max_t_ * KV;  // (maxT, KV)
      float* vc = v_.data() + size_t(l) * max_t_ * KV;
      float* kt = kc + size_t(pos_) * KV;
      float* vt = vc + size_t(pos_) * KV;
      ops::rmsnorm_forward(h_.data(), &rstd, x_.data(), ps.param(li.attn_norm), 1, C, eps);
      ops::matmul_forward(q_.data(), h_.data(), ps.param(li.wq), bias(li.bq), 1, C, C);
      ops::matmul_forward(kt, h_.data(), ps.param(li.wk), bias(li.bk), 1, C, KV);
      ops::matmul_forward(vt, h_.data(), ps.param(li.wv), bias(li.bv), 1, C, KV);
      ops::rope_forward(q_.data(), q_.data(), 1, 1, NH_, hs_, inv_freq, cfg.rope_interleaved, pos_);
      ops::rope_forward(kt, kt, 1, 1, KVH_, hs_, inv_freq, cfg.rope_interleaved, pos_);
      attend(y_.data(), q_.data(), kc, vc, a_.data(), pos_ + 1, NH_, KVH_, hs_, KV);
      ops::matmul_forward(h_.data(), y_.data(), ps.param(li.wo), bias(li.bo), 1, C, C);
      ops::residual_forward(x_.data(), x_.data(), h_.data(), C);
      ops::rmsnorm_forward(h_.data(), &rstd, x_.data(), ps.param(li.ffn_norm), 1, C, eps);
      ops::matmul_forward(g_.data(), h_.data(), ps.param(li.gate), bias(li.bgate), 1, C, H);
      ops::matmul_forward(u_.data(), h_.data(), ps.param(li.up), bias(li.bup), 1, C, H);
      ops::swiglu_forward(g_.data(), g_.data(), u_.data(), size_t(H));
      ops::matmul_forward(h_.data(), g_.data(), ps.param(li.down), bias(li.bdown), 1, H, C);
      ops::residual_forward(x_.data(), x_.data(), h_.data(), C);
    }
    ops::rmsnorm_forward(h_.data(), &rstd, x_.data(), ps.param(ix.norm), 1, C, eps);
    ops::classifier_logits(logits_.data(), h_.data(), ps.param(ix.lm_head), 1, C, V_);
    ++pos_;
    return logits_.data();
  }

 private:
  const Llama<float>& m_;
  int C_, NH_, KVH_, hs_, H_, V_, L_;
  Buffer<float> k_, v_;  // (L, maxT, KVH*hs) each, after RoPE
  Buffer<float> x_, h_, q_, y_, a_, g_, u_, logits_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Model& model, int max_context) {
  if (auto* g = family<Gpt2<float>>(model)) return std::make_unique<Gpt2Decoder>(*g, max_context);
  if (auto* l = family<Llama<float>>(model)) return std::make_unique<LlamaDecoder>(*l, max_context);
  throw UserError("no KV-cache decoder for model family \"{}\"", model.config().arch);
}

}  // namespace lmf
