#include <fmt/core.h>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "train/config.h"
#include "train/run_io.h"

namespace lmf::cli {

void add_init(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "init", "Write a freshly initialised model's weights (safetensors, Hugging Face names and layouts)");
  struct Opts {
    std::string config, output;
    std::vector<std::string> sets;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--config,-c", o->config, "TOML config file; default: built-in defaults");
  cmd->add_option("--set", o->sets, "override a field: --set section.key=value (repeatable)");
  cmd->add_option("--output,-o", o->output, "safetensors file to write")->required();
  cmd->callback([o]() {
    RunConfig cfg = o->config.empty() ? default_config(o->sets) : load_config(o->config, o->sets);
    if (cfg.model.vocab_size <= 0) throw UserError("init: set [model] vocab_size (there is no data to take it from)");
    auto model = make_model(cfg.model);
    model->init(uint64_t(cfg.train.seed));
    save_model(*model, o->output);
    fmt::print("wrote {} ({} parameters, seed {})\n", o->output, model->params().num_params(), cfg.train.seed);
  });
}

}  // namespace lmf::cli
