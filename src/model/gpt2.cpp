#include "model/gpt2.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "model/lm_head.h"
#include "core/rng.h"

namespace lmf {

template <class F>
Gpt2<F>::Gpt2(const ModelConfig& cfg, bool allocate, nn::TensorParallel tp, const ops::Backend<F>* be)
    : cfg_(cfg),
      tp_(tp),
      be_(be ? be : &ops::cpu_backend<F>()),
      wc_(*be_->memory),
      acts_(*be_->memory),
      scratch_(*be_->memory),
      stats_(*be_->memory),
      dtokens_(*be_->memory),
      dtargets_(*be_->memory),
      logits_(*be_->memory) {
  LMF_CHECK(cfg.vocab_size > 0, "Gpt2 needs a resolved vocab_size (got {})", cfg.vocab_size);
  LMF_CHECK(cfg.n_embd % cfg.n_head == 0, "n_embd {} % n_head {}", cfg.n_embd, cfg.n_head);
  LMF_CHECK(tp.size >= 1 && cfg.n_head % tp.size == 0, "n_head {} over {} tensor-parallel ranks", cfg.n_head,
            tp.size);
  const int64_t C = cfg.n_embd, V = cfg.vocab_size, L = cfg.n_layer;
  const int64_t A = tp.part(cfg.n_embd), M = tp.part(4 * cfg.n_embd);  // this rank's widths
  const Split rows{0, 1}, cols{1, 1}, qkv_rows{0, 3};
  idx_.wte = ps_.add("transformer.wte.weight", {V, C}, true);
  idx_.wpe = ps_.add("transformer.wpe.weight", {cfg.block_size, C}, true);
  for (int64_t l = 0; l < L; ++l) {
    auto n = [l](const char* s) { return fmt::format("transformer.h.{}.{}", l, s); };
    typename Index::Layer li;
    const size_t first = ps_.flat_size();
    li.ln1_w = ps_.add(n("ln_1.weight"), {C}, false);
    li.ln1_b = ps_.add(n("ln_1.bias"), {C}, false);
    li.qkv_w = ps_.add(n("attn.c_attn.weight"), {3 * A, C}, true, qkv_rows);
    li.qkv_b = ps_.add(n("attn.c_attn.bias"), {3 * A}, false, qkv_rows);
    li.proj_w = ps_.add(n("attn.c_proj.weight"), {C, A}, true, cols);
    li.proj_b = ps_.add(n("attn.c_proj.bias"), {C}, false);
    li.ln2_w = ps_.add(n("ln_2.weight"), {C}, false);
    li.ln2_b = ps_.add(n("ln_2.bias"), {C}, false);
    li.fc_w = ps_.add(n("mlp.c_fc.weight"), {M, C}, true, rows);
    li.fc_b = ps_.add(n("mlp.c_fc.bias"), {M}, false, rows);
    li.fcproj_w = ps_.add(n("mlp.c_proj.weight"), {C, M}, true, cols);
    li.fcproj_b = ps_.add(n("mlp.c_proj.bias"), {C}, false);
    idx_.layers.push_back(li);
    block_ranges_.push_back({first, ps_.flat_size()});
  }
  idx_.lnf_w = ps_.add("transformer.ln_f.weight", {C}, false);
  idx_.lnf_b = ps_.add("transformer.ln_f.bias", {C}, false);
  idx_.lm_head = cfg.tied_embeddings ? idx_.wte : ps_.add("lm_head.weight", {V, C}, true);
  if (!allocate) return;
  ps_.allocate();
  ps_.place_on(*be_->memory);
  wc_.allocate(ps_);
  bind_layers();
}

template <class F>
F* Gpt2<F>::w(size_t i) {
  return wc_.at(ps_, i);
}

template <class F>
nn::P<F> Gpt2<F>::pv(size_t i) {
  return {w(i), ps_.dev_grad(i)};
}

template <class F>
void Gpt2<F>::bind_layers() {
  const int C = cfg_.n_embd, A = tp_.part(C);
  auto p = [this](size_t i) { return pv(i); };
  // A row-parallel layer's bias is added once to the sum over the group: by rank 0, before the
  // all-reduce. Every rank still accumulates its gradient (the same on all of them).
  auto row_bias = [this, &p](size_t i) {
    nn::P<F> b = p(i);
    if (tp_.rank != 0) b.w = nullptr;
    return b;
  };
  blocks_.clear();
  for (const auto& li : idx_.layers) {
    nn::Gpt2Block<F> b = block_shape();
    const int M = b.M;
    b.ln1 = {p(li.ln1_w), p(li.ln1_b), C};
    b.qkv = {p(li.qkv_w), p(li.qkv_b), C, 3 * A};
    b.proj = {p(li.proj_w), row_bias(li.proj_b), A, C};
    b.ln2 = {p(li.ln2_w), p(li.ln2_b), C};
    b.fc = {p(li.fc_w), p(li.fc_b), C, M};
    b.fcproj = {p(li.fcproj_w), row_bias(li.fcproj_b), M, C};
    b.set_backend(be_);
    blocks_.push_back(b);
  }
  lnf_ = {p(idx_.lnf_w), p(idx_.lnf_b), C};
  lnf_.be = be_;
}

template <class F>
nn::Gpt2Block<F> Gpt2<F>::block_shape() const {
  nn::Gpt2Block<F> b;
  b.C = cfg_.n_embd;
  b.NH = tp_.part(cfg_.n_head);
  b.A = tp_.part(cfg_.n_embd);
  b.M = tp_.part(4 * cfg_.n_embd);
  b.recompute_mlp = cfg_.recompute_mlp;
  b.tp = tp_;
  return b;
}

template <class F>
bool Gpt2<F>::hf_transposed(const std::string& name) {
  auto ends = [&](const char* s) {
    size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return ends("attn.c_attn.weight") || ends("attn.c_proj.weight") || ends("mlp.c_fc.weight") ||
         ends("mlp.c_proj.weight");
}

template <class F>
void Gpt2<F>::init(uint64_t seed) {
  const double std_resid = cfg_.init_std / std::sqrt(2.0 * cfg_.n_layer);
  const auto& es = ps_.entries();
  for (size_t i = 0; i < es.size(); ++i) {
    const auto& e = es[i];
    M* w = ps_.param(i);
    bool is_bias = e.name.ends_with(".bias");
    bool is_norm = e.name.find(".ln_") != std::string::npos;
    if (is_norm && !is_bias) {
      std::fill(w, w + e.size, M(1));
    } else if (is_bias) {
      std::fill(w, w + e.size, M(0));
    } else {
      bool resid = e.name.ends_with("attn.c_proj.weight") || e.name.ends_with("mlp.c_proj.weight");
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
double Gpt2<F>::flops_per_token(int T) const {
  double n = static_cast<double>(ps_.num_params()) - double(cfg_.block_size) * cfg_.n_embd;
  if (tp_.size > 1) {  // count the whole model's parameters
    n = 0;
    for (const auto& e : ps_.entries())
      if (e.name != "transformer.wpe.weight") n += double(e.size) * (e.split_dim >= 0 ? tp_.size : 1);
  }
  return 6.0 * n + 12.0 * cfg_.n_layer * T * cfg_.n_embd;
}

template <class F>
void Gpt2<F>::ensure_activations(int B, int T) {
  const size_t N = size_t(B) * T, C = cfg_.n_embd, L = cfg_.n_layer;
  if (B == cur_B_ && T == cur_T_) return;
  // Re-carve for exactly (B, T): the saved layout depends on both.
  const nn::Gpt2Block<F> shape_of = block_shape();
  const nn::Sizes per_block = shape_of.saved_size(B, T);
  // Activations: the residual stream (L + 1), the blocks', the final norm's output. Statistics:
  // the blocks', the final norm's mean and rstd, the losses and their gradients.
  const nn::Sizes total{(L + 1) * N * C + L * per_block.acts + N * C, L * per_block.stats + 4 * N};
  acts_.resize(total.acts);
  stats_.resize(total.stats);
  F* p = acts_.data();
  S* q = stats_.data();
  resid_.assign(L + 1, nullptr);
  for (size_t l = 0; l <= L; ++l) resid_[l] = nn::take(p, N * C);
  encoded_ = resid_[0];
  saved_.clear();
  for (size_t l = 0; l < L; ++l) saved_.push_back(shape_of.carve(p, q, B, T));
  lnf_out_ = nn::take(p, N * C);
  lnf_saved_ = {nn::take(q, N), nn::take(q, N)};
  losses_ = nn::take(q, N);
  dloss_ = nn::take(q, N);
  LMF_CHECK(size_t(p - acts_.data()) == total.acts && size_t(q - stats_.data()) == total.stats,
            "activation layout");

  size_t stotal = shape_of.scratch_size(B, T) + 2 * N * C;
  scratch_.resize(stotal);
  F* s = scratch_.data();
  sc_ = shape_of.carve_scratch(s, B, T);
  dres_ = nn::take(s, N * C);
  dlnf_ = nn::take(s, N * C);
  LMF_CHECK(size_t(s - scratch_.data()) == stotal, "scratch layout");
  tokens_.resize(N);
  dtokens_.resize(N);
  dtargets_.resize(N);
  cur_B_ = B;
  cur_T_ = T;
  ++layout_;
}

template <class F>
long Gpt2<F>::stage(const int32_t* tokens, const int32_t* targets, int B, int T) {
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
double Gpt2<F>::run_forward(bool targets, double grad_scale) {
  const int C = cfg_.n_embd, V = cfg_.vocab_size, N = cur_B_ * cur_T_;
  const nn::BlockHook use = wc_.begin_forward(*be_, ps_, block_ranges_, on_block_use_);
  be_->encoder_forward(encoded_, dtokens_.data(), w(idx_.wte), w(idx_.wpe), cur_B_, cur_T_, C);
  tape_.forward(blocks_, resid_, saved_, sc_, cur_B_, cur_T_, use);
  lnf_.forward(lnf_out_, lnf_saved_, resid_[blocks_.size()], N);
  have_grad_ = false;
  if (!targets) return 0.0;
  return lm_head::classify<F>(*be_, buffers(), ps_.dev_grad(idx_.lm_head), lnf_out_, w(idx_.lm_head), N, C, V,
                              grad_scale, have_grad_);
}

template <class F>
void Gpt2<F>::run_backward() {
  LMF_CHECK(have_grad_, "backward() without a forward(grad_scale > 0)");
  const int C = cfg_.n_embd, N = cur_B_ * cur_T_;
  be_->fill(dres_, F(0), size_t(N) * C);
  lnf_.backward(dres_, dlnf_, resid_[blocks_.size()], lnf_saved_, N);
  tape_.backward(dres_, sc_, cur_B_, cur_T_, on_block_grads_, on_block_use_);
}

template <class F>
void Gpt2<F>::finish_backward() {
  const int C = cfg_.n_embd;
  be_->encoder_backward(ps_.dev_grad(idx_.wte), ps_.dev_grad(idx_.wpe), dres_, tokens_.data(), cur_B_, cur_T_, C);
  have_grad_ = false;
}

template <class F>
void Gpt2<F>::last_logits(S* out) {
  lm_head::last_logits(*be_, logits_, out, lnf_out_, w(idx_.lm_head), cur_B_, cur_T_, cfg_.n_embd, cfg_.vocab_size);
}

template class Gpt2<float>;
template class Gpt2<double>;
template class Gpt2<bf16>;

}  // namespace lmf
