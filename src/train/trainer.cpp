#include "train/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cblas.h>
#include <cmath>
#include <csignal>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/threading.h"
#include "core/timer.h"
#include "data/tokenizer.h"
#include "ops/cuda_backend.h"
#include "optim/schedule.h"
#include "dist/nccl_communicator.h"
#include "dist/tensor_parallel.h"
#include "train/checkpoint_dir.h"
#include "train/metrics.h"
#include "train/plot.h"
#include "train/progress.h"
#include "train/run_io.h"

namespace lmf {

namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

uint64_t comm_bytes(const dist::Communicator* c) {
  if (c == nullptr) return 0;
  const auto& s = c->stats();
  return s.all_reduce + s.reduce_scatter + s.all_gather + s.broadcast;
}

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

// The shards' manifest records the fingerprint of the vocabulary they were made with; the
// config's tokenizer (used later by sample) must be the same one.
void check_tokenizer_matches_data(const std::string& spec, const std::filesystem::path& dir) {
  auto path = dir / "manifest.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;  // e.g. llm.c shards: nothing to check
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw UserError("{}: malformed manifest: {}", path.string(), e.what());
  }
  if (!m.contains("vocab_fingerprint")) return;  // made before fingerprints existed
  auto tok = data::make_tokenizer(spec);
  std::string mine = fmt::format("{:016x}", data::vocab_fingerprint(*tok));
  if (m["vocab_fingerprint"] != mine)
    throw UserError("[data] tokenizer \"{}\" is not the tokenizer the shards in {} were made with ({}, per {})", spec,
                    dir.string(), m.value("tokenizer", std::string("?")), path.string());
}

}  // namespace

double measure_sgemm_tflops() {
  // 2048^3: large enough that OpenBLAS runs at its steady rate (1024^3 read ~10% low here).
  const int n = 2048;
  Buffer<float> a(size_t(n) * n), b(size_t(n) * n), c(size_t(n) * n);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = float(i % 7) * 0.1f;
    b[i] = float(i % 5) * 0.1f;
  }
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    Timer t;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    best = std::min(best, t.seconds());
  }
  return 2.0 * n * n * n / best / 1e12;
}

double evaluate_model(Model& model, data::DataLoader& val, int batches, int B, int T) {
  val.reset();
  Buffer<int32_t> x(size_t(B) * T), y(size_t(B) * T);
  uint64_t windows = val.windows_per_epoch();
  int n = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(batches, windows / B)));
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    val.next(x.data(), y.data());
    sum += model.forward(x.data(), y.data(), B, T);
  }
  return sum / n;
}

Trainer::Trainer(RunConfig cfg, const ops::Backend<float>* backend) : cfg_(std::move(cfg)), run_dir_(cfg_.log.run_dir) {
  validate_config(cfg_);
  comm_ = dist::make_communicator(cfg_.dist.timeout_s);
  tp_ = cfg_.dist.tensor_parallel;
  if (comm_->world() % tp_ != 0)
    throw UserError("[dist] tensor_parallel = {} must divide the number of ranks ({}, mpirun -np)", tp_,
                    comm_->world());
  dp_comm_ = comm_.get();
  if (tp_ > 1) {
    // The process grid: ranks [g tp, (g + 1) tp) form tensor-parallel group g; the ranks with
    // the same place in their groups form a data-parallel group.
    tp_comm_ = comm_->split(comm_->rank() / tp_, comm_->rank());
    dp_split_ = comm_->split(comm_->rank() % tp_, comm_->rank());
    dp_comm_ = dp_split_.get();
    tp_rank_ = tp_comm_->rank();
  }
  const int rank = dp_comm_->rank(), world = dp_comm_->world();  // data-parallel place
  const ops::Backend<float>* be = backend;  // nullptr: the CPU's
  const auto precision = *ops::parse_matmul_precision(cfg_.train.matmul_precision);  // validated
  if (!be && cfg_.train.device == "cuda") {
    be = &cuda::backend(precision);             // UserError without a CUDA build or device
    cuda::select_device(dist::local_rank());  // one GPU per process of a node
  }
  if (!be) be = &ops::cpu_backend<float>(precision);
  const ops::Backend<bf16>* be16 = nullptr;  // bf16 storage: the table the layers run on
  if (cfg_.train.precision == "bf16") {
    if (be->on_host())
      be16 = &ops::cpu_backend<bf16>();
    else if (!backend && cfg_.train.device == "cuda")
      be16 = &cuda::backend_bf16();
    else
      throw UserError("[train] precision = bf16 is not built for the {} backend (use fp32)", be->name);
  }
  if (!be->on_host() && comm_->world() > 1) {
    // Gradients, parameters and tensor-parallel activations travel between GPUs over NCCL, one
    // communicator per group; the host values (loss, norm parts, stop flag) still over MPI.
    if (dp_comm_->world() > 1) device_comm_ = dist::make_nccl_communicator(*dp_comm_, cfg_.dist.timeout_s);
    if (tp_ > 1) device_tp_comm_ = dist::make_nccl_communicator(*tp_comm_, cfg_.dist.timeout_s);
  }
  set_num_threads(cfg_.train.threads);
  if (!cfg_.train.init_from.empty()) {
    // The model is the pretrained one: its shape replaces [model], and is saved with the run.
    cfg_.model = pretrained_config(cfg_.train.init_from);
    if (cfg_.train.seq_len > cfg_.model.block_size)
      throw UserError("config: [train] seq_len {} exceeds the block_size {} of [train] init_from = {}",
                      cfg_.train.seq_len, cfg_.model.block_size, cfg_.train.init_from);
    validate_config(cfg_);  // e.g. tensor_parallel must divide the pretrained model's heads
  }
  const auto& t = cfg_.train;
  uint32_t data_vocab = 0;
  if (cfg_.data.mixture.empty()) {
    train_ = std::make_unique<data::DataLoader>(cfg_.data.dir, "train", t.batch_size, t.seq_len, uint64_t(t.seed),
                                                cfg_.data.shuffle, rank, world);
    data_vocab = train_->vocab_size();
  } else {
    auto main = data::parse_mixture(cfg_.data.mixture, "[data] mixture");
    auto cool = data::parse_mixture(cfg_.data.cooldown_mixture, "[data] cooldown_mixture");
    std::vector<data::MixtureSource> sources;
    for (const auto& [dir, w] : main) sources.push_back({dir, w, cool.empty() ? w : 0.0});
    for (const auto& [dir, w] : cool) {
      auto it = std::find_if(sources.begin(), sources.end(), [&](const auto& s) { return s.dir == dir; });
      if (it == sources.end())
        throw UserError("[data] cooldown_mixture: '{}' is not one of the mixture's dirs", dir.string());
      it->cooldown_weight = w;
    }
    mixture_ = std::make_unique<data::MixtureLoader>(std::move(sources), t.batch_size, t.seq_len, uint64_t(t.seed),
                                                     cfg_.data.shuffle, t.steps, cfg_.data.cooldown_fraction,
                                                     t.grad_accum, rank, world);
    data_vocab = mixture_->vocab_size();
  }
  val_ = std::make_unique<data::DataLoader>(cfg_.data.dir, "val", t.batch_size, t.seq_len, uint64_t(t.seed), false,
                                            rank, world);
  data_vocab = std::max(data_vocab, val_->vocab_size());
  if (cfg_.model.vocab_size == 0) {
    cfg_.model.vocab_size = static_cast<int>(data_vocab);
  } else if (data_vocab > uint32_t(cfg_.model.vocab_size)) {
    throw UserError("{}: the data's vocabulary ({} tokens) is larger than [model] vocab_size = {}", cfg_.data.dir,
                    data_vocab, cfg_.model.vocab_size);
  }
  check_tokenizer_matches_data(cfg_.data.tokenizer, cfg_.data.dir);
  // The blocks' all-reduces act on activations: in the backend's memory, over its communicator.
  dist::Communicator* tp_acts = device_tp_comm_ ? device_tp_comm_.get() : tp_comm_.get();
  model_ = make_model(cfg_.model, true, nn::TensorParallel{tp_acts, tp_, tp_rank_}, be, be16);
  if (tp_ > 1) whole_ = make_model(cfg_.model, /*allocate=*/false);
  dp_ = std::make_unique<DataParallel>(*dp_comm_, model_->params(), cfg_.optim, cfg_.dist.zero, tp_comm_.get(),
                                       be, device_comm_.get());
  if (cfg_.dist.overlap) dp_->overlap_with(*model_);
  dp_->attach(*model_);  // ZeRO 3: gather each block's parameters when it runs
  if (cfg_.train.cuda_graphs) {
    // A graph records the device work only: the collectives and ZeRO's hooks around the blocks
    // are host work, so graphs are for one process.
    if (comm_->world() > 1)
      throw UserError("[train] cuda_graphs: one process only (this run has {} ranks)", comm_->world());
    model_->set_graphs(true);  // UserError on a backend without graphs
  }

  if (auto ck = latest_checkpoint(run_dir_)) {
    // Resume: weights, optimizer moments, step, data position. Loaded fully before training.
    load_whole([&](Model& m) { load_model(m, ck->dir / "model.safetensors"); });
    {
      const auto& whole = whole_ ? whole_->params() : model_->params();
      std::vector<float> m(whole.flat_size()), v(whole.flat_size());
      long t = load_optimizer(m.data(), v.data(), whole, ck->dir / "optimizer.safetensors");
      if (whole_) {
        const auto& part = model_->params();
        std::vector<float> mp(part.flat_size()), vp(part.flat_size());
        dist::tp_slice(whole, m.data(), part, mp.data(), tp_, tp_rank_);
        dist::tp_slice(whole, v.data(), part, vp.data(), tp_, tp_rank_);
        m.swap(mp);
        v.swap(vp);
      }
      dp_->load_optimizer(m.data(), v.data(), t);
    }
    auto state_path = ck->dir / "state.json";
    nlohmann::json st;
    try {
      st = nlohmann::json::parse(read_file(state_path));
      start_step_ = st.at("step").get<long>();
      const auto& ls = st.at("loader");
      if (mixture_ && !ls.contains("sources"))
        throw UserError("{}: the checkpoint was trained without [data] mixture", state_path.string());
      if (!mixture_ && ls.contains("sources"))
        throw UserError("{}: the checkpoint was trained with a [data] mixture", state_path.string());
      if (mixture_)
        mixture_->restore(ls.at("sources"));
      else
        train_->restore({ls.at("epoch").get<uint64_t>(), ls.at("index").get<uint64_t>()});
      tokens_seen_ = st.at("tokens").get<uint64_t>();
    } catch (const nlohmann::json::exception& e) {
      throw UserError("{}: malformed checkpoint state: {}", state_path.string(), e.what());
    }
    if (start_step_ != ck->step)
      throw UserError("{}: step {} does not match its directory {}", state_path.string(), start_step_,
                      ck->dir.string());
  } else if (!cfg_.train.init_from.empty()) {
    load_whole([&](Model& m) { load_pretrained_weights(m, cfg_.train.init_from); });
  } else {
    // Under tensor parallelism too the whole model is drawn, so a run's weights do not depend
    // on how it is split.
    load_whole([&](Model& m) { m.init(uint64_t(cfg_.train.seed)); });
  }
  model_->params().upload_params();  // a device backend computes on its own copy
  dp_->release_unowned();  // ZeRO 3: from here on each rank keeps its shard only
}

Trainer::~Trainer() = default;

void Trainer::load_whole(const std::function<void(Model&)>& fill) {
  if (!whole_) return fill(*model_);
  auto whole = make_model(cfg_.model);
  fill(*whole);
  dist::tp_slice(whole->params(), whole->params().params(), model_->params(), model_->params().params(), tp_,
                 tp_rank_);
}

uint64_t Trainer::comm_bytes_total() const {
  return comm_bytes(comm_.get()) + comm_bytes(tp_comm_.get()) + comm_bytes(dp_split_.get()) +
         comm_bytes(device_comm_.get()) + comm_bytes(device_tp_comm_.get());
}

uint64_t Trainer::comm_calls_total() const {
  uint64_t n = 0;
  for (const auto* c : {comm_.get(), tp_comm_.get(), dp_split_.get(), device_comm_.get(), device_tp_comm_.get()})
    if (c) n += c->stats().calls;
  return n;
}

double Trainer::evaluate() {
  dp_->begin_micro_batch();
  double loss = evaluate_model(*model_, *val_, cfg_.train.eval_batches, cfg_.train.batch_size, cfg_.train.seq_len);
  dp_->end_micro_batch(/*backward=*/false);
  dp_comm_->all_reduce_sum(&loss, 1);  // groups evaluate equally many batches of disjoint windows
  return loss / dp_comm_->world();
}

void Trainer::save_checkpoint(long step) {
  // ZeRO 3: the whole parameters, for the file (collective), dropped again on the way out.
  dp_->gather_all();
  struct Release {
    DataParallel& dp;
    ~Release() { dp.release_unowned(); }
  } release{*dp_};
  nlohmann::json loader;
  if (mixture_) {
    loader = {{"sources", mixture_->state()}};
  } else {
    auto st = train_->state();
    loader = {{"epoch", st.epoch}, {"index", st.index}};
  }
  nlohmann::json state = {{"step", step},
                          {"tokens", tokens_seen_},
                          {"loader", loader},
                          {"seed", cfg_.train.seed},
                          {"optimizer_step", dp_->step_count()},
                          {"world_size", comm_->world()},
                          {"tensor_parallel", tp_}};
  std::string config = config_to_toml(cfg_);
  // Collective: every rank takes part, rank 0 writes. The files hold the single-process layout.
  model_->params().download_params();  // a device backend's weights, into the host copy
  auto opt = dp_->full_state();
  std::unique_ptr<Model> whole;
  std::vector<float> m_whole, v_whole;
  if (whole_) {
    const auto& part = model_->params();
    auto p = dist::tp_gather(whole_->params(), part, part.params(), *tp_comm_);
    m_whole = dist::tp_gather(whole_->params(), part, opt.m, *tp_comm_);
    v_whole = dist::tp_gather(whole_->params(), part, opt.v, *tp_comm_);
    if (comm_->rank() == 0) {
      whole = make_model(cfg_.model);
      std::copy(p.begin(), p.end(), whole->params().params());
    }
    opt.m = m_whole.data();
    opt.v = v_whole.data();
  }
  if (comm_->rank() != 0) return;
  const Model& saved = whole ? *whole : *model_;
  write_checkpoint(run_dir_, step, cfg_.checkpoint.keep_last, [&](const std::filesystem::path& dir) {
    save_model(saved, dir / "model.safetensors");
    save_optimizer(opt.m, opt.v, opt.t, saved.params(), dir / "optimizer.safetensors");
    write_file_atomic(dir / "state.json", state.dump(2) + "\n");
    write_file_atomic(dir / "config.toml", config);
  });
}

TrainSummary Trainer::run(long stop_at) {
  const auto& tc = cfg_.train;
  const int B = tc.batch_size, T = tc.seq_len;
  const int world = dp_comm_->world();  // data-parallel groups: each sees its own batch
  const bool rank0 = comm_->rank() == 0;  // writes the run's files and talks to the terminal
  TrainSummary sum;
  sum.start_step = sum.end_step = start_step_;
  auto metrics_path = run_dir_ / "metrics.jsonl";
  std::unique_ptr<MetricsLog> metrics;
  if (rank0) {
    std::filesystem::create_directories(run_dir_);
    write_file_atomic(run_dir_ / "config.toml", config_to_toml(cfg_));
    keep_tokenizer_copy(cfg_.data.tokenizer, run_dir_);
    metrics = std::make_unique<MetricsLog>(metrics_path, /*append=*/start_step_ > 0);
  }
  if (start_step_ >= tc.steps) return sum;

  // MFU's denominator: [log] peak_tflops, else this CPU's measured sgemm rate; on a GPU only
  // the configured peak (none: no mfu in the metrics).
  const bool on_host = model_->backend().on_host();
  double peak = cfg_.log.peak_tflops > 0 ? cfg_.log.peak_tflops
                : !on_host              ? 0.0
                : rank0                 ? measure_sgemm_tflops()
                                        : 1.0;
  std::unique_ptr<Progress> progress;
  if (rank0 && cfg_.log.progress != "off")
    progress = std::make_unique<Progress>(tc.steps, start_step_, cfg_.log.progress == "plain");
  auto say = [&](const std::string& line) {
    if (progress) progress->message(line);
  };
  const auto& mbe = model_->backend();
  const std::string gemms = model_->bf16_storage() ? ", bf16 storage"
                            : mbe.matmul_precision == ops::MatmulPrecision::fp32
                                ? ""
                                : fmt::format(", {} GEMMs", ops::to_string(mbe.matmul_precision));
  say(on_host ? fmt::format("model: {}; {} threads{}", describe(*model_), num_threads(), gemms)
              : fmt::format("model: {}; on {}{}{}", describe(*model_), mbe.name, gemms,
                            tc.cuda_graphs ? ", CUDA graphs" : ""));
  if (comm_->world() > 1)
    say(fmt::format("data parallel: {} ranks ({}), ZeRO stage {}, global batch {} x {}{}", world, comm_->kind(),
                    cfg_.dist.zero, tc.batch_size * tc.grad_accum * world, tc.seq_len,
                    tp_ > 1 ? fmt::format("; tensor parallel: {} ranks per group", tp_) : std::string()));
  if (start_step_ == 0 && !tc.init_from.empty()) say(fmt::format("starting from {}", tc.init_from));
  if (start_step_ > 0) say(fmt::format("resuming from step {}", start_step_));

  g_stop_signal = 0;
  auto old_int = std::signal(SIGINT, on_stop_signal);
  auto old_term = std::signal(SIGTERM, on_stop_signal);
  struct Restore {
    decltype(old_int) i, t;
    ~Restore() { std::signal(SIGINT, i); std::signal(SIGTERM, t); }
  } restore{old_int, old_term};

  Buffer<int32_t> x(size_t(B) * T), y(size_t(B) * T);
  // Each rank's gradients are scaled so that their sum over ranks is the global batch's mean.
  const double grad_scale = 1.0 / (double(B) * T * tc.grad_accum * world);
  const double flops_tok = model_->flops_per_token(T);
  int bad_steps = 0;
  Timer run_timer;
  for (long step = start_step_; step < tc.steps; ++step) {
    Timer step_timer;
    const uint64_t comm_before = comm_bytes_total(), calls_before = comm_calls_total();
    dp_->zero_grad();
    double loss = 0;
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      if (mixture_)
        mixture_->next(x.data(), y.data(), step, micro);
      else
        train_->next(x.data(), y.data());
      dp_->begin_micro_batch();
      if (tc.cuda_graphs) {  // one process: no overlap to arm
        loss += model_->forward_backward(x.data(), y.data(), B, T, grad_scale) / tc.grad_accum;
      } else {
        loss += model_->forward(x.data(), y.data(), B, T, grad_scale) / tc.grad_accum;
        dp_->arm(micro == tc.grad_accum - 1);
        model_->backward();
      }
      dp_->end_micro_batch(/*backward=*/true);
    }
    dp_comm_->all_reduce_sum(&loss, 1);
    loss /= world;
    double norm = dp_->sync_and_clip(cfg_.optim.grad_clip);
    double lr = lr_at(cfg_.optim, step, tc.steps);
    if (std::isfinite(norm) && std::isfinite(loss)) {
      dp_->update(lr);
      bad_steps = 0;
    } else if (++bad_steps >= 5) {
      throw Error(fmt::format("training diverged: non-finite loss or gradient for 5 steps in a row (step {}); "
                              "the last checkpoint is intact",
                              step + 1));
    } else {
      say(fmt::format("step {}: non-finite loss or gradient, update skipped", step + 1));
    }
    tokens_seen_ += uint64_t(B) * T * tc.grad_accum * world;
    double dt = step_timer.seconds();
    double tok_s = double(B) * T * tc.grad_accum * world / dt;
    double tflops = flops_tok * tok_s / 1e12;
    long done = step + 1;
    sum.end_step = done;
    sum.last_train_loss = loss;
    nlohmann::json rec = {{"step", done},          {"train_loss", loss},      {"lr", lr},
                          {"grad_norm", norm},     {"tokens", tokens_seen_},  {"tokens_per_s", tok_s},
                          {"model_tflops", tflops}, {"step_ms", dt * 1e3},   {"peak_rss_mb", peak_rss_mb()}};
    if (peak > 0) rec["mfu"] = tflops / peak;
    if (!on_host) rec["peak_device_mb"] = double(model_->backend().peak_memory_bytes()) / 1048576.0;
    bool last = done == tc.steps;
    // A signal on any rank (Slurm signals them all, but not at the same instant) stops every
    // rank after this same step.
    int signalled = g_stop_signal.load() != 0 ? 1 : 0;
    if (comm_->world() > 1) comm_->all_reduce_max(&signalled, 1);
    bool stopping = signalled != 0 || (stop_at > 0 && done >= stop_at);
    if (dp_->peak_resident_bytes() > 0) rec["zero3_peak_params_grads_mb"] = dp_->peak_resident_bytes() / 1048576.0;
    if (comm_->world() > 1) {  // this step's collectives
      rec["comm_bytes"] = comm_bytes_total() - comm_before;
      rec["comm_calls"] = comm_calls_total() - calls_before;
    }
    if (last || (tc.eval_every > 0 && done % tc.eval_every == 0)) {
      double vl = evaluate();
      rec["val_loss"] = vl;
      rec["val_ppl"] = std::exp(vl);
      sum.last_val_loss = vl;
      say(fmt::format("step {}: val loss {:.4f} (perplexity {:.2f})", done, vl, std::exp(vl)));
    }
    if (metrics) metrics->write(rec);
    if (progress) {
      progress->update(done, {{"loss", fmt::format("{:.4f}", loss)},
                              {"tok/s", format_count(tok_s)},
                              {"lr", fmt::format("{:.2e}", lr)}});
    }
    if (last || stopping || (cfg_.checkpoint.every > 0 && done % cfg_.checkpoint.every == 0)) save_checkpoint(done);
    if (stopping) {
      sum.interrupted = true;
      if (signalled)
        say(g_stop_signal.load() != 0
                ? fmt::format("stopped by signal {} at step {}; checkpoint written, re-run to resume",
                              g_stop_signal.load(), done)
                : fmt::format("stopped at step {}: another rank was signalled; checkpoint written, re-run to resume",
                              done));
      break;
    }
  }
  if (progress) progress->finish();
  if (rank0) write_loss_plot(read_metrics(metrics_path), run_dir_ / "loss.svg");
  return sum;
}

}  // namespace lmf
