#pragma once
// Reading and writing a run's files: weights (safetensors, Hugging Face GPT-2 names and
// layouts), optimizer state (safetensors, lmforge layout), and opening a run for eval/sample.
#include <filesystem>
#include <memory>
#include <optional>

#include "model/gpt2.h"
#include "optim/adamw.h"
#include "train/config.h"

namespace lmf {

// Weights: every registry entry under its name; Conv1D matrices transposed to HF's (in, out).
void save_model(const Gpt2<float>& model, const std::filesystem::path& file);
void load_model(Gpt2<float>& model, const std::filesystem::path& file);
// AdamW moments as "exp_avg.<name>" / "exp_avg_sq.<name>", step count in the metadata.
void save_optimizer(const AdamW& opt, const ParamStore<float>& ps, const std::filesystem::path& file);
void load_optimizer(AdamW& opt, const ParamStore<float>& ps, const std::filesystem::path& file);

// A trained run opened for evaluation or sampling: its resolved config and latest weights.
struct OpenedRun {
  RunConfig cfg;
  std::unique_ptr<Gpt2<float>> model;
  long step = 0;
  std::filesystem::path checkpoint;
};
OpenedRun open_run(const std::filesystem::path& run_dir);

// File-based tokenizers ("bpe:PATH", "llama2c:PATH") are copied into the run directory, so a
// run can be sampled from wherever it is moved. Returns the copy's path, or empty for "byte"
// and named encodings.
std::filesystem::path keep_tokenizer_copy(const std::string& spec, const std::filesystem::path& run_dir);
// The tokenizer spec to use for a run: its own copy when the original path is gone.
std::string run_tokenizer_spec(const std::string& spec, const std::filesystem::path& run_dir);

}  // namespace lmf
