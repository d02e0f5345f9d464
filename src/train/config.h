#pragma once
// A run's configuration: TOML with sections [model] [data] [optim] [train] [checkpoint] [log].
// Every field has a default (the member initialisers below) and a one-line description (the
// field table in config.cpp). Unknown sections or keys and wrong types are errors naming the
// file, section and key. The resolved config is written next to every run and checkpoint.
#include <filesystem>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace lmf {

struct DataConfig {
  std::string dir = "data/sotu";  // directory of token shards (train_*.bin, val_*.bin) from `prepare`
  std::string tokenizer = "byte";  // tokenizer the shards were made with
  bool shuffle = true;             // visit training windows in a seeded random order each epoch
  std::string mixture;             // weighted training sources "dir=w,dir=w"; empty: `dir` alone
  std::string cooldown_mixture;    // weights for the cooldown, same dirs; empty: as `mixture`
  double cooldown_fraction = 0.0;  // last fraction of steps that use cooldown_mixture
};

struct OptimConfig {
  std::string name = "adamw";       // optimizer: adamw
  double lr = 1e-3;                 // peak learning rate
  double min_lr_ratio = 0.1;        // final learning rate as a fraction of lr
  std::string schedule = "cosine";  // cosine | wsd (warmup-stable-decay) | constant
  long warmup_steps = 50;           // linear warmup from 0 to lr
  double decay_fraction = 0.2;      // wsd: fraction of steps spent in the final linear decay
  double beta1 = 0.9;               // AdamW first-moment decay
  double beta2 = 0.95;              // AdamW second-moment decay
  double eps = 1e-8;                // AdamW denominator epsilon
  double weight_decay = 0.1;        // decoupled weight decay on matrices (not biases, norms)
  double grad_clip = 1.0;           // clip the global gradient norm to this; 0 disables
};

struct TrainConfig {
  int batch_size = 16;   // sequences per micro-batch (B)
  int seq_len = 128;     // tokens per sequence (T); at most model.block_size
  int grad_accum = 1;    // micro-batches per optimizer step
  long steps = 300;      // optimizer steps in total
  long seed = 1337;      // seeds initialisation, data order and nothing else
  int threads = 0;       // CPU threads; 0 = all cores (or OMP_NUM_THREADS)
  long eval_every = 100;  // evaluate validation loss every this many steps (and at the end); 0 = only at the end
  int eval_batches = 20;  // validation batches per evaluation
  std::string device = "cpu";  // cpu | cuda
  std::string matmul_precision = "fp32";  // fp32 | tf32 | bf16: the GEMMs' products (ops::MatmulPrecision)
  std::string precision = "fp32";  // fp32 | bf16: storage of activations and the weights the ops read
  bool cuda_graphs = false;  // device cuda, one process: each micro-batch's device work as one CUDA graph
  std::string init_from;       // run directory or Hugging Face checkpoint to start from; empty: init
};

struct CheckpointConfig {
  long every = 100;   // write a checkpoint every this many steps (and at the end); 0 = only at the end
  int keep_last = 2;  // complete checkpoints kept; older ones are removed; 0 = keep all
};

struct LogConfig {
  std::string run_dir = "runs/default";  // run directory: config, metrics, checkpoints, plots
  std::string progress = "auto";         // auto (bar on a terminal, lines otherwise) | plain | off
  double peak_tflops = 0.0;  // peak FLOP/s for MFU, in TFLOP/s; 0 = measure this machine's sgemm once
};

struct DistConfig {
  int zero = 0;            // ZeRO stage across data-parallel ranks: 0 | 1 | 2 | 3
  double timeout_s = 60;   // a collective waiting longer ends the job (a rank died or hangs)
  bool overlap = false;    // zero 0/1: start each block's gradient all-reduce during the backward
  int tensor_parallel = 1; // ranks splitting each block (Megatron-style); world / this = data-parallel
};

struct RunConfig {
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  TrainConfig train;
  CheckpointConfig checkpoint;
  LogConfig log;
  DistConfig dist;
};

// Loads `path` over the defaults, then applies `overrides` ("section.key=value").
// Throws UserError (one line naming file/flag, section.key, and what was expected).
RunConfig load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
// Defaults with overrides only (no file).
RunConfig default_config(const std::vector<std::string>& overrides = {});
// Applies one "section.key=value" override.
void apply_override(RunConfig& cfg, const std::string& assignment);
// Checks ranges and relations between fields; UserError naming the field.
void validate_config(const RunConfig& cfg);
// The resolved config as TOML, each field preceded by its description.
std::string config_to_toml(const RunConfig& cfg);
// Parses TOML text (as written by config_to_toml) over the defaults; `origin` names the source in errors.
RunConfig config_from_toml_string(const std::string& text, const std::string& origin);

}  // namespace lmf
