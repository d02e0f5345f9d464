#pragma once
// GPT-2 family language model over one flat ParamStore. Parameter names are Hugging Face's
// (GPT2LMHeadModel), shapes are lmforge's (out, in) for every matrix.
#include <functional>
#include <memory>
#include <vector>

#include "core/buffer.h"
#include "core/memory.h"
#include "core/param_store.h"
#include "model/compute_copy.h"
#include "model/lm_head.h"
#include "model/lm_steps.h"
#include "model/model_config.h"
#include "nn/gpt2_block.h"
#include "nn/tape.h"

namespace lmf {

template <class F>
class Gpt2 : public LmSteps<Gpt2<F>, F> {
 public:
  // Under bf16 storage (F = bf16) the parameters, their gradients and the optimizer's state are
  // float (M); the layers read a copy of the weights rounded to F during each forward
  // (model/compute_copy.h). Statistics, losses and logits are S (float).
  using Number = F;
  using M = ops::master_t<F>;
  using S = ops::stat_t<F>;

  // Registers and allocates parameters (zeros). allocate = false: the registry only (names,
  // shapes, offsets), for planning; such a model cannot run. With a tensor-parallel group
  // (tp.size > 1) the model holds and runs this rank's part of every block (nn/nn.h); the
  // registry records how each tensor is split (ParamEntry::split_dim).
  // be: the backend that runs it (nullptr: the CPU's); with a device backend, parameters and
  // activations live in device memory (ParamStore::place_on) and the host parameters are the
  // copy for init, load and save (upload_params / download_params).
  explicit Gpt2(const ModelConfig& cfg, bool allocate = true, nn::TensorParallel tp = {},
                 const ops::Backend<F>* be = nullptr);
  Gpt2(const Gpt2&) = delete;
  Gpt2& operator=(const Gpt2&) = delete;

  // GPT-2 initialisation: N(0, init_std) for matrices and embeddings, init_std/sqrt(2L) for the
  // residual projections (attn.c_proj, mlp.c_proj), zeros for biases, ones for norm gains.
  // Drawn from Philox by (seed, parameter index, element), so independent of thread count.
  void init(uint64_t seed);

  // forward, backward, forward_backward and set_graphs: LmSteps (model/lm_steps.h).
  // Logits of the last position of each sequence of the last forward: (B, V). Computed on demand.
  void last_logits(S* out /*(B, V)*/);

  // Named intermediates of the last forward, for layer-by-layer comparison with a reference
  // (in the backend's memory).
  const F* block_output(size_t l) const { return resid_[l + 1]; }  // (B, T, C)
  const F* final_norm_output() const { return lnf_out_; }           // (B, T, C)

  ParamStore<M>& params() { return ps_; }
  const ParamStore<M>& params() const { return ps_; }
  const ops::Backend<F>& backend() const { return *be_; }
  const ModelConfig& config() const { return cfg_; }
  // 6 x (parameters - position table) + 12 L T C, as ../shared/bench/torch_train_bench.py;
  // of the whole model, also under tensor parallelism.
  double flops_per_token(int T) const;
  size_t activation_bytes() const { return acts_.bytes() + stats_.bytes() + scratch_.bytes(); }

  // Indices into the registry, by role (for weight export and the inference path).
  struct Index {
    size_t wte, wpe, lnf_w, lnf_b, lm_head;  // lm_head == wte when tied
    struct Layer {
      size_t ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
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
  // True for matrices that Hugging Face's GPT-2 stores transposed (Conv1D: (in, out)).
  static bool hf_transposed(const std::string& name);

 private:
  void ensure_activations(int B, int T);
  // The parts of a step, as LmSteps (model/lm_steps.h) describes them.
  long stage(const int32_t* tokens, const int32_t* targets, int B, int T);
  double run_forward(bool targets, double grad_scale);
  void run_backward();
  void finish_backward();
  bool has_block_hooks() const { return on_block_grads_ || on_block_use_; }
  uint64_t layout() const { return layout_; }
  friend class LmSteps<Gpt2<F>, F>;
  lm_head::Buffers<F> buffers() { return {dtargets_.data(), losses_, dloss_, dlnf_}; }
  void bind_layers();
  F* w(size_t i);         // the weights the ops read: ps_.dev_param(i), or its compute copy
  nn::P<F> pv(size_t i);  // w(i) and its gradient
  nn::Gpt2Block<F> block_shape() const;  // a block's widths (this rank's), no parameters

  ModelConfig cfg_;
  nn::TensorParallel tp_;
  const ops::Backend<F>* be_;
  ParamStore<M> ps_;
  ComputeCopy<F> wc_;  // the weights the layers read
  Index idx_;
  std::vector<std::pair<size_t, size_t>> block_ranges_;
  std::function<void(size_t)> on_block_grads_;
  nn::BlockHook on_block_use_;
  std::vector<nn::Gpt2Block<F>> blocks_;
  nn::LayerNorm<F> lnf_;

  // Activations for the current (B, T).
  int cur_B_ = 0, cur_T_ = 0;  // shape the activations are carved for
  Array<F> acts_, scratch_;    // in the backend's memory
  Array<S> stats_;             // the saved statistics, losses and their gradients, likewise
  Buffer<int32_t> tokens_;     // host: the last forward's ids (the encoder's backward groups them)
  Array<int32_t> dtokens_, dtargets_;  // the same ids and the targets, in the backend's memory
  Array<S> logits_;            // (B, V) last_logits on a device backend
  F* encoded_ = nullptr;  // (N, C) embedding output = block 0 input
  std::vector<F*> resid_;  // L+1 pointers (N, C): resid_[l] = input of block l, resid_[L] = output
  std::vector<typename nn::Gpt2Block<F>::Saved> saved_;
  typename nn::Gpt2Block<F>::Scratch sc_{};
  F* lnf_out_ = nullptr;   // (N, C)
  typename nn::LayerNorm<F>::Saved lnf_saved_{};
  F* dres_ = nullptr;      // (N, C)
  F* dlnf_ = nullptr;      // (N, C)
  S* losses_ = nullptr;    // (N)
  S* dloss_ = nullptr;     // (N)

  nn::Tape<F, nn::Gpt2Block<F>> tape_;
  bool have_grad_ = false;
  uint64_t layout_ = 0;  // counts the activations' re-carves (a graph's key)
};

extern template class Gpt2<float>;
extern template class Gpt2<double>;
extern template class Gpt2<bf16>;

}  // namespace lmf
