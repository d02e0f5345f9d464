#include <fmt/core.h>

#include "cli/commands.h"
#include "train/metrics.h"
#include "train/plot.h"

namespace lmf::cli {

void add_plot(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "Write a run's loss curve (RUN/loss.svg) from its metrics.jsonl");
  auto run = std::make_shared<std::string>();
  cmd->add_option("--run,-r", *run, "run directory")->required();
  cmd->callback([run]() {
    std::filesystem::path dir(*run);
    write_loss_plot(read_metrics(dir / "metrics.jsonl"), dir / "loss.svg");
    fmt::print("wrote {}\n", (dir / "loss.svg").string());
  });
}

}  // namespace lmf::cli
