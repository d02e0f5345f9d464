#include <fmt/core.h>

#include "cli/commands.h"
#include "train/config.h"

namespace lmf::cli {

void add_config(CLI::App& app) {
  auto* cmd = app.add_subcommand("config", "Print the resolved config (every field, its value and description)");
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--config,-c", o->config, "TOML config file; default: built-in defaults");
  cmd->add_option("--set", o->sets, "override a field: --set section.key=value (repeatable)");
  cmd->callback([o]() {
    RunConfig cfg = o->config.empty() ? default_config(o->sets) : load_config(o->config, o->sets);
    fmt::print("{}", config_to_toml(cfg));
  });
}

}  // namespace lmf::cli
