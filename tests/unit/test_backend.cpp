// The backend seam (ops/backend.h): models, the optimizer and data parallelism run unchanged on
// a backend whose memory the host cannot touch (tests/guarded_backend.h), and compute exactly
// what they compute on the CPU backend. A model that read device memory on the host, or called
// an op outside its backend, would crash here or count a violation; that is the class of bug a
// CUDA run would otherwise find only on a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/communicator.h"
#include "guarded_backend.h"
#include "paged_array_check.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "model/model.h"
#include "model_test_util.h"
#include "sample_data.h"
#include "optim/adamw.h"
#include "train/config.h"
#include "train/data_parallel.h"
#include "data/loader.h"
#include "train/metrics.h"
#include "train/run_io.h"
#include "train/trainer.h"
#include "test_util.h"
#include "thread_comm.h"

namespace lmf {
namespace {

using test::Guarded;
using test::guarded_backend;

ModelConfig gpt2_cfg(bool tied) { return test::small_config("gpt2", tied, 16, 13, 8); }
ModelConfig llama_cfg(bool tied) { return test::small_config("llama", tied, 16, 11, 8); }

// Host copy of the compute gradients / parameters.
std::vector<float> grads_of(Model& m) {
  m.params().download_grads();
  const float* g = m.params().grads();
  return {g, g + m.params().flat_size()};
}
std::vector<float> params_of(Model& m) {
  m.params().download_params();
  const float* p = m.params().params();
  return {p, p + m.params().flat_size()};
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && differ++ == 0) first = i;
  EXPECT_EQ(differ, 0u) << what << ": first at " << first << ": " << a[first] << " vs " << b[first];
}

// A rank's parameters followed by the whole first moment (DataParallel::full_state).
std::vector<float> params_and_m(Model& m, const DataParallel::FullState& st) {
  auto out = params_of(m);
  out.insert(out.end(), st.m, st.m + m.params().flat_size());
  return out;
}

// Runs of data-parallel ranks: each rank's params_and_m, then the losses; the same bits on both
// backends, and no host memory handed to the device.
void expect_same_runs(const std::vector<std::vector<float>>& cpu, const std::vector<std::vector<float>>& dev,
                      size_t ranks) {
  for (size_t r = 0; r < cpu.size(); ++r) expect_same_bits(cpu[r], dev[r], r < ranks ? "params and m" : "losses");
  EXPECT_EQ(Guarded::get().violations(), 0) << Guarded::get().first_violation();
}

class BackendSeam : public ::testing::TestWithParam<ModelConfig> {
 protected:
  void SetUp() override { Guarded::get().reset_violations(); }
  void TearDown() override {
    EXPECT_EQ(Guarded::get().violations(), 0) << Guarded::get().first_violation();
  }
};

// Forward, backward, logits, two micro-batches, clipping and two AdamW steps (through
// DataParallel on one rank, as the trainer runs them): every number equal to the CPU run's.
TEST_P(BackendSeam, TrainingStepsMatchTheCpuBitForBit) {
  const ModelConfig cfg = GetParam();
  const int B = 2, T = 8, V = cfg.vocab_size;
  auto cpu = make_model(cfg);
  auto dev = make_model(cfg, true, {}, &guarded_backend());
  ASSERT_TRUE(dev->params().on_device());
  ASSERT_FALSE(cpu->params().on_device());
  test::randomise(*cpu, 5);
  test::randomise(*dev, 5);  // writes the host copy ...
  dev->params().upload_params();  // ... which the device copy takes here

  OptimConfig oc;
  oc.weight_decay = 0.1;
  dist::LocalCommunicator comm;
  DataParallel dp_cpu(comm, cpu->params(), oc, 0);
  DataParallel dp_dev(comm, dev->params(), oc, 0, nullptr, &guarded_backend());
  long allocations_after_first_step = 0;
  for (int step = 0; step < 2; ++step) {
    if (step == 1) allocations_after_first_step = Guarded::get().allocations();
    dp_cpu.zero_grad();
    dp_dev.zero_grad();
    double loss_cpu = 0, loss_dev = 0;
    for (int micro = 0; micro < 2; ++micro) {
      test::Batch b = test::random_batch(B, T, V, 10 + 2 * step + micro);
      loss_cpu += cpu->forward(b.x.data(), b.y.data(), B, T, 0.25 / (B * T));
      loss_dev += dev->forward(b.x.data(), b.y.data(), B, T, 0.25 / (B * T));
      cpu->backward();
      dev->backward();
    }
    EXPECT_EQ(loss_cpu, loss_dev) << "step " << step;
    expect_same_bits(grads_of(*cpu), grads_of(*dev), "gradients");
    const double n_cpu = dp_cpu.sync_and_clip(0.05), n_dev = dp_dev.sync_and_clip(0.05);
    EXPECT_EQ(n_cpu, n_dev);
    EXPECT_GT(n_cpu, 0.05);  // so the clipping (scale) ran
    expect_same_bits(grads_of(*cpu), grads_of(*dev), "clipped gradients");
    dp_cpu.update(1e-2);
    dp_dev.update(1e-2);
    expect_same_bits(params_of(*cpu), params_of(*dev), "parameters after the update");
  }
  // One memory plan: once the first step has run, a step allocates no device memory (the
  // activations, gradients and optimizer state are all kept).
  EXPECT_EQ(Guarded::get().allocations(), allocations_after_first_step) << "device allocations in a step";
  // The optimizer state comes back to the host for checkpoints.
  auto s_cpu = dp_cpu.full_state(), s_dev = dp_dev.full_state();
  const size_t n = cpu->params().flat_size();
  expect_same_bits({s_cpu.m, s_cpu.m + n}, {s_dev.m, s_dev.m + n}, "first moments");
  expect_same_bits({s_cpu.v, s_cpu.v + n}, {s_dev.v, s_dev.v + n}, "second moments");
  EXPECT_EQ(s_cpu.t, s_dev.t);

  // Evaluation (no targets' gradient) and the last position's logits for sampling.
  test::Batch b = test::random_batch(B, T, V, 99);
  EXPECT_EQ(cpu->forward(b.x.data(), b.y.data(), B, T), dev->forward(b.x.data(), b.y.data(), B, T));
  std::vector<float> lc(size_t(B) * V), ld(size_t(B) * V);
  cpu->last_logits(lc.data());
  dev->last_logits(ld.data());
  expect_same_bits(lc, ld, "last logits");
}

// Loading the optimizer state back puts it in the backend's memory.
TEST_P(BackendSeam, OptimizerStateRoundTrips) {
  const ModelConfig cfg = GetParam();
  auto dev = make_model(cfg, true, {}, &guarded_backend());
  dist::LocalCommunicator comm;
  DataParallel dp(comm, dev->params(), OptimConfig{}, 1, nullptr, &guarded_backend());
  const size_t n = dev->params().flat_size();
  std::vector<float> m(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    m[i] = float(i) * 0.5f;
    v[i] = float(i) + 0.25f;
  }
  dp.load_optimizer(m.data(), v.data(), 7);
  auto st = dp.full_state();
  EXPECT_EQ(st.t, 7);
  expect_same_bits(m, {st.m, st.m + n}, "m");
  expect_same_bits(v, {st.v, st.v + n}, "v");
}

// KV-cache decoding (infer/decoder.cpp) runs on the model's backend: on the stand-in device every
// step's logits, and a prefill's, equal the CPU decoder's bit for bit, and greedy generation with a context small
// enough to rebuild the cache twice gives the same tokens.
TEST_P(BackendSeam, DecodingMatchesTheCpuBitForBit) {
  const ModelConfig cfg = GetParam();
  auto cpu = make_model(cfg);
  auto dev = make_model(cfg, true, {}, &guarded_backend());
  test::randomise(*cpu, 9);
  test::randomise(*dev, 9);
  dev->params().upload_params();
  auto dc = make_decoder(*cpu), dd = make_decoder(*dev);
  const test::Batch b = test::random_batch(1, cfg.block_size, cfg.vocab_size, 31);
  for (int t = 0; t < cfg.block_size; ++t) {
    const float* lc = dc->feed(b.x[t]);
    const std::vector<float> c(lc, lc + cfg.vocab_size);
    const float* ld = dd->feed(b.x[t]);
    expect_same_bits(c, {ld, ld + cfg.vocab_size}, ("logits at position " + std::to_string(t)).c_str());
  }
  for (int n : {1, cfg.block_size}) {  // a prefill, the GQA attention over n rows
    dc->reset();
    dd->reset();
    const float* lc = dc->prefill(b.x.data(), n);
    const std::vector<float> c(lc, lc + cfg.vocab_size);
    const float* ld = dd->prefill(b.x.data(), n);
    expect_same_bits(c, {ld, ld + cfg.vocab_size}, ("logits after a prefill of " + std::to_string(n)).c_str());
  }
  SampleOptions o;
  o.temperature = 0;
  o.max_new_tokens = 2 * cfg.block_size;
  o.max_context = cfg.block_size / 2;
  const std::vector<int32_t> prompt = {1, 2, 3};
  EXPECT_EQ(generate(*dev, prompt, o), generate(*cpu, prompt, o));
  o.temperature = 1;  // three samples together: a batch of three sequences, the same draws
  EXPECT_EQ(generate_samples(*dev, prompt, o, 3), generate_samples(*cpu, prompt, o, 3));
}

INSTANTIATE_TEST_SUITE_P(Families, BackendSeam,
                         ::testing::Values(gpt2_cfg(true), gpt2_cfg(false), llama_cfg(true), llama_cfg(false)),
                         [](const auto& info) {
                           return info.param.arch + (info.param.tied_embeddings ? "_tied" : "_untied");
                         });

// The guard itself: a host read of its memory is fatal, and an op given host memory is counted.
TEST(GuardedBackend, HostAccessFaultsAndHostPointersAreCounted) {
  Array<float> a(Guarded::space());
  a.resize(64);
  EXPECT_DEATH({ volatile float x = a.data()[3]; (void)x; }, "");
  Guarded::get().reset_violations();
  std::vector<float> host(64, 1.0f);
  guarded_backend().residual_forward(a.data(), a.data(), host.data(), 64);
  EXPECT_EQ(Guarded::get().violations(), 1);
  Guarded::get().reset_violations();
  std::vector<float> back(64);
  a.download(back.data(), 64);
  EXPECT_EQ(back[0], 1.0f);  // the op ran on the host pointer anyway: the count is the check
  EXPECT_EQ(Guarded::get().violations(), 0);
}

// The device copy's virtual memory (core/paged_array.h) on the guarded space: granules go back
// and come again as zeros, and an op that touches a released granule faults.
TEST(GuardedBackend, PagedArrayReleasesAndCommitsGranules) {
  Guarded::get().reset_violations();
  test::check_paged_array(Guarded::space());
  const size_t before = Guarded::get().mapped_bytes();
  {
    PagedArray<float> a(Guarded::space());
    const size_t G = Guarded::granularity() / sizeof(float);
    a.resize(4 * G);
    EXPECT_EQ(Guarded::get().mapped_bytes(), before + 4 * G * sizeof(float));
    a.release(G, 3 * G);
    EXPECT_EQ(Guarded::get().mapped_bytes(), before + 2 * G * sizeof(float));
    guarded_backend().fill(a.data(), 1.0f, G);  // backed: fine
    EXPECT_DEATH(guarded_backend().fill(a.data() + G, 1.0f, 1), "") << "an op wrote a released granule";
  }
  EXPECT_EQ(Guarded::get().mapped_bytes(), before);  // unmapped when the array goes
  EXPECT_EQ(Guarded::get().violations(), 0) << Guarded::get().first_violation();
}

// A space without virtual memory (the host's): release zeroes, everything stays resident.
TEST(PagedArray, WithoutVirtualMemoryReleaseOnlyZeroes) {
  PagedArray<float> a;
  a.resize(1000);
  EXPECT_FALSE(a.paged());
  std::vector<float> h(1000, 2.0f);
  a.upload(h.data(), h.size());
  a.release(10, 990);
  a.commit(0, 1000);
  EXPECT_EQ(a.resident_bytes(), 1000 * sizeof(float));
  test::expect_values(a, test::with_zeros(h, 10, 990), "host");
}

// Two ranks (threads) of data parallelism on the device backend: the gradients and parameters
// travel over the device communicator (guarded: it must be handed device memory), the host
// values over the host one (which would fault on device memory). Same bits as on the CPU, for
// ZeRO 0, 1 and 2, with and without overlapping the all-reduce with the backward.
TEST(BackendSeamDataParallel, TwoRanksMatchTheCpuBitForBit) {
  const ModelConfig cfg = llama_cfg(false);
  const int B = 2, T = 8, ranks = 2;
  for (int zero : {0, 1, 2})
    for (bool overlap : {false, true}) {
      SCOPED_TRACE(fmt::format("zero {} overlap {}", zero, overlap));
      Guarded::get().reset_violations();
      auto train = [&](bool device) {
        std::vector<std::vector<float>> out(ranks);
        std::vector<double> losses;
        test::ThreadGroup::run(ranks, [&](dist::Communicator& comm) {
          auto model = device ? make_model(cfg, true, {}, &guarded_backend()) : make_model(cfg);
          model->init(7);
          std::unique_ptr<dist::Communicator> dcomm;
          if (device) dcomm = std::make_unique<test::GuardedComm>(comm.split(0, comm.rank()));
          OptimConfig oc;
          oc.warmup_steps = 0;
          DataParallel dp(comm, model->params(), oc, zero, nullptr, device ? &guarded_backend() : nullptr,
                          dcomm.get());
          if (overlap) dp.overlap_with(*model);
          for (int step = 0; step < 3; ++step) {
            auto batch = test::random_batch(B, T, cfg.vocab_size, uint64_t(100 * step + comm.rank()));
            dp.zero_grad();
            double loss = model->forward(batch.x.data(), batch.y.data(), B, T, 1.0 / (ranks * (B * T - 1)));
            dp.arm(true);
            model->backward();
            dp.sync_and_clip(0.5);
            dp.update(1e-2);
            if (comm.rank() == 0) losses.push_back(loss);
          }
          auto st = dp.full_state();  // collective at ZeRO 1
          out[size_t(comm.rank())] = params_and_m(*model, st);
        });
        out.push_back(std::vector<float>(losses.begin(), losses.end()));
        return out;
      };
      auto cpu = train(false), dev = train(true);
      expect_same_runs(cpu, dev, ranks);
    }
}

// ZeRO 3 on the device backend: each rank keeps its shard of the parameters and gradients in
// the device copy's virtual memory (core/paged_array.h) and gathers each block's just before it
// runs. The guarded space's released granules have no access even inside an op, so a block that
// ran, or a gradient accumulated, without its granules committed again would crash here. Same
// bits as ZeRO 3 on the CPU (and so as every other stage), with micro-batches, clipping and three
// steps; and the device keeps less than the whole model resident.
TEST(BackendSeamDataParallel, ZeroStage3MatchesTheCpuBitForBit) {
  ModelConfig cfg = test::small_config("llama", false, 64, 13, 8);  // blocks of several granules
  cfg.n_layer = 6;
  const int B = 2, T = 8, ranks = 2, micro = 2;
  Guarded::get().reset_violations();
  size_t flat_bytes = 0;
  std::vector<size_t> peak(ranks);
  auto train = [&](bool device) {
    std::vector<std::vector<float>> out(ranks);
    std::vector<double> losses;
    test::ThreadGroup::run(ranks, [&](dist::Communicator& comm) {
      auto model = device ? make_model(cfg, true, {}, &guarded_backend()) : make_model(cfg);
      std::unique_ptr<dist::Communicator> dcomm;
      if (device) dcomm = std::make_unique<test::GuardedComm>(comm.split(0, comm.rank()));
      OptimConfig oc;
      oc.warmup_steps = 0;
      DataParallel dp(comm, model->params(), oc, 3, nullptr, device ? &guarded_backend() : nullptr, dcomm.get());
      dp.attach(*model);
      model->init(7);
      dp.release_unowned();
      for (int step = 0; step < 3; ++step) {
        dp.zero_grad();
        double loss = 0;
        for (int m = 0; m < micro; ++m) {
          auto batch = test::random_batch(B, T, cfg.vocab_size, uint64_t(100 * step + 10 * m + comm.rank()));
          dp.begin_micro_batch();
          loss += model->forward(batch.x.data(), batch.y.data(), B, T, 1.0 / (ranks * micro * (B * T - 1)));
          model->backward();
          dp.end_micro_batch(/*backward=*/true);
        }
        dp.sync_and_clip(0.5);
        dp.update(1e-2);
        if (comm.rank() == 0) losses.push_back(loss);
      }
      if (device) peak[size_t(comm.rank())] = dp.peak_resident_bytes();
      if (device) flat_bytes = 2 * model->params().flat_size() * sizeof(float);
      auto st = dp.full_state();
      dp.gather_all();
      out[size_t(comm.rank())] = params_and_m(*model, st);
    });
    out.push_back(std::vector<float>(losses.begin(), losses.end()));
    return out;
  };
  auto cpu = train(false), dev = train(true);
  expect_same_runs(cpu, dev, ranks);
  // Each rank's fullest moment (a block's backward done): its shard, the rest of the model and
  // about two blocks, well under the whole parameters and gradients.
  for (int r = 0; r < ranks; ++r) {
    EXPECT_GT(peak[size_t(r)], 0u) << "rank " << r;
    EXPECT_LT(peak[size_t(r)], flat_bytes * 4 / 5) << "rank " << r << " of " << flat_bytes << " bytes";
  }
}

// Tensor parallel 2 x data parallel 2 (ZeRO 2 and 3) on the device backend, as the trainer lays
// out four ranks: the blocks' activations all-reduced over the tensor-parallel group's device
// communicator, gradients reduce-scattered and parameters gathered over the data-parallel
// group's, the host values (loss, norm parts) over the host ones. Same bits as on the CPU, rank
// by rank, for both families. (The ZeRO 3 calls are no-ops at stage 2.)
TEST(BackendSeamDataParallel, TensorParallelTimesDataParallelMatchTheCpuBitForBit) {
  const int B = 2, T = 8, ranks = 4, tp = 2;
  for (int zero : {2, 3})
    for (const ModelConfig& cfg : {gpt2_cfg(true), llama_cfg(false)}) {
      SCOPED_TRACE(fmt::format("{} zero {}", cfg.arch, zero));
      Guarded::get().reset_violations();
      auto train = [&](bool device) {
        std::vector<std::vector<float>> out(ranks);
        std::vector<double> losses(ranks);
        test::ThreadGroup::run(ranks, [&](dist::Communicator& comm) {
          const int r = comm.rank();
          auto tp_comm = comm.split(r / tp, r), dp_comm = comm.split(r % tp, r);
          std::unique_ptr<dist::Communicator> dev_tp, dev_dp;
          if (device) {
            dev_tp = std::make_unique<test::GuardedComm>(tp_comm->split(0, tp_comm->rank()));
            dev_dp = std::make_unique<test::GuardedComm>(dp_comm->split(0, dp_comm->rank()));
          }
          const ops::Backend<float>* be = device ? &guarded_backend() : nullptr;
          auto model = make_model(
              cfg, true,
              nn::TensorParallel{device ? dev_tp.get() : tp_comm.get(), tp, tp_comm->rank()}, be);
          OptimConfig oc;
          oc.warmup_steps = 0;
          DataParallel dp(*dp_comm, model->params(), oc, zero, tp_comm.get(), be, dev_dp.get());
          dp.attach(*model);
          model->init(7);
          dp.release_unowned();
          double loss = 0;
          for (int step = 0; step < 3; ++step) {
            auto batch =
                test::random_batch(B, T, cfg.vocab_size, uint64_t(100 * step + dp_comm->rank()));
            dp.zero_grad();
            dp.begin_micro_batch();
            loss += model->forward(batch.x.data(), batch.y.data(), B, T, 1.0 / (2 * (B * T - 1)));
            model->backward();
            dp.end_micro_batch(/*backward=*/true);
            dp.sync_and_clip(0.5);
            dp.update(1e-2);
          }
          auto st = dp.full_state();
          dp.gather_all();
          out[size_t(r)] = params_and_m(*model, st);
          losses[size_t(r)] = loss;
        });
        out.push_back(std::vector<float>(losses.begin(), losses.end()));
        return out;
      };
      auto cpu = train(false), dev = train(true);
      expect_same_runs(cpu, dev, ranks);
    }
}

// The trainer on the guarded backend: the same losses, gradient norms and checkpoint bytes as on
// the CPU, also across a stop and resume (weights, moments and step back into device memory).
class TrainerOnBackend : public ::testing::Test {
 protected:
  static inline test::TempDir* tmp = nullptr;
  static void SetUpTestSuite() {
    tmp = new test::TempDir();
    test::prepare_sample_text(tmp->path() / "data");
  }
  static void TearDownTestSuite() { delete tmp; }

  static RunConfig config(const std::string& arch, const std::filesystem::path& run) {
    return default_config({"model.arch=\"" + arch + "\"", "model.n_layer=2", "model.n_embd=32", "model.n_head=4",
                           "model.block_size=32", "train.seq_len=32", "train.batch_size=4", "train.steps=6",
                           "train.grad_accum=2", "train.eval_every=3", "train.eval_batches=2", "train.threads=2",
                           "checkpoint.every=3", "log.progress=\"off\"", "log.peak_tflops=1",
                           "data.dir=\"" + (tmp->path() / "data").string() + "\"",
                           "log.run_dir=\"" + run.string() + "\""});
  }
  static std::vector<nlohmann::json> metrics(const std::filesystem::path& run) {
    return read_metrics(run / "metrics.jsonl");
  }
  // A run of `arch` with `setting` (one override) against the same run in fp32: the run records the
  // setting (`recorded` in its config.toml), the setting reaches the model (the losses differ from
  // fp32's), stays close to fp32 (a relative 2^-8 per rounding, averaged over sums), and is as
  // deterministic across a resume: the same losses, norms and weights, bit for bit.
  static void expect_close_to_fp32_and_resumes_exactly(const std::string& arch, const std::string& setting,
                                                       const std::string& recorded) {
    SCOPED_TRACE(arch + ": " + setting);
    const auto dir = tmp->path() / (arch + "_" + std::to_string(std::hash<std::string>{}(setting)));
    const auto fp32_run = dir / "fp32", run = dir / "run", stop_run = dir / "stop";
    auto with = [&](const std::filesystem::path& r) {
      RunConfig c = config(arch, r);
      apply_override(c, setting);
      return c;
    };
    Trainer(config(arch, fp32_run)).run();
    Trainer(with(run)).run();
    Trainer(with(stop_run)).run(/*stop_at=*/3);
    EXPECT_EQ(Trainer(with(stop_run)).run().start_step, 3);
    EXPECT_NE(test::slurp(run / "config.toml").find(recorded), std::string::npos);
    auto m32 = metrics(fp32_run), m = metrics(run),
         ms = metrics(stop_run);
    ASSERT_EQ(m32.size(), 6u);
    ASSERT_EQ(m.size(), 6u);
    ASSERT_EQ(ms.size(), 6u);
    bool differs = false;
    for (size_t i = 0; i < 6; ++i) {
      const double a = m32[i]["train_loss"], b = m[i]["train_loss"];
      differs |= a != b;
      EXPECT_NEAR(b, a, 2e-2 * a) << "step " << i + 1;
      EXPECT_EQ(m[i]["train_loss"].dump(), ms[i]["train_loss"].dump()) << "step " << i + 1;
      EXPECT_EQ(m[i]["grad_norm"].dump(), ms[i]["grad_norm"].dump()) << "step " << i + 1;
    }
    EXPECT_TRUE(differs) << "the fp32 losses: the setting did not reach the model";
    EXPECT_EQ(test::slurp(run / "checkpoints/step_0000006/model.safetensors"),
              test::slurp(stop_run / "checkpoints/step_0000006/model.safetensors"));
  }
};

TEST_F(TrainerOnBackend, LossesAndCheckpointsMatchTheCpuAcrossAResume) {
  for (const std::string arch : {"gpt2", "llama"}) {
    SCOPED_TRACE(arch);
    Guarded::get().reset_violations();
    const auto cpu_run = tmp->path() / (arch + "_cpu"), dev_run = tmp->path() / (arch + "_dev");
    Trainer(config(arch, cpu_run)).run();
    Trainer(config(arch, dev_run), &guarded_backend()).run(/*stop_at=*/3);
    {
      Trainer resumed(config(arch, dev_run), &guarded_backend());
      EXPECT_EQ(resumed.run().start_step, 3);
    }
    EXPECT_EQ(Guarded::get().violations(), 0) << Guarded::get().first_violation();
    auto mc = metrics(cpu_run), md = metrics(dev_run);
    ASSERT_EQ(mc.size(), 6u);
    ASSERT_EQ(md.size(), 6u);
    for (size_t i = 0; i < 6; ++i) {
      EXPECT_EQ(mc[i]["train_loss"].dump(), md[i]["train_loss"].dump()) << "step " << i + 1;
      EXPECT_EQ(mc[i]["grad_norm"].dump(), md[i]["grad_norm"].dump()) << "step " << i + 1;
    }
    EXPECT_EQ(mc[5]["val_loss"].dump(), md[5]["val_loss"].dump());
    for (const char* f : {"model.safetensors", "optimizer.safetensors"})
      EXPECT_EQ(test::slurp(cpu_run / "checkpoints/step_0000006" / f), test::slurp(dev_run / "checkpoints/step_0000006" / f))
          << f;
    // `lmforge eval --device`: a run opened on the device backend evaluates as on the CPU.
    auto on_cpu = open_run(cpu_run), on_dev = open_run(cpu_run, &guarded_backend());
    ASSERT_TRUE(on_dev.model->params().on_device());
    const auto dir = tmp->path() / "data";
    data::DataLoader v1(dir, "val", 4, 32, 1, false), v2(dir, "val", 4, 32, 1, false);
    EXPECT_EQ(evaluate_model(*on_cpu.model, v1, 2, 4, 32), evaluate_model(*on_dev.model, v2, 2, 4, 32));
    EXPECT_EQ(Guarded::get().violations(), 0) << Guarded::get().first_violation();
  }
}

// [train] matmul_precision on the CPU (the emulation of ops/cpu/matmul_precision.cpp).
TEST_F(TrainerOnBackend, RoundedGemmsTrainCloseToFp32AndResumeExactly) {
  expect_close_to_fp32_and_resumes_exactly("gpt2", "train.matmul_precision=\"bf16\"", "matmul_precision = 'bf16'");
}

// [train] precision = "bf16" on the CPU (ops/cpu/bf16.cpp, the specification of bf16 storage), both
// families: the checkpoints hold the float master weights, from which every forward rounds its
// compute copy afresh, so a resumed run is the straight one.
TEST_F(TrainerOnBackend, Bf16StorageTrainsCloseToFp32AndResumesExactly) {
  for (const std::string arch : {"gpt2", "llama"})
    expect_close_to_fp32_and_resumes_exactly(arch, "train.precision=\"bf16\"", "precision = 'bf16'");
  // Not built for an injected device table (the CUDA one is cuda::backend_bf16): one clear line.
  RunConfig c = config("gpt2", tmp->path() / "st16_dev");
  apply_override(c, "train.precision=\"bf16\"");
  try {
    Trainer t(c, &guarded_backend());
    ADD_FAILURE() << "bf16 storage on the guarded device was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("[train] precision = bf16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lmf
