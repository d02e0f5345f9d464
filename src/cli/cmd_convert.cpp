// `lmforge convert`: other formats into an lmforge run, and a run out to Hugging Face.
//   --from llama2c --model M.bin --tokenizer T.bin --output RUN
//   --from hf DIR --output RUN
//   --run RUN --to hf DIR [--dtype f32|bf16|f16] [--max-shard-mb N]
#include <fmt/core.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "model/hf.h"
#include "model/llama2c.h"
#include "train/checkpoint_dir.h"
#include "train/config.h"
#include "train/run_io.h"

namespace lmf::cli {

namespace fs = std::filesystem;

namespace {

// Writes `model` as a run: RUN/config.toml and RUN/checkpoints/step_0000000, so that sample,
// eval and `[train] init_from = RUN` take it like any trained run. Refuses a run that has
// checkpoints already (nothing written is ever replaced).
void write_run(const Model& model, const std::string& tokenizer_spec, const fs::path& out, const std::string& source) {
  if (latest_checkpoint(out))
    throw UserError("--output {}: already holds a run with checkpoints (choose a new directory)", out.string());
  RunConfig rc = default_config();
  rc.model = model.config();
  rc.data.tokenizer = tokenizer_spec;
  rc.data.dir = "";
  rc.log.run_dir = out.string();
  // Sampling uses seq_len as its context; a converted model was trained at its full block size
  // (capped so that the KV cache of a long-context model stays small).
  rc.train.seq_len = std::min(model.config().block_size, 4096);
  fs::create_directories(out);
  keep_tokenizer_copy(tokenizer_spec, out);
  const std::string config = config_to_toml(rc);
  nlohmann::json state = {{"step", 0}, {"tokens", 0}, {"converted_from", source}};
  write_checkpoint(out, 0, 0, [&](const fs::path& dir) {
    save_model(model, dir / "model.safetensors");
    write_file_atomic(dir / "state.json", state.dump(2) + "\n");
    write_file_atomic(dir / "config.toml", config);
  });
  write_file_atomic(out / "config.toml", config);
}

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return DType::F32;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "f16" || s == "float16") return DType::F16;
  throw UserError("--dtype: expected f32, bf16 or f16 (got \"{}\")", s);
}

}  // namespace

void add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "convert", "Convert checkpoints: llama2.c or Hugging Face into an lmforge run, or a run out to Hugging Face");
  struct Opts {
    std::vector<std::string> from, to;
    std::string model, tokenizer, output, run, dtype = "f32";
    double max_shard_mb = 5000;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--from", o->from, "source format: `llama2c` (with --model, --tokenizer) or `hf DIR`")
      ->expected(1, 2);
  cmd->add_option("--to", o->to, "target: `hf DIR` (a Hugging Face checkpoint directory, from --run)")->expected(2);
  cmd->add_option("--model", o->model, "llama2c: the checkpoint (.bin with its 7-int header)");
  cmd->add_option("--tokenizer", o->tokenizer, "llama2c: its tokenizer.bin");
  cmd->add_option("--output,-o", o->output, "--from: the run directory to create");
  cmd->add_option("--run,-r", o->run, "--to: the run to export (its latest checkpoint)");
  cmd->add_option("--dtype", o->dtype, "--to hf: weight dtype f32 | bf16 | f16")->capture_default_str();
  cmd->add_option("--max-shard-mb", o->max_shard_mb, "--to hf: shard the weights above this many MB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([o]() {
    if (o->from.empty() == o->to.empty()) throw UserError("convert: give exactly one of --from or --to");
    if (!o->from.empty()) {
      if (o->output.empty()) throw UserError("convert --from: --output RUN is required");
      const std::string kind = o->from[0];
      if (kind == "llama2c") {
        if (o->from.size() != 1) throw UserError("--from llama2c takes no directory: use --model and --tokenizer");
        if (o->model.empty() || o->tokenizer.empty())
          throw UserError("--from llama2c: --model M.bin and --tokenizer T.bin are required");
        ModelConfig c = read_llama2c_config(o->model);
        const std::string spec = "llama2c:" + o->tokenizer;
        auto tok = data::make_tokenizer(spec);
        if (tok->vocab_size() != c.vocab_size)
          throw UserError("--tokenizer {}: {} tokens, but --model {} has a vocabulary of {}", o->tokenizer,
                          tok->vocab_size(), o->model, c.vocab_size);
        auto m = make_model(c);
        load_llama2c(*family<Llama<float>>(*m), o->model);
        write_run(*m, spec, o->output, "llama2c:" + o->model);
        fmt::print("wrote run {} ({}) from {}\n", o->output, describe(*m), o->model);
      } else if (kind == "hf") {
        if (o->from.size() != 2) throw UserError("--from hf needs the checkpoint directory: --from hf DIR");
        const fs::path dir = o->from[1];
        ModelConfig c = read_hf_config(dir);
        auto m = make_model(c);
        load_hf_weights(*m, dir);
        std::string spec = "byte";
        std::error_code ec;
        if (fs::is_regular_file(dir / "tokenizer.json", ec)) {
          spec = "bpe:" + (dir / "tokenizer.json").string();
          try {
            auto tok = data::make_tokenizer(spec);
            if (tok->vocab_size() > c.vocab_size)
              throw UserError("{} tokens, the model only {}", tok->vocab_size(), c.vocab_size);
          } catch (const UserError& e) {
            throw UserError("{}: tokenizer.json cannot be used with this model: {}", dir.string(), e.what());
          }
        } else {
          fmt::print(stderr, "lmforge: note: {} has no tokenizer.json; the run uses the byte tokenizer\n",
                     dir.string());
        }
        write_run(*m, spec, o->output, "hf:" + dir.string());
        fmt::print("wrote run {} ({}) from {}\n", o->output, describe(*m), dir.string());
      } else {
        throw UserError("--from: expected llama2c or hf (got \"{}\")", kind);
      }
      return;
    }
    if (o->to[0] != "hf") throw UserError("--to: expected hf (got \"{}\")", o->to[0]);
    if (o->run.empty()) throw UserError("convert --to hf: --run RUN is required");
    auto run = open_run(o->run);
    HfExportOptions opt;
    opt.dtype = parse_dtype(o->dtype);
    opt.max_shard_bytes = static_cast<uint64_t>(o->max_shard_mb * 1e6);
    const std::string spec = run_tokenizer_spec(run.cfg.data.tokenizer, o->run);
    if (spec.starts_with("bpe:") && spec.ends_with(".json")) {
      opt.tokenizer_json = spec.substr(4);
    } else {
      fmt::print(stderr, "lmforge: note: tokenizer '{}' has no tokenizer.json form here; none is written\n", spec);
    }
    if (auto tok = data::make_tokenizer(spec)) {
      opt.eos_token_id = tok->eot_id();
      opt.bos_token_id = tok->bos_id() >= 0 ? tok->bos_id() : tok->eot_id();
    }
    save_hf(*run.model, o->to[1], opt);
    fmt::print("wrote {} ({}, {}) from {} step {}\n", o->to[1], describe(*run.model), o->dtype, o->run, run.step);
  });
}

}  // namespace lmf::cli
