#pragma once
// llama2.c's "legacy" checkpoint format (karpathy/llama2.c, run.c): a header of 7 int32 (dim,
// hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: unshared classifier),
// seq_len), then float32 arrays: token_embedding (V, C); rms_att (L, C); wq (L, C, C);
// wk, wv (L, KV, C); wo (L, C, C); rms_ffn (L, C); w1 = gate (L, H, C); w2 = down (L, C, H);
// w3 = up (L, H, C); rms_final (C); two unused RoPE tables of seq_len * head_size / 2 each; the
// classifier (V, C) when unshared. Little-endian. RoPE is interleaved, RMSNorm eps 1e-5.
#include <filesystem>

#include "model/llama.h"
#include "model/model_config.h"

namespace lmf {

// The model shape a checkpoint implies (arch "llama", block_size = seq_len). Validates the
// header and that the file size is exactly what the header implies; UserError naming the file.
ModelConfig read_llama2c_config(const std::filesystem::path& path);

// Loads the weights into a model built from read_llama2c_config(path) (or an equal shape).
void load_llama2c(Llama<float>& model, const std::filesystem::path& path);

}  // namespace lmf
