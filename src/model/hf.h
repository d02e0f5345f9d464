#pragma once
// Hugging Face checkpoint directories, read and written exactly as `transformers` does:
//   config.json                         model_type "gpt2" (GPT2LMHeadModel) or "llama"
//                                       (LlamaForCausalLM) and its shape
//   model.safetensors                   the weights, or
//   model-00001-of-0000N.safetensors    shards, with
//   model.safetensors.index.json        {"metadata": {"total_size"}, "weight_map": {name: shard}}
//   tokenizer.json                      optional
// Tensor names are transformers' (lmforge's registry uses the same); GPT-2's Conv1D matrices are
// stored (in, out) there and transposed on the way in and out. Weights in F32, BF16 or F16 are
// read; any of the three is written.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model.h"
#include "model/model_config.h"

namespace lmf {

// True if `dir` holds a config.json (a Hugging Face checkpoint directory, not an lmforge run).
bool is_hf_dir(const std::filesystem::path& dir);

// The model shape of DIR/config.json. UserError naming the file and field for anything lmforge
// cannot represent exactly (another model_type, activation, head_dim, rope_scaling type...).
ModelConfig read_hf_config(const std::filesystem::path& dir);

// Loads the weights of a Hugging Face checkpoint directory (single file or shards) into a model
// built from read_hf_config(dir). Every model tensor must be present with its shape; a tensor
// the model has no place for is an error (the config and the weights disagree), except the
// buffers transformers keeps beside the weights (attn.bias / masked_bias, rotary inv_freq) and a
// tied lm_head.weight.
void load_hf_weights(Model& model, const std::filesystem::path& dir);

// Loads every model tensor from a set of safetensors files, by lmforge name (or the alias a
// GPT2Model checkpoint uses), transposing GPT-2's Conv1D matrices. `where` names the checkpoint
// in errors. Same rules as load_hf_weights for missing and unexpected tensors.
void load_weights_from(Model& model, const std::vector<std::filesystem::path>& files, const std::string& where);

// dst (cols, rows) = src (rows, cols)^T.
void transpose_matrix(float* dst, const float* src, int64_t rows, int64_t cols);

struct HfExportOptions {
  DType dtype = DType::F32;                // F32, BF16 or F16 (rounded to nearest even)
  uint64_t max_shard_bytes = 5000000000;   // transformers' default "5GB"; above it, shards
  std::filesystem::path tokenizer_json;    // copied as tokenizer.json when not empty
  int bos_token_id = -1, eos_token_id = -1;  // written to config.json when >= 0
};

// Writes `model` as a Hugging Face checkpoint directory that
// AutoModelForCausalLM.from_pretrained loads. A Llama with interleaved RoPE (llama2.c, Meta)
// has its q and k rows permuted per head to transformers' rotate-half convention, as
// transformers' own Llama conversion script does: the same function, in HF's layout. `dir` must not exist or be empty; the files are
// written into a temporary sibling directory that is renamed to `dir` once complete.
void save_hf(const Model& model, const std::filesystem::path& dir, const HfExportOptions& opt = {});

}  // namespace lmf
