#include "train/config.h"

#include <fmt/format.h>

#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>
#include <variant>

#include "core/error.h"
#include "ops/backend.h"

namespace lmf {

namespace {

using FieldRef = std::variant<int*, long*, double*, bool*, std::string*>;

struct Field {
  const char* section;
  const char* key;
  FieldRef ref;
  const char* description;
};

// The one table of fields: section, key, member, description. A member of a config struct
// that is not listed here cannot be set from TOML and is not written to the resolved config.
std::vector<Field> fields(RunConfig& c) {
  return {
      {"model", "arch", &c.model.arch, "model family: gpt2 | llama"},
      {"model", "n_layer", &c.model.n_layer, "transformer blocks"},
      {"model", "n_head", &c.model.n_head, "attention heads; n_embd must be a multiple"},
      {"model", "n_embd", &c.model.n_embd, "model width C"},
      {"model", "vocab_size", &c.model.vocab_size, "vocabulary size; 0 = from the data's shards"},
      {"model", "block_size", &c.model.block_size, "maximum context length (learned positions)"},
      {"model", "tied_embeddings", &c.model.tied_embeddings, "classifier shares the token embedding"},
      {"model", "recompute_mlp", &c.model.recompute_mlp,
       "recompute the MLP activation (GELU / SwiGLU output) in backward instead of keeping it: less memory "
       "(batch x seq x ffn values per layer), one more elementwise pass; the same numbers"},
      {"model", "init_std", &c.model.init_std,
       "std of the normal init; residual projections get init_std / sqrt(2 n_layer)"},
      {"model", "n_kv_head", &c.model.n_kv_head, "llama: key/value heads (grouped-query attention); 0 = n_head"},
      {"model", "ffn_hidden", &c.model.ffn_hidden, "llama: MLP hidden width; 0 = 8/3 n_embd rounded up to 64"},
      {"model", "norm_eps", &c.model.norm_eps, "llama: RMSNorm epsilon"},
      {"model", "rope_theta", &c.model.rope_theta, "llama: RoPE base"},
      {"model", "rope_interleaved", &c.model.rope_interleaved,
       "llama: RoPE pairs (2j, 2j+1) as Meta and llama2.c; false: (j, j + hs/2) as Hugging Face"},
      {"model", "rope_scaling", &c.model.rope_scaling, "llama: RoPE context extension: none | linear | llama3"},
      {"model", "rope_factor", &c.model.rope_factor, "llama: rope_scaling's factor"},
      {"model", "rope_low_freq_factor", &c.model.rope_low_freq_factor, "llama3 scaling: low_freq_factor"},
      {"model", "rope_high_freq_factor", &c.model.rope_high_freq_factor, "llama3 scaling: high_freq_factor"},
      {"model", "rope_original_context", &c.model.rope_original_context,
       "llama3 scaling: original_max_position_embeddings"},
      {"model", "attention_bias", &c.model.attention_bias, "llama: biases on the q, k, v and o projections"},
      {"model", "mlp_bias", &c.model.mlp_bias, "llama: biases on the gate, up and down projections"},

      {"data", "dir", &c.data.dir, "directory of token shards (train_*.bin, val_*.bin) from `lmforge prepare`"},
      {"data", "tokenizer", &c.data.tokenizer,
       "tokenizer the shards were made with (for sample): byte | gpt2 | cl100k_base | o200k_base | bpe:PATH | llama2c:PATH"},
      {"data", "shuffle", &c.data.shuffle, "visit training windows in a seeded random order each epoch"},
      {"data", "mixture", &c.data.mixture,
       "weighted training sources \"dir=w,dir=w\" (validation stays on `dir`); empty: `dir` alone"},
      {"data", "cooldown_mixture", &c.data.cooldown_mixture,
       "source weights for the cooldown, \"dir=w,...\" over the mixture's dirs; empty: as mixture"},
      {"data", "cooldown_fraction", &c.data.cooldown_fraction,
       "last fraction of the steps that use cooldown_mixture (e.g. MeCo: 0.1)"},

      {"optim", "name", &c.optim.name, "optimizer: adamw"},
      {"optim", "lr", &c.optim.lr, "peak learning rate"},
      {"optim", "min_lr_ratio", &c.optim.min_lr_ratio, "final learning rate as a fraction of lr"},
      {"optim", "schedule", &c.optim.schedule, "learning-rate schedule: cosine | wsd | constant"},
      {"optim", "warmup_steps", &c.optim.warmup_steps, "linear warmup steps from 0 to lr"},
      {"optim", "decay_fraction", &c.optim.decay_fraction, "wsd: fraction of steps in the final linear decay"},
      {"optim", "beta1", &c.optim.beta1, "AdamW first-moment decay"},
      {"optim", "beta2", &c.optim.beta2, "AdamW second-moment decay"},
      {"optim", "eps", &c.optim.eps, "AdamW denominator epsilon"},
      {"optim", "weight_decay", &c.optim.weight_decay, "decoupled weight decay on matrices (not biases, norms)"},
      {"optim", "grad_clip", &c.optim.grad_clip, "clip the global gradient norm to this; 0 disables"},

      {"train", "batch_size", &c.train.batch_size, "sequences per micro-batch (B)"},
      {"train", "seq_len", &c.train.seq_len, "tokens per sequence (T), at most model.block_size"},
      {"train", "grad_accum", &c.train.grad_accum, "micro-batches per optimizer step"},
      {"train", "steps", &c.train.steps, "optimizer steps in total"},
      {"train", "seed", &c.train.seed, "seeds initialisation and data order"},
      {"train", "threads", &c.train.threads, "CPU threads; 0 = all cores (or OMP_NUM_THREADS)"},
      {"train", "eval_every", &c.train.eval_every, "validate every this many steps and at the end; 0 = only at the end"},
      {"train", "eval_batches", &c.train.eval_batches, "validation batches per evaluation"},
      {"train", "device", &c.train.device, "cpu | cuda"},
      {"train", "matmul_precision", &c.train.matmul_precision,
       "products inside the linear layers' and classifier's GEMMs (and with bf16, attention's): fp32 | "
       "tf32 | bf16 (fp32 storage and accumulation; tensor cores on a GPU, emulated by rounding on the CPU)"},
      {"train", "precision", &c.train.precision,
       "storage of activations and of the weights the layers read: fp32 | bf16 (bf16: fp32 master weights, "
       "gradients and optimizer state; every product bf16, as matmul_precision = bf16)"},
      {"train", "cuda_graphs", &c.train.cuda_graphs,
       "device = cuda, one process: record each micro-batch's forward and backward once as a CUDA graph and "
       "launch it from then on (one launch instead of one per kernel; the same numbers)"},
      {"train", "init_from", &c.train.init_from,
       "start from these weights: a run directory or a Hugging Face checkpoint directory ([model] is then "
       "taken from it); empty = random init"},

      {"checkpoint", "every", &c.checkpoint.every, "checkpoint every this many steps and at the end; 0 = only at the end"},
      {"checkpoint", "keep_last", &c.checkpoint.keep_last, "complete checkpoints kept (older removed); 0 = all"},

      {"log", "run_dir", &c.log.run_dir, "run directory: config, metrics, checkpoints, plots"},
      {"log", "progress", &c.log.progress, "auto (bar on a terminal, lines otherwise) | plain | off"},
      {"log", "peak_tflops", &c.log.peak_tflops, "peak TFLOP/s for MFU; 0 = measure this machine's sgemm once"},

      {"dist", "zero", &c.dist.zero,
       "ZeRO stage over data-parallel ranks (mpirun -np N): 0 = replicate, 1 = shard optimizer state, "
       "2 = also reduce-scatter gradients, 3 = also shard parameters (gathered block by block)"},
      {"dist", "timeout_s", &c.dist.timeout_s,
       "seconds a rank waits in a collective before ending the job (a peer died or hangs)"},
      {"dist", "overlap", &c.dist.overlap,
       "zero 0/1: start each block's gradient all-reduce as soon as its backward is done"},
      {"dist", "tensor_parallel", &c.dist.tensor_parallel,
       "ranks that split each block's heads and MLP columns (Megatron-style); the rest of the ranks "
       "(mpirun -np N: N / tensor_parallel) are data-parallel"},
  };
}

const char* type_name(const FieldRef& r) {
  return std::visit(
      [](auto* p) -> const char* {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) return "a string";
        else if constexpr (std::is_same_v<T, bool>) return "a boolean (true/false)";
        else if constexpr (std::is_same_v<T, double>) return "a number";
        else return "an integer";
      },
      r);
}

// Sets a field from a TOML node; `where` prefixes errors ("config.toml: [train] steps").
void set_from_node(const FieldRef& ref, const toml::node& node, const std::string& where) {
  auto bad = [&]() {
    std::ostringstream got;
    got << node.type();
    return UserError("{}: expected {}, got {}", where, type_name(ref), got.str());
  };
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          if (!node.is_string()) throw bad();
          *p = *node.value<std::string>();
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!node.is_boolean()) throw bad();
          *p = *node.value<bool>();
        } else if constexpr (std::is_same_v<T, double>) {
          if (!node.is_number()) throw bad();
          *p = *node.value<double>();
        } else {
          if (!node.is_integer()) throw bad();
          int64_t v = *node.value<int64_t>();
          if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max())
            throw UserError("{}: {} is out of range", where, v);
          *p = static_cast<T>(v);
        }
      },
      ref);
}

void apply_table(RunConfig& cfg, const toml::table& root, const std::string& origin) {
  auto fs = fields(cfg);
  std::set<std::string> sections;
  for (const auto& f : fs) sections.insert(f.section);
  for (auto&& [skey, snode] : root) {
    std::string sname(skey.str());
    if (!sections.contains(sname)) {
      throw UserError("{}: unknown section [{}] (known: [model] [data] [optim] [train] [checkpoint] [log])",
                      origin, sname);
    }
    const toml::table* tbl = snode.as_table();
    if (!tbl) throw UserError("{}: [{}] must be a table", origin, sname);
    for (auto&& [k, v] : *tbl) {
      std::string key(k.str());
      const Field* hit = nullptr;
      for (const auto& f : fs)
        if (sname == f.section && key == f.key) hit = &f;
      if (!hit) throw UserError("{}: unknown key '{}' in section [{}]", origin, key, sname);
      set_from_node(hit->ref, v, fmt::format("{}: [{}] {}", origin, sname, key));
    }
  }
}

}  // namespace

void apply_override(RunConfig& cfg, const std::string& assignment) {
  auto eq = assignment.find('=');
  auto dot = assignment.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    throw UserError("--set {}: expected section.key=value", assignment);
  std::string section = assignment.substr(0, dot), key = assignment.substr(dot + 1, eq - dot - 1);
  std::string value = assignment.substr(eq + 1);
  auto fs = fields(cfg);
  for (const auto& f : fs) {
    if (section != f.section || key != f.key) continue;
    std::string where = fmt::format("--set {}.{}", section, key);
    // Parse the value as TOML so that types follow the same rules as in a file; a bare word
    // is taken as a string for convenience (--set log.run_dir=runs/x).
    toml::table t;
    try {
      t = toml::parse("v = " + value);
    } catch (const toml::parse_error&) {
      if (!std::holds_alternative<std::string*>(f.ref))
        throw UserError("{}: expected {}, got '{}'", where, type_name(f.ref), value);
      t = toml::table{{"v", value}};
    }
    set_from_node(f.ref, *t.get("v"), where);
    return;
  }
  throw UserError("--set {}: unknown key '{}' in section [{}]", assignment, key, section);
}

RunConfig default_config(const std::vector<std::string>& overrides) {
  RunConfig cfg;
  for (const auto& o : overrides) apply_override(cfg, o);
  validate_config(cfg);
  return cfg;
}

RunConfig config_from_toml_string(const std::string& text, const std::string& origin) {
  RunConfig cfg;
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    throw UserError("{}:{}:{}: malformed TOML: {}", origin, e.source().begin.line, e.source().begin.column,
                    e.description());
  }
  apply_table(cfg, root, origin);
  return cfg;
}

RunConfig load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw UserError("{}: config file not found", path.string());
  std::ifstream in(path);
  if (!in) throw UserError("{}: cannot read config file", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  RunConfig cfg = config_from_toml_string(ss.str(), path.string());
  for (const auto& o : overrides) apply_override(cfg, o);
  validate_config(cfg);
  return cfg;
}

void validate_config(const RunConfig& c) {
  auto need = [](bool ok, const char* field, const std::string& what) {
    if (!ok) throw UserError("config: {} {}", field, what);
  };
  need(c.model.arch == "gpt2" || c.model.arch == "llama", "[model] arch",
       fmt::format("must be gpt2 or llama (got \"{}\")", c.model.arch));
  need(c.model.n_layer >= 1, "[model] n_layer", "must be >= 1");
  need(c.model.n_head >= 1, "[model] n_head", "must be >= 1");
  need(c.model.n_embd >= 1 && c.model.n_embd % c.model.n_head == 0, "[model] n_embd",
       fmt::format("must be a positive multiple of n_head = {} (got {})", c.model.n_head, c.model.n_embd));
  need(c.model.vocab_size >= 0, "[model] vocab_size", "must be >= 0 (0 = from the data)");
  need(c.model.block_size >= 1, "[model] block_size", "must be >= 1");
  need(c.model.init_std > 0, "[model] init_std", "must be > 0");
  if (c.model.arch == "llama") {
    const auto& m = c.model;
    need(m.n_kv_head >= 0 && m.n_head % m.kv_heads() == 0, "[model] n_kv_head",
         fmt::format("must divide n_head = {} (got {})", m.n_head, m.n_kv_head));
    need(m.head_size() % 2 == 0, "[model] n_embd",
         fmt::format("n_embd / n_head must be even for RoPE (got {})", m.head_size()));
    need(m.ffn_hidden >= 0, "[model] ffn_hidden", "must be >= 0 (0 = default)");
    need(m.norm_eps > 0, "[model] norm_eps", "must be > 0");
    need(m.rope_theta > 1, "[model] rope_theta", "must be > 1");
    need(m.rope_scaling == "none" || m.rope_scaling == "linear" || m.rope_scaling == "llama3", "[model] rope_scaling",
         fmt::format("must be none, linear or llama3 (got \"{}\")", m.rope_scaling));
    need(m.rope_factor > 0, "[model] rope_factor", "must be > 0");
    need(m.rope_scaling != "llama3" || (m.rope_low_freq_factor > 0 && m.rope_high_freq_factor > m.rope_low_freq_factor),
         "[model] rope_high_freq_factor", "must exceed rope_low_freq_factor > 0");
    need(m.rope_original_context >= 1, "[model] rope_original_context", "must be >= 1");
  }
  need(!c.data.tokenizer.empty(), "[data] tokenizer", "must not be empty");
  need(c.data.cooldown_fraction >= 0 && c.data.cooldown_fraction <= 1, "[data] cooldown_fraction",
       "must be in [0, 1]");
  need(c.data.cooldown_mixture.empty() || !c.data.mixture.empty(), "[data] cooldown_mixture",
       "needs [data] mixture");
  need(c.optim.name == "adamw", "[optim] name", fmt::format("must be \"adamw\" (got \"{}\")", c.optim.name));
  need(c.optim.lr > 0, "[optim] lr", "must be > 0");
  need(c.optim.min_lr_ratio >= 0 && c.optim.min_lr_ratio <= 1, "[optim] min_lr_ratio", "must be in [0, 1]");
  need(c.optim.schedule == "cosine" || c.optim.schedule == "wsd" || c.optim.schedule == "constant",
       "[optim] schedule", fmt::format("must be cosine, wsd or constant (got \"{}\")", c.optim.schedule));
  need(c.optim.warmup_steps >= 0, "[optim] warmup_steps", "must be >= 0");
  need(c.optim.decay_fraction >= 0 && c.optim.decay_fraction <= 1, "[optim] decay_fraction", "must be in [0, 1]");
  need(c.optim.beta1 >= 0 && c.optim.beta1 < 1, "[optim] beta1", "must be in [0, 1)");
  need(c.optim.beta2 >= 0 && c.optim.beta2 < 1, "[optim] beta2", "must be in [0, 1)");
  need(c.optim.eps > 0, "[optim] eps", "must be > 0");
  need(c.optim.weight_decay >= 0, "[optim] weight_decay", "must be >= 0");
  need(c.optim.grad_clip >= 0, "[optim] grad_clip", "must be >= 0");
  need(c.train.batch_size >= 1, "[train] batch_size", "must be >= 1");
  need(c.train.seq_len >= 1 && c.train.seq_len <= c.model.block_size, "[train] seq_len",
       fmt::format("must be in [1, model.block_size = {}] (got {})", c.model.block_size, c.train.seq_len));
  need(c.train.grad_accum >= 1, "[train] grad_accum", "must be >= 1");
  need(c.train.steps >= 1, "[train] steps", "must be >= 1");
  need(c.train.seed >= 0, "[train] seed", "must be >= 0");
  need(c.train.threads >= 0, "[train] threads", "must be >= 0");
  need(c.train.eval_every >= 0, "[train] eval_every", "must be >= 0");
  need(c.train.eval_batches >= 1, "[train] eval_batches", "must be >= 1");
  need(c.train.device == "cpu" || c.train.device == "cuda", "[train] device",
       fmt::format("must be cpu or cuda (got \"{}\")", c.train.device));
  need(ops::parse_matmul_precision(c.train.matmul_precision).has_value(), "[train] matmul_precision",
       fmt::format("must be fp32, tf32 or bf16 (got \"{}\")", c.train.matmul_precision));
  need(c.train.precision == "fp32" || c.train.precision == "bf16", "[train] precision",
       fmt::format("must be fp32 or bf16 (got \"{}\")", c.train.precision));
  need(!c.train.cuda_graphs || c.train.device == "cuda", "[train] cuda_graphs",
       fmt::format("needs [train] device = \"cuda\" (got \"{}\")", c.train.device));
  if (c.train.precision == "bf16") {
    need(c.train.matmul_precision != "tf32", "[train] matmul_precision",
         "tf32 does not go with [train] precision = bf16, whose products are bf16");
  }
  need(c.checkpoint.every >= 0, "[checkpoint] every", "must be >= 0");
  need(c.checkpoint.keep_last >= 0, "[checkpoint] keep_last", "must be >= 0");
  need(!c.log.run_dir.empty(), "[log] run_dir", "must not be empty");
  need(c.log.progress == "auto" || c.log.progress == "plain" || c.log.progress == "off", "[log] progress",
       fmt::format("must be auto, plain or off (got \"{}\")", c.log.progress));
  need(c.log.peak_tflops >= 0, "[log] peak_tflops", "must be >= 0");
  need(c.dist.zero >= 0 && c.dist.zero <= 3, "[dist] zero", fmt::format("must be 0, 1, 2 or 3 (got {})", c.dist.zero));
  need(c.dist.timeout_s > 0, "[dist] timeout_s", "must be > 0");
  const int tp = c.dist.tensor_parallel;
  need(tp >= 1, "[dist] tensor_parallel", "must be >= 1");
  if (tp > 1) {
    auto divides = [&](int n, const char* what) {
      need(n % tp == 0, "[dist] tensor_parallel",
           fmt::format("must divide {} (got tensor_parallel {}, {} {})", what, tp, what, n));
    };
    divides(c.model.n_head, "[model] n_head");
    if (c.model.arch == "llama") {
      divides(c.model.kv_heads(), "the kv heads ([model] n_kv_head)");
      divides(c.model.ffn_size(), "the MLP width ([model] ffn_hidden)");
    }
  }
}

std::string config_to_toml(const RunConfig& cfg_in) {
  RunConfig cfg = cfg_in;
  std::string out = "# lmforge run configuration (resolved: every field, with its description)\n";
  std::string section;
  for (const auto& f : fields(cfg)) {
    if (section != f.section) {
      section = f.section;
      out += fmt::format("\n[{}]\n", section);
    }
    std::string value = std::visit(
        [](auto* p) -> std::string {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, std::string>) {
            std::ostringstream os;
            os << toml::value<std::string>(*p);
            return os.str();
          } else if constexpr (std::is_same_v<T, bool>) {
            return *p ? "true" : "false";
          } else if constexpr (std::is_same_v<T, double>) {
            std::string s = fmt::format("{}", *p);  // shortest round-trip
            if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
            return s;
          } else {
            return fmt::format("{}", *p);
          }
        },
        f.ref);
    out += fmt::format("# {}\n{} = {}\n", f.description, f.key, value);
  }
  return out;
}

}  // namespace lmf
