#include <fmt/core.h>

#include <cmath>

#include "cli/commands.h"
#include "cli/tables.h"
#include "core/threading.h"
#include "data/loader.h"
#include "data/stats.h"
#include "train/run_io.h"
#include "train/trainer.h"

namespace lmf::cli {

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Print a trained run's validation loss and perplexity");
  struct Opts {
    std::string run, data, device = "cpu", precision, storage;
    int batches = 0, threads = 0, batch_size = 0, seq_len = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--run,-r", o->run, "run directory (its latest checkpoint is used)")->required();
  cmd->add_option("--data", o->data, "shard directory to evaluate on (default: the run's [data] dir)");
  cmd->add_option("--batches", o->batches, "validation batches (default: the run's [train] eval_batches)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", o->batch_size, "sequences per batch (default: the run's [train] batch_size)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o->seq_len, "tokens per sequence (default: the run's [train] seq_len)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "CPU threads; 0 = all")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  cmd->add_option("--matmul-precision", o->precision,
                  "GEMM products: fp32 | tf32 | bf16 (default: the run's [train] matmul_precision)");
  cmd->add_option("--precision", o->storage,
                  "storage of activations and weights: fp32 | bf16 (default: the run's [train] precision)");
  cmd->callback([o]() {
    set_num_threads(o->threads);
    if (o->device != "cpu" && o->device != "cuda") throw UserError("--device: expected cpu or cuda (got \"{}\")", o->device);
    std::optional<ops::MatmulPrecision> precision;
    if (!o->precision.empty()) {
      precision = ops::parse_matmul_precision(o->precision);
      if (!precision) throw UserError("--matmul-precision: expected fp32, tf32 or bf16 (got \"{}\")", o->precision);
    } else {
      precision = ops::parse_matmul_precision(open_run_config(o->run).train.matmul_precision);
    }
    const ops::Backend<float>* be = &float_table(o->device, *precision);
    const ops::Backend<bf16>* be16 = bf16_table(
        o->device, *precision, o->storage.empty() ? open_run_config(o->run).train.precision : o->storage);
    auto run = open_run(o->run, be, be16);
    auto& t = run.cfg.train;
    if (o->batch_size > 0) t.batch_size = o->batch_size;
    if (o->seq_len > 0) t.seq_len = o->seq_len;
    if (t.seq_len > run.cfg.model.block_size)
      throw UserError("--seq-len {} exceeds the model's block_size {}", t.seq_len, run.cfg.model.block_size);
    std::string dir = o->data.empty() ? run.cfg.data.dir : o->data;
    if (dir.empty()) throw UserError("{}: the run names no [data] dir; give --data DIR", o->run);
    data::DataLoader val(dir, "val", t.batch_size, t.seq_len, uint64_t(t.seed), false);
    if (val.vocab_size() > uint32_t(run.cfg.model.vocab_size))
      throw UserError("{}: the data's vocabulary ({} tokens) is larger than the model's ({})", dir, val.vocab_size(),
                      run.cfg.model.vocab_size);
    int batches = o->batches > 0 ? o->batches : t.eval_batches;
    double loss = evaluate_model(*run.model, val, batches, t.batch_size, t.seq_len);
    fmt::print("step {}: val loss {:.4f}, perplexity {:.3f} ({} batches of {}x{} from {}; {}, {})\n", run.step, loss,
               std::exp(loss), batches, t.batch_size, t.seq_len, dir, be->name,
               be16 ? std::string("bf16 storage") : fmt::format("{} GEMMs", ops::to_string(be->matmul_precision)));
    fmt::print("unigram baseline (val tokens under train frequencies): {:.4f}\n",
               data::unigram_cross_entropy(dir));
  });
}

}  // namespace lmf::cli
