// `lmforge plan`: what a distributed run will hold and move, before it runs.
#include <fmt/core.h>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "train/config.h"
#include "train/data_parallel.h"

namespace lmf::cli {

void add_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "plan", "Print the per-rank memory and per-step communication of a data-parallel run (no data needed)");
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
    int world = 2, zero = -1, tp = 1;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--config,-c", o->config, "TOML config file; default: built-in defaults");
  cmd->add_option("--set", o->sets, "override a field: --set section.key=value (repeatable)");
  cmd->add_option("--world-size,-n", o->world, "data-parallel ranks")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--zero", o->zero, "ZeRO stage 0 | 1 | 2 (default: the config's [dist] zero)");
  cmd->add_option("--tensor-parallel", o->tp, "tensor-parallel ranks (only 1 is implemented)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([o]() {
    RunConfig cfg = o->config.empty() ? default_config(o->sets) : load_config(o->config, o->sets);
    if (o->zero >= 0) cfg.dist.zero = o->zero;
    validate_config(cfg);
    if (o->tp != 1) throw UserError("--tensor-parallel {}: tensor parallelism is not implemented yet (use 1)", o->tp);
    if (cfg.model.vocab_size <= 0)
      throw UserError("plan: set [model] vocab_size (there is no data to take it from)");
    auto m = make_model(cfg.model, /*allocate=*/false);
    const size_t flat = m->params().flat_size();
    const int W = o->world, Z = cfg.dist.zero;
    dist::Sharding sh(flat, W);
    const double mib = 1024.0 * 1024.0;
    const size_t state = Z == 0 ? flat : size_t(sh.counts[0]);
    fmt::print("model: {}\n", describe(*m));
    fmt::print("data parallel: {} ranks, ZeRO stage {}; per-rank batch {} x {}, global {} x {}\n", W, Z,
               cfg.train.batch_size * cfg.train.grad_accum, cfg.train.seq_len,
               cfg.train.batch_size * cfg.train.grad_accum * W, cfg.train.seq_len);
    fmt::print("per rank (fp32): parameters {:.1f} MiB, gradients {:.1f} MiB, AdamW moments {:.1f} MiB{}\n",
               flat * 4 / mib, flat * 4 / mib, 2 * state * 4 / mib,
               Z > 0 ? fmt::format(" (shard of {} of {} values)", sh.counts[0], flat) : "");
    auto p = plan_step(flat, W, Z, 0);
    fmt::print("per training step, rank 0 hands its communicator:\n");
    fmt::print("  all_reduce      {:>14} bytes\n", p.all_reduce);
    fmt::print("  reduce_scatter  {:>14} bytes\n", p.reduce_scatter);
    fmt::print("  all_gather      {:>14} bytes\n", p.all_gather);
    fmt::print("  total           {:>14} bytes (metrics.jsonl \"comm_bytes\" records what a run counted)\n",
               p.total());
    fmt::print("  ring algorithms send about {:.1f} MiB per rank per step\n", p.wire / mib);
  });
}

}  // namespace lmf::cli
