#include <fmt/core.h>

#include "cli/commands.h"
#include "train/config.h"
#include "train/trainer.h"

namespace lmf::cli {

void add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model; re-running on the same run directory resumes from its latest checkpoint");
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
    long stop_at = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--config,-c", o->config, "TOML config file (see `lmforge config` for every field); default: built-in defaults");
  cmd->add_option("--set", o->sets, "override a field: --set section.key=value (repeatable)");
  cmd->add_option("--stop-at", o->stop_at,
                  "stop after this step with a checkpoint (the schedule still spans [train] steps); 0 = run to the end")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o]() {
    RunConfig cfg = o->config.empty() ? default_config(o->sets) : load_config(o->config, o->sets);
    Trainer trainer(cfg);
    auto s = trainer.run(o->stop_at);
    if (trainer.comm().rank() != 0) return;  // rank 0 speaks for the job
    if (s.end_step == s.start_step && s.start_step >= cfg.train.steps) {
      fmt::print("run {} is already complete at step {} (raise --set train.steps=N to continue)\n", cfg.log.run_dir,
                 s.end_step);
      return;
    }
    fmt::print("trained steps {}..{} of {}: train loss {:.4f}, val loss {:.4f}; run directory {}\n", s.start_step,
               s.end_step, cfg.train.steps, s.last_train_loss, s.last_val_loss, cfg.log.run_dir);
  });
}

}  // namespace lmf::cli
