#pragma once
// Llama family language model (LlamaForCausalLM) over one flat ParamStore. Parameter names are
// Hugging Face's; every matrix is (out, in) in both Hugging Face and lmforge, so no transposes.
// RMSNorm, rotary positions (interleaved or rotate-half, per config), grouped-query attention,
// SwiGLU MLP, optional projection biases, no position table.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/memory.h"
#include "core/param_store.h"
#include "model/compute_copy.h"
#include "model/lm_head.h"
#include "model/lm_steps.h"
#include "model/model_config.h"
#include "nn/llama_block.h"
#include "nn/tape.h"

namespace lmf {

template <class F>
class Llama : public LmSteps<Llama<F>, F> {
 public:
  // Under bf16 storage (F = bf16) the parameters, their gradients and the optimizer's state are
  // float (M); the layers read a copy of the weights rounded to F during each forward
  // (model/compute_copy.h). Statistics, losses and logits are S (float).
  using Number = F;
  using M = ops::master_t<F>;
  using S = ops::stat_t<F>;

  // arch "llama"; registers and allocates parameters (zeros); allocate = false: the registry
  // only, as Gpt2's; tp: this rank's part of a tensor-parallel group, as Gpt2's.
  // be: the backend that runs it (nullptr: the CPU's); with a device backend, parameters and
  // activations live in device memory (ParamStore::place_on) and the host parameters are the
  // copy for init, load and save (upload_params / download_params).
  explicit Llama(const ModelConfig& cfg, bool allocate = true, nn::TensorParallel tp = {},
                 const ops::Backend<F>* be = nullptr);
  Llama(const Llama&) = delete;
  Llama& operator=(const Llama&) = delete;

  // N(0, init_std) for matrices and embeddings, init_std/sqrt(2L) for the residual projections
  // (o_proj, down_proj), ones for norm gains. Philox by (seed, parameter index, element).
  void init(uint64_t seed);

  // forward, backward, forward_backward and set_graphs: LmSteps (model/lm_steps.h).
  void last_logits(S* out /*(B, V)*/);

  const F* block_output(size_t l) const { return resid_[l + 1]; }  // (B, T, C)
  const F* final_norm_output() const { return norm_out_; }          // (B, T, C)

  ParamStore<M>& params() { return ps_; }
  const ParamStore<M>& params() const { return ps_; }
  const ops::Backend<F>& backend() const { return *be_; }
  const ModelConfig& config() const { return cfg_; }
  int n_kv_head() const { return KVH_; }
  int ffn_hidden() const { return H_; }
  // 6 x matmul parameters (all but an untied input embedding) + 12 L T C (attention), as
  // ../shared/bench/torch_train_bench.py counts; of the whole model, also under tensor parallelism.
  double flops_per_token(int T) const;
  size_t activation_bytes() const { return acts_.bytes() + stats_.bytes() + scratch_.bytes(); }

  static constexpr size_t kNone = size_t(-1);  // an absent (optional) bias
  struct Index {
    size_t embed, norm, lm_head;  // lm_head == embed when tied
    struct Layer {
      size_t attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down;
      size_t bq = kNone, bk = kNone, bv = kNone, bo = kNone, bgate = kNone, bup = kNone, bdown = kNone;
    };
    std::vector<Layer> layers;
  };
  const Index& index() const { return idx_; }
  // Tensor i as the layers read it (the compute copy under bf16 storage), in the backend's memory,
  // after round_weights() (a forward rounds them too): for the decoders.
  const F* weight(size_t i) const { return wc_.at(ps_, i); }
  void round_weights() const { wc_.round_all(*be_, ps_); }
  // Block l's parameters occupy [first, second) of the flat buffer (padding included), and
  // their gradients are final once backward() calls the hook with l (data parallelism starts
  // reducing them then, while earlier blocks still run backward).
  std::pair<size_t, size_t> block_param_range(size_t l) const { return block_ranges_[l]; }
  size_t num_blocks() const { return block_ranges_.size(); }
  void on_block_grads(std::function<void(size_t)> hook) { on_block_grads_ = std::move(hook); }
  // Called before each block's forward and backward and after its forward (nn::BlockUse).
  void on_block_use(nn::BlockHook hook) { on_block_use_ = std::move(hook); }
  // Hugging Face's Llama stores every matrix (out, in), as lmforge does: none is transposed.
  static bool hf_transposed(const std::string&) { return false; }
  // RoPE frequencies (head_size / 2), after rope_scaling.
  const std::vector<double>& rope_inv_freq() const { return inv_freq_; }
  // The same, in the backend's memory (what rope_forward reads there).
  const double* rope_inv_freq_device() const { return dinv_freq_.data(); }

 private:
  void ensure_activations(int B, int T);
  // The parts of a step, as LmSteps (model/lm_steps.h) describes them.
  long stage(const int32_t* tokens, const int32_t* targets, int B, int T);
  double run_forward(bool targets, double grad_scale);
  void run_backward();
  void finish_backward();
  bool has_block_hooks() const { return on_block_grads_ || on_block_use_; }
  uint64_t layout() const { return layout_; }
  friend class LmSteps<Llama<F>, F>;
  lm_head::Buffers<F> buffers() { return {dtargets_.data(), losses_, dloss_, dnorm_}; }
  void bind_layers();
  F* w(size_t i);         // the weights the ops read: ps_.dev_param(i), or its compute copy
  nn::P<F> pv(size_t i);  // w(i) and its gradient
  nn::LlamaBlock<F> block_shape() const;  // a block's widths (this rank's), no parameters

  ModelConfig cfg_;
  nn::TensorParallel tp_;
  const ops::Backend<F>* be_;
  int KVH_ = 0, H_ = 0;  // the whole model's kv heads and MLP width
  std::vector<double> inv_freq_;
  Array<double> dinv_freq_;  // inv_freq_ in the backend's memory, for the blocks
  ParamStore<M> ps_;
  ComputeCopy<F> wc_;  // the weights the layers read
  Index idx_;
  std::vector<std::pair<size_t, size_t>> block_ranges_;
  std::function<void(size_t)> on_block_grads_;
  nn::BlockHook on_block_use_;
  std::vector<nn::LlamaBlock<F>> blocks_;
  nn::RmsNorm<F> norm_;

  int cur_B_ = 0, cur_T_ = 0;
  Array<F> acts_, scratch_;    // in the backend's memory
  Array<S> stats_;             // the saved statistics, losses and their gradients, likewise
  Buffer<int32_t> tokens_;     // host: the last forward's ids (the encoder's backward groups them)
  Array<int32_t> dtokens_, dtargets_;  // the same ids and the targets, in the backend's memory
  Array<S> logits_;            // (B, V) last_logits on a device backend
  std::vector<F*> resid_;  // L+1 pointers (N, C)
  std::vector<typename nn::LlamaBlock<F>::Saved> saved_;
  typename nn::LlamaBlock<F>::Scratch sc_{};
  F* norm_out_ = nullptr;   // (N, C)
  S* norm_rstd_ = nullptr;  // (N)
  F* dres_ = nullptr;       // (N, C)
  F* dnorm_ = nullptr;      // (N, C)
  S* losses_ = nullptr;     // (N)
  S* dloss_ = nullptr;      // (N)

  nn::Tape<F, nn::LlamaBlock<F>> tape_;
  bool have_grad_ = false;
  uint64_t layout_ = 0;  // counts the activations' re-carves (a graph's key)
};

extern template class Llama<float>;
extern template class Llama<double>;
extern template class Llama<bf16>;

}  // namespace lmf
