#include "model/llama.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/rng.h"
#include "model/lm_head.h"
#include "ops/ops.h"

namespace lmf {

template <class F>
Llama<F>::Llama(const ModelConfig& cfg, bool allocate, nn::TensorParallel tp, const ops::Backend<F>* be)
    : cfg_(cfg),
      tp_(tp),
      be_(be ? be : &ops::cpu_backend<F>()), dinv_freq_(*be_->memory),
      wc_(*be_->memory),
      acts_(*be_->memory),
      scratch_(*be_->memory),
      stats_(*be_->memory),
      dtokens_(*be_->memory),
      dtargets_(*be_->memory),
      logits_(*be_->memory) {
  LMF_CHECK(cfg.arch == "llama", "Llama needs arch \"llama\" (got \"{}\")", cfg.arch);
  LMF_CHECK(cfg.vocab_size > 0, "Llama needs a resolved vocab_size (got {})", cfg.vocab_size);
  LMF_CHECK(cfg.n_head > 0 && cfg.n_embd % cfg.n_head == 0, "n_embd {} % n_head {}", cfg.n_embd, cfg.n_head);
  KVH_ = cfg.kv_heads();
  H_ = cfg.ffn_size();
  LMF_CHECK(cfg.n_head % KVH_ == 0, "n_head {} % n_kv_head {}", cfg.n_head, KVH_);
  LMF_CHECK(cfg.head_size() % 2 == 0, "RoPE needs an even head size (got {})", cfg.head_size());
  LMF_CHECK(tp.size >= 1 && KVH_ % tp.size == 0 && H_ % tp.size == 0,
            "n_kv_head {} and ffn width {} over {} tensor-parallel ranks", KVH_, H_, tp.size);
  // This rank's widths: query heads, kv heads and MLP columns are divided among the group.
  const int64_t C = cfg.n_embd, V = cfg.vocab_size, L = cfg.n_layer, H = tp.part(H_);
  const int64_t Q = int64_t(tp.part(cfg.n_head)) * cfg.head_size();
  const int64_t KV = int64_t(tp.part(KVH_)) * cfg.head_size();
  const Split rows{0, 1}, cols{1, 1}, none{};
  idx_.embed = ps_.add("model.embed_tokens.weight", {V, C}, true);
  for (int64_t l = 0; l < L; ++l) {
    auto n = [l](const char* s) { return fmt::format("model.layers.{}.{}", l, s); };
    typename Index::Layer li;
    const size_t first = ps_.flat_size();
    // An absent bias is index kNone.
    auto bias = [&](bool on, const char* s, int64_t len, Split sp) {
      return on ? ps_.add(n(s), {len}, false, sp) : kNone;
    };
    li.attn_norm = ps_.add(n("input_layernorm.weight"), {C}, false);
    li.wq = ps_.add(n("self_attn.q_proj.weight"), {Q, C}, true, rows);
    li.bq = bias(cfg.attention_bias, "self_attn.q_proj.bias", Q, rows);
    li.wk = ps_.add(n("self_attn.k_proj.weight"), {KV, C}, true, rows);
    li.bk = bias(cfg.attention_bias, "self_attn.k_proj.bias", KV, rows);
    li.wv = ps_.add(n("self_attn.v_proj.weight"), {KV, C}, true, rows);
    li.bv = bias(cfg.attention_bias, "self_attn.v_proj.bias", KV, rows);
    li.wo = ps_.add(n("self_attn.o_proj.weight"), {C, Q}, true, cols);
    li.bo = bias(cfg.attention_bias, "self_attn.o_proj.bias", C, none);
    li.ffn_norm = ps_.add(n("post_attention_layernorm.weight"), {C}, false);
    li.gate = ps_.add(n("mlp.gate_proj.weight"), {H, C}, true, rows);
    li.bgate = bias(cfg.mlp_bias, "mlp.gate_proj.bias", H, rows);
    li.up = ps_.add(n("mlp.up_proj.weight"), {H, C}, true, rows);
    li.bup = bias(cfg.mlp_bias, "mlp.up_proj.bias", H, rows);
    li.down = ps_.add(n("mlp.down_proj.weight"), {C, H}, true, cols);
    li.bdown = bias(cfg.mlp_bias, "mlp.down_proj.bias", C, none);
    idx_.layers.push_back(li);
    block_ranges_.push_back({first, ps_.flat_size()});
  }
  idx_.norm = ps_.add("model.norm.weight", {C}, false);
  idx_.lm_head = cfg.tied_embeddings ? idx_.embed : ps_.add("lm_head.weight", {V, C}, true);
  if (!allocate) return;
  ps_.allocate();
  ps_.place_on(*be_->memory);
  wc_.allocate(ps_);
  ops::RopeScaling rs;
  rs.factor = cfg.rope_factor;
  rs.low_freq_factor = cfg.rope_low_freq_factor;
  rs.high_freq_factor = cfg.rope_high_freq_factor;
  rs.original_context = cfg.rope_original_context;
  if (cfg.rope_scaling == "linear") {
    rs.kind = ops::RopeScaling::Kind::kLinear;
  } else if (cfg.rope_scaling == "llama3") {
    rs.kind = ops::RopeScaling::Kind::kLlama3;
  } else {
    LMF_CHECK(cfg.rope_scaling == "none", "unknown rope_scaling '{}'", cfg.rope_scaling);
  }
  inv_freq_ = ops::rope_inv_freq(cfg.head_size(), cfg.rope_theta, rs);
  dinv_freq_.resize(inv_freq_.size());
  dinv_freq_.upload(inv_freq_.data(), inv_freq_.size());
  bind_layers();
}

template <class F>
F* Llama<F>::w(size_t i) {
  return wc_.at(ps_, i);
}

template <class F>
nn::P<F> Llama<F>::pv(size_t i) {
  return {w(i), ps_.dev_grad(i)};
}

template <class F>
void Llama<F>::bind_layers() {
  const int C = cfg_.n_embd;
  const float eps = static_cast<float>(cfg_.norm_eps);
  auto p = [this](size_t i) { return pv(i); };
  auto pb = [this](size_t i) { return i == kNone ? nn::P<F>{} : pv(i); };
  // A row-parallel layer's bias is added once to the sum over the group: by rank 0, before the
  // all-reduce. Every rank still accumulates its gradient (the same on all of them).
  auto row_bias = [this, &pb](size_t i) {
    nn::P<F> b = pb(i);
    if (tp_.rank != 0) b.w = nullptr;
    return b;
  };
  blocks_.clear();
  for (const auto& li : idx_.layers) {
    nn::LlamaBlock<F> b = block_shape();
    const int Q = b.q_dim(), KV = b.kv_dim(), H = b.H;
    b.attn_norm = {p(li.attn_norm), C, eps};
    b.wq = {p(li.wq), pb(li.bq), C, Q};
    b.wk = {p(li.wk), pb(li.bk), C, KV};
    b.wv = {p(li.wv), pb(li.bv), C, KV};
    b.wo = {p(li.wo), row_bias(li.bo), Q, C};
    b.ffn_norm = {p(li.ffn_norm), C, eps};
    b.gate = {p(li.gate), pb(li.bgate), C, H};
    b.up = {p(li.up), pb(li.bup), C, H};
    b.down = {p(li.down), row_bias(li.bdown), H, C};
    b.set_backend(be_);
    blocks_.push_back(b);
  }
  norm_ = {p(idx_.norm), C, eps};
  norm_.be = be_;
}

template <class F>
nn::LlamaBlock<F> Llama<F>::block_shape() const {
  nn::LlamaBlock<F> b;
  b.C = cfg_.n_embd;
  b.NH = tp_.part(cfg_.n_head);
  b.KVH = tp_.part(KVH_);
  b.hs = cfg_.head_size();
  b.H = tp_.part(H_);
  b.inv_freq = dinv_freq_.data();
  b.interleaved = cfg_.rope_interleaved;
  b.recompute_mlp = cfg_.recompute_mlp;
  b.tp = tp_;
  return b;
}

template <class F>
void Llama<F>::init(uint64_t seed) {
  const double std_resid = cfg_.init_std / std::sqrt(2.0 * cfg_.n_layer);
  const auto& es = ps_.entries();
  for (size_t i = 0; i < es.size(); ++i) {
    const auto& e = es[i];
    M* w = ps_.param(i);
    if (e.name.ends_with("norm.weight")) {
      std::fill(w, w + e.size, M(1));
    } else if (e.name.ends_with(".bias")) {
      std::fill(w, w + e.size, M(0));
    } else {
      bool resid = e.name.ends_with("self_attn.o_proj.weight") || e.name.ends_with("mlp.down_proj.weight");
      double sd = resid ? std_resid : cfg_.init_std;
#pragma omp parallel for schedule(static)
      for (size_t j = 0; j < e.size; j += 2) {
        auto z = philox_normal2(seed, kStreamInit + i, j / 2);
        w[j] = static_cast<M>(z[0] * sd);
        if (j + 1 < e.size) w[j + 1] = static_cast<M>(z[1] * sd);
      }
    }
  }
  ps_.upload_params();
}

template <class F>
double Llama<F>::flops_per_token(int T) const {
  // Untied, the input embedding is a lookup, not a matmul: its parameters cost no FLOPs.
  double matmul_params = 0;
  for (const auto& e : ps_.entries()) matmul_params += double(e.size) * (e.split_dim >= 0 ? tp_.size : 1);
  if (!cfg_.tied_embeddings) matmul_params -= double(cfg_.vocab_size) * cfg_.n_embd;
  return 6.0 * matmul_params + 12.0 * cfg_.n_layer * T * cfg_.n_embd;
}

template <class F>
void Llama<F>::ensure_activations(int B, int T) {
  if (B == cur_B_ && T == cur_T_) return;
  const size_t N = size_t(B) * T, C = cfg_.n_embd, L = cfg_.n_layer;
  const nn::LlamaBlock<F> shape_of = block_shape();
  const nn::Sizes per_block = shape_of.saved_size(B, T);
  // Activations: the residual stream (L + 1), the blocks', the final norm's output. Statistics:
  // the blocks', the final norm's rstd, the losses and their gradients.
  const nn::Sizes total{(L + 1) * N * C + L * per_block.acts + N * C, L * per_block.stats + 3 * N};
  acts_.resize(total.acts);
  stats_.resize(total.stats);
  F* p = acts_.data();
  S* q = stats_.data();
  resid_.assign(L + 1, nullptr);
  for (size_t l = 0; l <= L; ++l) resid_[l] = nn::take(p, N * C);
  saved_.clear();
  for (size_t l = 0; l < L; ++l) saved_.push_back(shape_of.carve(p, q, B, T));
  norm_out_ = nn::take(p, N * C);
  norm_rstd_ = nn::take(q, N);
  losses_ = nn::take(q, N);
  dloss_ = nn::take(q, N);
  LMF_CHECK(size_t(p - acts_.data()) == total.acts && size_t(q - stats_.data()) == total.stats,
            "activation layout");

  size_t stotal = shape_of.scratch_size(B, T) + 2 * N * C;
  scratch_.resize(stotal);
  F* s = scratch_.data();
  sc_ = shape_of.carve_scratch(s, B, T);
  dres_ = nn::take(s, N * C);
  dnorm_ = nn::take(s, N * C);
  LMF_CHECK(size_t(s - scratch_.data()) == stotal, "scratch layout");
  tokens_.resize(N);
  dtokens_.resize(N);
  dtargets_.resize(N);
  cur_B_ = B;
  cur_T_ = T;
  ++layout_;
}

template <class F>
long Llama<F>::stage(const int32_t* tokens, const int32_t* targets, int B, int T) {
  if (T > cfg_.block_size)
    throw UserError("sequence length {} exceeds the model's block_size {}", T, cfg_.block_size);
  ensure_activations(B, T);
  const int V = cfg_.vocab_size, N = B * T;
  lm_head::check_tokens(tokens, N, V);
  std::memcpy(tokens_.data(), tokens, sizeof(int32_t) * N);
  dtokens_.upload(tokens, N);
  return targets ? lm_head::stage_targets<F>(*be_, buffers(), targets, N, V) : 0;
}

template <class F>
double Llama<F>::run_forward(bool targets, double grad_scale) {
  const int C = cfg_.n_embd, V = cfg_.vocab_size, N = cur_B_ * cur_T_;
  const nn::BlockHook use = wc_.begin_forward(*be_, ps_, block_ranges_, on_block_use_);
  be_->encoder_forward(resid_[0], dtokens_.data(), w(idx_.embed), nullptr, cur_B_, cur_T_, C);
  tape_.forward(blocks_, resid_, saved_, sc_, cur_B_, cur_T_, use);
  norm_.forward(norm_out_, norm_rstd_, resid_[blocks_.size()], N);
  have_grad_ = false;
  if (!targets) return 0.0;
  return lm_head::classify<F>(*be_, buffers(), ps_.dev_grad(idx_.lm_head), norm_out_, w(idx_.lm_head), N, C, V,
                              grad_scale, have_grad_);
}

template <class F>
void Llama<F>::run_backward() {
  LMF_CHECK(have_grad_, "backward() without a forward(grad_scale > 0)");
  const int C = cfg_.n_embd, N = cur_B_ * cur_T_;
  be_->fill(dres_, F(0), size_t(N) * C);
  norm_.backward(dres_, dnorm_, resid_[blocks_.size()], norm_rstd_, N);
  tape_.backward(dres_, sc_, cur_B_, cur_T_, on_block_grads_, on_block_use_);
}

template <class F>
void Llama<F>::finish_backward() {
  const int C = cfg_.n_embd;
  be_->encoder_backward(ps_.dev_grad(idx_.embed), nullptr, dres_, tokens_.data(), cur_B_, cur_T_, C);
  have_grad_ = false;
}

template <class F>
void Llama<F>::last_logits(S* out) {
  lm_head::last_logits(*be_, logits_, out, norm_out_, w(idx_.lm_head), cur_B_, cur_T_, cfg_.n_embd, cfg_.vocab_size);
}

template class Llama<float>;
template class Llama<double>;
template class Llama<bf16>;

}  // namespace lmf
