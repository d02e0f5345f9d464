#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/tables.h"
#include "core/threading.h"
#include "train/bench.h"
#include "train/trainer.h"

namespace lmf::cli {

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench", "Time full training steps (forward, backward, AdamW) on random tokens; one JSON line per run");
  struct Opts {
    int L = 12, C = 768, H = 12, vocab = 50257, B = 4, T = 64, steps = 7, warmup = 2, threads = 0, KV = 0, ffn = 0;
    std::string arch = "gpt2", device = "cpu", precision = "fp32", storage = "fp32";
    double peak_tflops = 0;
    bool profile = false, recompute_mlp = true, graphs = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--arch", o->arch, "model family: gpt2 | llama")->capture_default_str();
  cmd->add_option("--KV", o->KV, "llama: key/value heads; 0 = H")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--ffn", o->ffn, "llama: MLP width; 0 = lmforge's default")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--L", o->L, "layers")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--C", o->C, "width")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--H", o->H, "heads")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--vocab", o->vocab, "vocabulary size")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--B", o->B, "batch size")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--T", o->T, "sequence length")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o->steps, "timed steps (median reported)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o->warmup, "untimed steps first")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", o->threads, "CPU threads; 0 = all")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--peak-tflops", o->peak_tflops,
                  "peak for MFU; 0 = this machine's measured sgemm rate (cpu), no MFU (cuda)")
      ->capture_default_str();
  cmd->add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  cmd->add_option("--recompute-mlp", o->recompute_mlp,
                  "recompute the MLP activation in backward (true) or keep it (false): [model] recompute_mlp")
      ->capture_default_str();
  cmd->add_flag("--profile", o->profile,
                "time every op (each waits for its end): adds \"ops\" to the JSON line and prints a table to stderr");
  cmd->add_flag("--cuda-graphs", o->graphs,
                "device cuda: each step's forward and backward as one CUDA graph, launched ([train] cuda_graphs)");
  cmd->add_option("--matmul-precision", o->precision,
                  "GEMM products: fp32 | tf32 | bf16 (tensor cores on cuda; emulated, slower, on cpu)")
      ->capture_default_str();
  cmd->add_option("--precision", o->storage,
                  "storage of activations and weights: fp32 | bf16 ([train] precision; on cpu, the slow "
                  "specification of the GPU's bf16)")
      ->capture_default_str();
  cmd->callback([o]() {
    if (o->C % o->H != 0) throw UserError("--C {} must be a multiple of --H {}", o->C, o->H);
    set_num_threads(o->threads);
    if (o->arch != "gpt2" && o->arch != "llama") throw UserError("--arch: expected gpt2 or llama (got \"{}\")", o->arch);
    if (o->device != "cpu" && o->device != "cuda") throw UserError("--device: expected cpu or cuda (got \"{}\")", o->device);
    const auto precision = ops::parse_matmul_precision(o->precision);
    if (!precision) throw UserError("--matmul-precision: expected fp32, tf32 or bf16 (got \"{}\")", o->precision);
    if (o->graphs && o->device != "cuda") throw UserError("--cuda-graphs needs --device cuda (got \"{}\")", o->device);
    if (o->graphs && o->profile)
      throw UserError("--cuda-graphs and --profile: profiling waits for each op's end, which a graph cannot");
    const ops::Backend<bf16>* be16 = bf16_table(o->device, *precision, o->storage);
    if (be16) o->precision = "bf16";  // what its products are, for the JSON line
    const ops::Backend<float>* be = &float_table(o->device, *precision);
    ModelConfig mc;
    mc.arch = o->arch;
    mc.n_kv_head = o->KV;
    mc.ffn_hidden = o->ffn;
    mc.tied_embeddings = o->arch == "gpt2";  // as ../shared/bench/torch_train_bench.py
    mc.n_layer = o->L;
    mc.n_embd = o->C;
    mc.n_head = o->H;
    // After n_head: kv_heads() is H when --KV is 0.
    if (o->arch == "llama" && (o->H % mc.kv_heads() != 0 || (o->C / o->H) % 2 != 0))
      throw UserError("--KV {} must divide --H {}, and C / H must be even", o->KV, o->H);
    mc.vocab_size = o->vocab;
    mc.block_size = o->T;
    mc.recompute_mlp = o->recompute_mlp;
    const bool on_cpu = be->on_host();
    const double sgemm = on_cpu ? measure_sgemm_tflops() : 0.0;
    const double peak = o->peak_tflops > 0 ? o->peak_tflops : sgemm;
    auto r = bench_train_step(mc, o->B, o->T, o->steps, o->warmup, 0, be, o->profile, be16, o->graphs);
    nlohmann::json j = {{"impl", "lmforge"}, {"arch", o->arch}, {"KV", mc.kv_heads()}, {"ffn", mc.ffn_size()},
                        {"L", o->L}, {"C", o->C}, {"H", o->H}, {"vocab", o->vocab}, {"B", o->B}, {"T", o->T},
                        {"device", o->device}, {"matmul_precision", o->precision}, {"precision", o->storage}, {"recompute_mlp", o->recompute_mlp}, {"cuda_graphs", o->graphs}, {"threads", num_threads()},
                        {"params", r.params},
                        {"ms_per_step", std::round(r.ms_per_step * 100) / 100},
                        {"tokens_per_s", std::round(r.tokens_per_s * 10) / 10},
                        {"model_tflops", std::round(r.model_tflops * 1e4) / 1e4},
                        {"peak_rss_mb", std::round(r.peak_rss_mb)},
                        {"loss", std::round(r.loss * 1e4) / 1e4}};
    if (on_cpu) j["sgemm_tflops"] = std::round(sgemm * 1e4) / 1e4;
    if (peak > 0) j["mfu"] = std::round(r.model_tflops / peak * 1e4) / 1e4;
    if (!on_cpu) j["peak_device_mb"] = std::round(r.peak_device_mb);
    if (o->profile) {
      double total = 0;
      for (const auto& op : r.ops) total += op.seconds;
      auto ops = nlohmann::json::array();
      std::string table = fmt::format("{:<24} {:>10} {:>12} {:>7}\n", "op", "calls/step", "ms/step", "share");
      for (const auto& op : r.ops) {
        const double ms = op.seconds * 1e3 / o->steps, share = total > 0 ? op.seconds / total : 0.0;
        ops.push_back({{"op", op.op}, {"calls_per_step", double(op.calls) / o->steps},
                       {"ms_per_step", std::round(ms * 1e3) / 1e3}, {"share", std::round(share * 1e4) / 1e4}});
        table += fmt::format("{:<24} {:>10.1f} {:>12.3f} {:>6.1f}%\n", op.op, double(op.calls) / o->steps, ms,
                             100 * share);
      }
      j["ops"] = ops;
      fmt::print(stderr, "{}", table);
    }
    fmt::print("{}\n", j.dump());
  });
}

}  // namespace lmf::cli
