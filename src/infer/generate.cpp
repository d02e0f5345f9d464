#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "ops/ops.h"

namespace lmf {

KvGenerator::KvGenerator(const Gpt2<float>& model, int max_context)
    : m_(model),
      C_(model.config().n_embd),
      NH_(model.config().n_head),
      V_(model.config().vocab_size),
      L_(model.config().n_layer),
      max_t_(max_context > 0 ? std::min(max_context, model.config().block_size) : model.config().block_size) {
  k_.resize(size_t(L_) * max_t_ * C_);
  v_.resize(size_t(L_) * max_t_ * C_);
  x_.resize(C_);
  h_.resize(C_);
  qkv_.resize(3 * C_);
  y_.resize(C_);
  a_.resize(max_t_);
  wide_.resize(8 * C_);
  logits_.resize(V_);
  stats_.resize(2);
}

const float* KvGenerator::feed(int32_t token) {
  LMF_CHECK(pos_ < max_t_, "KV cache full ({} positions)", max_t_);
  if (token < 0 || token >= V_) throw UserError("token id {} is outside the model's vocabulary of {}", token, V_);
  const auto& ps = m_.params();
  const auto& ix = m_.index();
  const int C = C_, hs = C_ / NH_;
  const float* wte = ps.param(ix.wte);
  const float* wpe = ps.param(ix.wpe);
  for (int c = 0; c < C; ++c) x_[c] = wte[size_t(token) * C + c] + wpe[size_t(pos_) * C + c];
  const float scale = 1.0f / std::sqrt(float(hs));
  float* mean = stats_.data();
  float* rstd = stats_.data() + 1;
  for (int l = 0; l < L_; ++l) {
    const auto& li = ix.layers[l];
    float* kc = k_.data() + size_t(l) * max_t_ * C;  // (maxT, C)
    float* vc = v_.data() + size_t(l) * max_t_ * C;
    ops::layernorm_forward(h_.data(), mean, rstd, x_.data(), ps.param(li.ln1_w), ps.param(li.ln1_b), 1, C);
    ops::matmul_forward(qkv_.data(), h_.data(), ps.param(li.qkv_w), ps.param(li.qkv_b), 1, C, 3 * C);
    std::copy_n(qkv_.data() + C, C, kc + size_t(pos_) * C);
    std::copy_n(qkv_.data() + 2 * C, C, vc + size_t(pos_) * C);
    for (int h = 0; h < NH_; ++h) {
      const float* q = qkv_.data() + h * hs;
      float mx = -INFINITY;
      for (int t = 0; t <= pos_; ++t) {
        const float* k = kc + size_t(t) * C + h * hs;
        float s = 0;
        for (int d = 0; d < hs; ++d) s += q[d] * k[d];
        a_[t] = s * scale;
        mx = std::max(mx, a_[t]);
      }
      float z = 0;
      for (int t = 0; t <= pos_; ++t) z += (a_[t] = std::exp(a_[t] - mx));
      float* y = y_.data() + h * hs;
      std::fill(y, y + hs, 0.0f);
      for (int t = 0; t <= pos_; ++t) {
        const float* v = vc + size_t(t) * C + h * hs;
        float p = a_[t] / z;
        for (int d = 0; d < hs; ++d) y[d] += p * v[d];
      }
    }
    ops::matmul_forward(h_.data(), y_.data(), ps.param(li.proj_w), ps.param(li.proj_b), 1, C, C);
    ops::residual_forward(x_.data(), x_.data(), h_.data(), C);
    ops::layernorm_forward(h_.data(), mean, rstd, x_.data(), ps.param(li.ln2_w), ps.param(li.ln2_b), 1, C);
    float* fch = wide_.data();
    float* act = wide_.data() + 4 * C;
    ops::matmul_forward(fch, h_.data(), ps.param(li.fc_w), ps.param(li.fc_b), 1, C, 4 * C);
    ops::gelu_forward(act, fch, size_t(4) * C);
    ops::matmul_forward(h_.data(), act, ps.param(li.fcproj_w), ps.param(li.fcproj_b), 1, 4 * C, C);
    ops::residual_forward(x_.data(), x_.data(), h_.data(), C);
  }
  ops::layernorm_forward(h_.data(), mean, rstd, x_.data(), ps.param(ix.lnf_w), ps.param(ix.lnf_b), 1, C);
  ops::classifier_logits(logits_.data(), h_.data(), ps.param(ix.lm_head), 1, C, V_);
  ++pos_;
  return logits_.data();
}

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng) {
  if (opt.temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  // Sort by logit, descending; ties by id so the order is deterministic.
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  size_t keep = (opt.top_k > 0) ? std::min<size_t>(opt.top_k, V) : size_t(V);
  std::vector<double> p(keep);
  double mx = logits[ids[0]], z = 0;
  for (size_t i = 0; i < keep; ++i) z += (p[i] = std::exp((logits[ids[i]] - mx) / opt.temperature));
  if (opt.top_p < 1.0) {
    double cum = 0;
    size_t n = 0;
    while (n < keep && cum < opt.top_p * z) cum += p[n++];
    keep = std::max<size_t>(n, 1);
    z = 0;
    for (size_t i = 0; i < keep; ++i) z += p[i];
  }
  double u = rng.uniform() * z, cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return ids[i];
  }
  return ids[keep - 1];
}

std::vector<int32_t> generate(const Gpt2<float>& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) throw UserError("generation needs at least one prompt token");
  KvGenerator gen(model, opt.max_context);
  Rng rng(opt.seed, kStreamSample);
  std::vector<int32_t> all = prompt, out;
  // Keep the most recent tokens that fit, then feed them.
  auto refill = [&]() -> const float* {
    gen.reset();
    size_t keep = std::min<size_t>(all.size(), size_t(std::max(1, gen.capacity() / 2)));
    if (all.size() <= size_t(gen.capacity())) keep = all.size();
    const float* logits = nullptr;
    for (size_t i = all.size() - keep; i < all.size(); ++i) logits = gen.feed(all[i]);
    return logits;
  };
  const float* logits = refill();
  const int V = model.config().vocab_size;
  for (int n = 0; n < opt.max_new_tokens; ++n) {
    int32_t tok = sample_token(logits, V, opt, rng);
    out.push_back(tok);
    all.push_back(tok);
    if (on_token) on_token(tok);
    if (tok == opt.stop_token) break;
    if (n + 1 == opt.max_new_tokens) break;
    logits = gen.position() < gen.capacity() ? gen.feed(tok) : refill();
  }
  return out;
}

}  // namespace lmf
