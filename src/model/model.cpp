#include "model/model.h"

#include <fmt/format.h>

#include "core/error.h"

namespace lmf {

std::unique_ptr<Model> make_model(const ModelConfig& cfg, bool allocate, nn::TensorParallel tp,
                                  const ops::Backend<float>* be, const ops::Backend<bf16>* be16) {
  if (be16) {
    LMF_CHECK(be16->memory == (be ? be : &ops::cpu_backend<float>())->memory,
              "bf16 storage: the bf16 and float tables must share their memory");
    if (cfg.arch == "gpt2") return std::make_unique<ModelOf<Gpt2<bf16>>>(cfg, allocate, tp, be, be16);
    if (cfg.arch == "llama") return std::make_unique<ModelOf<Llama<bf16>>>(cfg, allocate, tp, be, be16);
  }
  if (cfg.arch == "gpt2") return std::make_unique<ModelOf<Gpt2<float>>>(cfg, allocate, tp, be);
  if (cfg.arch == "llama") return std::make_unique<ModelOf<Llama<float>>>(cfg, allocate, tp, be);
  throw UserError("[model] arch: unknown model family \"{}\" (expected gpt2 or llama)", cfg.arch);
}

std::string describe(const Model& m) {
  const auto& c = m.config();
  std::string heads = fmt::format("{} heads", c.n_head);
  if (c.arch == "llama" && c.n_kv_head > 0 && c.n_kv_head != c.n_head)
    heads = fmt::format("{} heads ({} kv)", c.n_head, c.n_kv_head);
  return fmt::format("{}, {} layers, width {}, {}, vocab {}, {:.2f}M parameters", c.arch, c.n_layer, c.n_embd, heads,
                     c.vocab_size, m.params().num_params() / 1e6);
}

}  // namespace lmf
