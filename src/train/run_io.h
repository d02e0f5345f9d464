#pragma once
// Reading and writing a run's files: weights (safetensors, Hugging Face names and layouts, so a
// checkpoint's model.safetensors is also a transformers weights file), optimizer state
// (safetensors, lmforge layout), and opening a run, or pretrained weights, for eval/sample/train.
#include <filesystem>
#include <memory>
#include <optional>

#include "model/model.h"
#include "optim/adamw.h"
#include "train/config.h"

namespace lmf {

// Weights: every registry entry under its name; Conv1D matrices transposed to HF's (in, out).
void save_model(const Model& model, const std::filesystem::path& file);
void load_model(Model& model, const std::filesystem::path& file);
// AdamW moments as "exp_avg.<name>" / "exp_avg_sq.<name>", step count in the metadata. m and
// v are whole (flat_size) buffers in the registry's layout, whatever the sharding was, so a
// checkpoint resumes on any number of ranks.
void save_optimizer(const float* m, const float* v, long t, const ParamStore<float>& ps,
                    const std::filesystem::path& file);
long load_optimizer(float* m, float* v, const ParamStore<float>& ps, const std::filesystem::path& file);

// A trained run opened for evaluation or sampling: its resolved config and latest weights.
struct OpenedRun {
  RunConfig cfg;
  std::unique_ptr<Model> model;
  long step = 0;
  std::filesystem::path checkpoint;
};
// The model is bound to `be` (nullptr: the CPU's) and its weights are in the backend's memory;
// with be16, it stores its activations in bf16 on that table (make_model).
OpenedRun open_run(const std::filesystem::path& run_dir, const ops::Backend<float>* be = nullptr,
                   const ops::Backend<bf16>* be16 = nullptr);
// The config saved with the run's latest checkpoint (open_run's, without the weights).
RunConfig open_run_config(const std::filesystem::path& run_dir);

// Pretrained weights to start training from ([train] init_from): a run directory (its latest
// checkpoint) or a Hugging Face checkpoint directory (config.json + safetensors).
ModelConfig pretrained_config(const std::filesystem::path& src);
void load_pretrained_weights(Model& model, const std::filesystem::path& src);

// File-based tokenizers ("bpe:PATH", "llama2c:PATH") are copied into the run directory, so a
// run can be sampled from wherever it is moved. Returns the copy's path, or empty for "byte"
// and named encodings.
std::filesystem::path keep_tokenizer_copy(const std::string& spec, const std::filesystem::path& run_dir);
// The tokenizer spec to use for a run: its own copy when the original path is gone.
std::string run_tokenizer_spec(const std::string& spec, const std::filesystem::path& run_dir);

}  // namespace lmf
