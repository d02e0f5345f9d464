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
      "plan", "Print the per-rank memory and per-step communication of a distributed run (no data needed)");
  struct Opts {
    std::string config;
    std::vector<std::string> sets;
    int world = 2, zero = -1, tp = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--config,-c", o->config, "TOML config file; default: built-in defaults");
  cmd->add_option("--set", o->sets, "override a field: --set section.key=value (repeatable)");
  cmd->add_option("--world-size,-n", o->world, "ranks in all (mpirun -np)")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--zero", o->zero, "ZeRO stage 0 | 1 | 2 | 3 (default: the config's [dist] zero)");
  cmd->add_option("--tensor-parallel", o->tp, "tensor-parallel ranks per group (default: the config's "
                                              "[dist] tensor_parallel)")
      ->check(CLI::PositiveNumber);
  cmd->callback([o]() {
    RunConfig cfg = o->config.empty() ? default_config(o->sets) : load_config(o->config, o->sets);
    if (o->zero >= 0) cfg.dist.zero = o->zero;
    if (o->tp > 0) cfg.dist.tensor_parallel = o->tp;
    validate_config(cfg);
    const int W = o->world, TP = cfg.dist.tensor_parallel, Z = cfg.dist.zero;
    if (W % TP != 0)
      throw UserError("--tensor-parallel {} must divide --world-size {}", TP, W);
    if (cfg.model.vocab_size <= 0)
      throw UserError("plan: set [model] vocab_size (there is no data to take it from)");
    const int DP = W / TP;
    auto m = make_model(cfg.model, /*allocate=*/false, nn::TensorParallel{nullptr, TP, 0});
    const size_t flat = m->params().flat_size();
    dist::Sharding sh(flat, DP);
    const double mib = 1024.0 * 1024.0;
    const size_t state = Z == 0 ? flat : size_t(sh.counts[0]);
    const size_t held = Z == 3 && DP > 1 ? size_t(sh.counts[0]) : flat;  // parameters resident between uses
    const auto& tc = cfg.train;
    fmt::print("model: {}\n", describe(*make_model(cfg.model, false)));
    fmt::print("data parallel: {} ranks, ZeRO stage {}; per-rank batch {} x {}, global {} x {}\n", DP, Z,
               tc.batch_size * tc.grad_accum, tc.seq_len, tc.batch_size * tc.grad_accum * DP, tc.seq_len);
    if (TP > 1)
      fmt::print("tensor parallel: {} ranks per group, each holding {} of {} heads and 1/{} of each MLP\n", TP,
                 cfg.model.n_head / TP, cfg.model.n_head, TP);
    fmt::print("per rank (fp32): parameters {:.1f} MiB, gradients {:.1f} MiB, AdamW moments {:.1f} MiB{}\n",
               held * 4 / mib, held * 4 / mib, 2 * state * 4 / mib,
               Z > 0 ? fmt::format(" (shard of {} of {} values)", sh.counts[0], flat) : "");
    if (Z == 3 && DP > 1)
      fmt::print("  ZeRO 3: plus, while in use, about two blocks' parameters and one block's gradients, and the "
                 "embeddings, final norm and head\n");
    if (tc.precision == "bf16")
      fmt::print("  bf16 storage: plus the weights the layers read, rounded to bf16, {:.1f} MiB (whole, at every "
                 "stage)\n",
                 flat * 2 / mib);
    StepShape shape;
    shape.flat = flat;
    shape.dp = DP;
    shape.zero = Z;
    shape.tp = TP;
    shape.tp_values_per_micro = uint64_t(cfg.model.n_layer) * 4 * uint64_t(tc.batch_size) * tc.seq_len *
                                uint64_t(cfg.model.n_embd);
    shape.micro = tc.grad_accum;
    for (size_t l = 0; l < m->num_blocks(); ++l) shape.blocks.push_back(m->block_param_range(l));
    auto p = plan_step(shape);
    fmt::print("per training step, rank 0 hands its communicators:\n");
    fmt::print("  all_reduce      {:>14} bytes{}\n", p.all_reduce,
               TP > 1 ? fmt::format(" ({} of them tensor-parallel)", p.tp_all_reduce) : "");
    fmt::print("  reduce_scatter  {:>14} bytes\n", p.reduce_scatter);
    fmt::print("  all_gather      {:>14} bytes\n", p.all_gather);
    fmt::print("  total           {:>14} bytes (metrics.jsonl \"comm_bytes\" records what a run counted)\n",
               p.total());
    fmt::print("  ring algorithms send about {:.1f} MiB per rank per step\n", p.wire / mib);
  });
}

}  // namespace lmf::cli
