#pragma once
// Shape of a model. Filled from the [model] section of a run's config.
#include <cstdint>
#include <string>

namespace lmf {

struct ModelConfig {
  std::string arch = "gpt2";  // model family; "gpt2" or "llama"
  int n_layer = 4;            // transformer blocks
  int n_head = 4;             // attention heads; n_embd % n_head == 0
  int n_embd = 256;           // width C
  int vocab_size = 0;         // 0: take it from the data (the shards' header)
  int block_size = 256;       // maximum context length (positions in wpe)
  bool tied_embeddings = true;  // classifier shares the token embedding (GPT-2)
  double init_std = 0.02;     // GPT-2 init; residual projections use init_std / sqrt(2 n_layer)
  // Memory policy, not shape: recompute the MLP's activation (GELU / SwiGLU output, (N, ffn) per
  // block) in backward rather than keep it. The numbers are the same either way.
  bool recompute_mlp = true;
  // Llama family (ignored by gpt2).
  int n_kv_head = 0;          // 0 = n_head
  int ffn_hidden = 0;         // llama MLP width; 0 = ffn_size()'s default
  double rope_theta = 10000.0;
  bool rope_interleaved = false;
  std::string rope_scaling = "none";  // none | linear | llama3
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int rope_original_context = 8192;
  bool attention_bias = false;  // biases on q, k, v and o projections
  bool mlp_bias = false;        // biases on gate, up and down projections
  double norm_eps = 1e-5;

  int head_size() const { return n_embd / n_head; }
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  // The MLP's hidden width: 4 n_embd for gpt2; for llama ffn_hidden, or by default 8/3 n_embd
  // (SwiGLU's three matrices then hold as many parameters as GPT-2's two) rounded up to 64.
  int ffn_size() const {
    if (arch != "llama") return 4 * n_embd;
    if (ffn_hidden > 0) return ffn_hidden;
    return (8 * n_embd / 3 + 63) / 64 * 64;
  }
};

}  // namespace lmf
