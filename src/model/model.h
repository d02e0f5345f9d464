#pragma once
// One interface over the model families, for the code that does not care which family it runs:
// the trainer, checkpoints, evaluation, sampling and conversion. The families themselves
// (Gpt2<F>, Llama<F>) stay plain templates, so tests run them in double; this interface is the
// float instantiation behind a virtual call per forward/backward.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>

#include "core/param_store.h"
#include "model/gpt2.h"
#include "model/llama.h"
#include "model/model_config.h"

namespace lmf {

class Model {
 public:
  virtual ~Model() = default;
  virtual void init(uint64_t seed) = 0;
  // See LmSteps::forward (model/lm_steps.h): tokens, targets (B, T); returns the mean loss over
  // targets >= 0.
  virtual double forward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale = 0) = 0;
  virtual void backward() = 0;
  // One training micro-batch, forward then backward, returning the loss; with graphs on (a GPU's
  // CUDA graphs, LmSteps::forward_backward) its device work is recorded once and launched after.
  virtual double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                                  double grad_scale) = 0;
  // UserError on a backend without graphs (the CPU's).
  virtual void set_graphs(bool on) = 0;
  virtual void last_logits(float* out /*(B, V)*/) = 0;
  virtual ParamStore<float>& params() = 0;
  virtual const ParamStore<float>& params() const = 0;
  virtual const ModelConfig& config() const = 0;
  // Who runs it; with a device backend, params() holds a host copy and a device copy
  // (ParamStore::place_on): upload_params() after writing the host one. Under bf16 storage the
  // layers run on a bf16 table (ops::cpu_backend<bf16>, ...), and this is the float table over the
  // same memory, for what works on the float parameters and gradients: the optimizer, clipping,
  // the collectives, synchronisation and memory peaks.
  virtual const ops::Backend<float>& backend() const = 0;
  // True when activations and the weights the layers read are stored in bf16 ([train] precision).
  virtual bool bf16_storage() const = 0;
  virtual double flops_per_token(int T) const = 0;
  virtual size_t activation_bytes() const = 0;
  // True for tensors that Hugging Face stores transposed, (in, out) (GPT-2's Conv1D).
  virtual bool hf_transposed(const std::string& name) const = 0;
  // Transformer blocks, the flat range of each one's parameters, and a hook backward() calls
  // as soon as a block's gradients are final (see Gpt2::on_block_grads).
  virtual size_t num_blocks() const = 0;
  virtual std::pair<size_t, size_t> block_param_range(size_t l) const = 0;
  virtual void on_block_grads(std::function<void(size_t)> hook) = 0;
  // A hook called before each block's forward and backward and after its forward (nn::BlockUse).
  virtual void on_block_use(nn::BlockHook hook) = 0;
};

// The Model of family M (Gpt2<float> or Llama<float>, or over bf16 storage Gpt2<bf16> or
// Llama<bf16>); impl() reaches the family's own API. be: the float table (nullptr: the CPU's);
// compute: the bf16 table on the same memory, which a bf16 family runs on (nullptr: the CPU's).
template <class M>
class ModelOf final : public Model {
  using A = typename M::Number;

 public:
  explicit ModelOf(const ModelConfig& cfg, bool allocate = true, nn::TensorParallel tp = {},
                   const ops::Backend<float>* be = nullptr, const ops::Backend<A>* compute = nullptr)
      : m_(cfg, allocate, tp, compute_table(be, compute)), be_(be ? be : &ops::cpu_backend<float>()) {}
  void init(uint64_t seed) override { m_.init(seed); }
  double forward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale) override {
    return m_.forward(tokens, targets, B, T, grad_scale);
  }
  void backward() override { m_.backward(); }
  double forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T, double grad_scale) override {
    return m_.forward_backward(tokens, targets, B, T, grad_scale);
  }
  void set_graphs(bool on) override { m_.set_graphs(on); }
  void last_logits(float* out) override { m_.last_logits(out); }
  ParamStore<float>& params() override { return m_.params(); }
  const ParamStore<float>& params() const override { return m_.params(); }
  const ModelConfig& config() const override { return m_.config(); }
  const ops::Backend<float>& backend() const override { return *be_; }
  bool bf16_storage() const override { return std::is_same_v<A, bf16>; }
  double flops_per_token(int T) const override { return m_.flops_per_token(T); }
  size_t activation_bytes() const override { return m_.activation_bytes(); }
  bool hf_transposed(const std::string& name) const override { return M::hf_transposed(name); }
  size_t num_blocks() const override { return m_.num_blocks(); }
  std::pair<size_t, size_t> block_param_range(size_t l) const override { return m_.block_param_range(l); }
  void on_block_grads(std::function<void(size_t)> hook) override { m_.on_block_grads(std::move(hook)); }
  void on_block_use(nn::BlockHook hook) override { m_.on_block_use(std::move(hook)); }
  M& impl() { return m_; }
  const M& impl() const { return m_; }

 private:
  static const ops::Backend<A>* compute_table(const ops::Backend<float>* be, const ops::Backend<A>* compute) {
    if constexpr (std::is_same_v<A, float>)
      return be;
    else
      return compute;
  }
  M m_;
  const ops::Backend<float>* be_;
};

// The family's Model for cfg.arch ("gpt2" or "llama"); UserError for another arch.
// allocate = false: the parameter registry only (for planning), not runnable. tp: this
// process's place in a tensor-parallel group (the model then holds its part of every block).
// be: the backend that runs it (nullptr: the CPU's). be16: bf16 storage, on this table over be's
// memory (the float model when nullptr).
std::unique_ptr<Model> make_model(const ModelConfig& cfg, bool allocate = true, nn::TensorParallel tp = {},
                                  const ops::Backend<float>* be = nullptr, const ops::Backend<bf16>* be16 = nullptr);

// The family's implementation behind a Model, or nullptr if `m` is another family.
template <class M>
const M* family(const Model& m) {
  auto* p = dynamic_cast<const ModelOf<M>*>(&m);
  return p ? &p->impl() : nullptr;
}
template <class M>
M* family(Model& m) {
  auto* p = dynamic_cast<ModelOf<M>*>(&m);
  return p ? &p->impl() : nullptr;
}

// One line: "llama, 5 layers, width 64, 8 heads (4 kv), vocab 512, 0.26M parameters".
std::string describe(const Model& m);

}  // namespace lmf
