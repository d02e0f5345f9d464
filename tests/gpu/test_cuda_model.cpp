// Whole models on the CUDA backend (ops/cuda_backend.h) against the CPU backend: forward loss,
// every parameter's gradient and the sampling logits, then the trainer end to end. Skips without
// a device.
//
// Tolerance: the exact answer is the model run in double on the CPU. The GPU's fp32 error from it
// must be at most kWorse times the CPU's fp32 error (per tensor, in max norm), plus a floor of a
// few fp32 ulps of the tensor's largest value for tensors the CPU happens to get (almost) exact.
// So the GPU must be as accurate as the specification, not merely close to it.
#include <gtest/gtest.h>

#include "gpu/cuda_test_util.h"
#include "ops/cuda_backend.h"

#ifndef LMF_HAVE_CUDA

TEST(CudaModel, Skipped) { GTEST_SKIP() << "built without CUDA"; }

#else

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "dist/communicator.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "model/gpt2.h"
#include "model/llama.h"
#include "model/llama2c.h"
#include "model/model.h"
#include "model_test_util.h"
#include "sample_data.h"
#include "test_util.h"
#include "optim/adamw.h"
#include "train/data_parallel.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace lmf {
namespace {

constexpr double kWorse = 4.0;
constexpr double kFloorUlps = 16.0;
const double kEps = std::numeric_limits<float>::epsilon();

ModelConfig gpt2_cfg(bool tied) { return test::small_config("gpt2", tied, 64, 97, 48); }
ModelConfig llama_cfg(bool tied) { return test::small_config("llama", tied, 64, 97, 48); }

// max |a - exact| over [lo, hi), and max |exact|.
std::pair<double, double> err(const float* a, const double* exact, size_t lo, size_t hi) {
  double e = 0, m = 0;
  for (size_t i = lo; i < hi; ++i) {
    e = std::max(e, std::abs(double(a[i]) - exact[i]));
    m = std::max(m, std::abs(exact[i]));
  }
  return {e, m};
}

void expect_as_accurate(const char* what, const std::string& name, const float* gpu, const float* cpu,
                        const double* exact, size_t lo, size_t hi) {
  auto [eg, m] = err(gpu, exact, lo, hi);
  auto [ec, m2] = err(cpu, exact, lo, hi);
  (void)m2;
  EXPECT_LE(eg, kWorse * ec + kFloorUlps * kEps * m)
      << what << " " << name << ": GPU error " << eg << ", CPU error " << ec << ", largest value " << m;
}

template <template <class> class Family>
void check_family(const ModelConfig& cfg) {
  SKIP_WITHOUT_DEVICE();
  const int B = 3, T = 48, V = cfg.vocab_size;
  auto cpu = make_model(cfg);
  auto gpu = make_model(cfg, true, {}, &cuda::backend());
  Family<double> ref(cfg);
  test::randomise(*cpu, 11);
  auto& pc = cpu->params();
  const size_t n = pc.flat_size();
  std::copy(pc.params(), pc.params() + n, gpu->params().params());
  gpu->params().upload_params();
  for (size_t i = 0; i < n; ++i) ref.params().params()[i] = pc.params()[i];

  test::Batch b = test::random_batch(B, T, V, 12);
  const double gs = 1.0 / (B * T - 1);
  pc.zero_grad();
  gpu->params().zero_grad();
  ref.params().zero_grad();
  const double lc = cpu->forward(b.x.data(), b.y.data(), B, T, gs);
  const double lg = gpu->forward(b.x.data(), b.y.data(), B, T, gs);
  const double ld = ref.forward(b.x.data(), b.y.data(), B, T, gs);
  EXPECT_LE(std::abs(lg - ld), kWorse * std::abs(lc - ld) + kFloorUlps * kEps * std::abs(ld))
      << "loss: GPU " << lg << ", CPU " << lc << ", exact " << ld;
  cpu->backward();
  gpu->backward();
  ref.backward();
  gpu->params().download_grads();
  for (const auto& e : pc.entries())
    expect_as_accurate("gradient", e.name, gpu->params().grads(), pc.grads(), ref.params().grads(), e.offset,
                       e.offset + e.size);

  std::vector<float> logc(size_t(B) * V), logg(size_t(B) * V);
  std::vector<double> logd(size_t(B) * V);
  cpu->last_logits(logc.data());
  gpu->last_logits(logg.data());
  ref.last_logits(logd.data());
  expect_as_accurate("last logits", "", logg.data(), logc.data(), logd.data(), 0, logd.size());
}

TEST(CudaModel, Gpt2TiedForwardBackwardAsAccurateAsTheCpu) { check_family<Gpt2>(gpt2_cfg(true)); }
TEST(CudaModel, Gpt2UntiedForwardBackwardAsAccurateAsTheCpu) { check_family<Gpt2>(gpt2_cfg(false)); }
TEST(CudaModel, LlamaTiedForwardBackwardAsAccurateAsTheCpu) { check_family<Llama>(llama_cfg(true)); }
TEST(CudaModel, LlamaBiasesForwardBackwardAsAccurateAsTheCpu) { check_family<Llama>(llama_cfg(false)); }

// One memory plan: after a first training step (forward, backward, clipping, AdamW), further
// steps call cudaMalloc no more (ops' workspaces are kept, activations and state are allocated
// once), for both families, in fp32, bf16 GEMMs and bf16 storage.
TEST(CudaModel, StepsAfterTheFirstAllocateNoDeviceMemory) {
  SKIP_WITHOUT_DEVICE();
  for (const ModelConfig& cfg : {gpt2_cfg(true), llama_cfg(false)})
    for (const std::string mode : {"fp32", "bf16 GEMMs", "bf16 storage"}) {
      SCOPED_TRACE(cfg.arch + " " + mode);
      const ops::Backend<float>& be = cuda::backend(mode == "fp32" ? ops::MatmulPrecision::fp32
                                                                   : ops::MatmulPrecision::bf16);
      auto m = make_model(cfg, true, {}, &be, mode == "bf16 storage" ? &cuda::backend_bf16() : nullptr);
      test::randomise(*m, 3);
      m->params().upload_params();
      dist::LocalCommunicator comm;
      OptimConfig oc;
      DataParallel dp(comm, m->params(), oc, 0, nullptr, &be);
      size_t after_first = 0;
      for (int step = 0; step < 3; ++step) {
        if (step == 1) after_first = cuda::allocation_count();
        dp.zero_grad();
        test::Batch b = test::random_batch(4, 32, cfg.vocab_size, 20 + step);
        m->forward(b.x.data(), b.y.data(), 4, 32, 1.0 / 128);
        m->backward();
        dp.sync_and_clip(1.0);
        dp.update(1e-3);
      }
      be.synchronize();
      EXPECT_EQ(cuda::allocation_count(), after_first);
    }
}

// Graph counts of a model (model/step_graph.h): recordings made and launches run.
std::pair<int, long> graph_counts(const Model& m) {
  if (const auto* g = family<Gpt2<float>>(m)) return {g->step_graph().captures(), g->step_graph().launches()};
  if (const auto* g = family<Gpt2<bf16>>(m)) return {g->step_graph().captures(), g->step_graph().launches()};
  if (const auto* g = family<Llama<float>>(m)) return {g->step_graph().captures(), g->step_graph().launches()};
  const auto* g = family<Llama<bf16>>(m);
  return {g->step_graph().captures(), g->step_graph().launches()};
}

// [train] cuda_graphs: forward_backward as a CUDA graph gives the eager steps' numbers bit for
// bit, the loss and every gradient, step after step while AdamW changes the weights and the
// batches change (a launch reads its inputs and weights from the buffers of its capture), for both
// families in fp32 and in bf16 storage. The first call of a shape runs eagerly, the second records
// and launches, later ones launch; a new shape starts over; a launch allocates nothing.
TEST(CudaModel, GraphedStepsAreTheEagerStepsBitForBit) {
  SKIP_WITHOUT_DEVICE();
  for (const ModelConfig& cfg : {gpt2_cfg(false), llama_cfg(false)})
    for (const bool bf16 : {false, true}) {
      SCOPED_TRACE(cfg.arch + (bf16 ? " bf16 storage" : " fp32"));
      const ops::Backend<float>& be = cuda::backend(bf16 ? ops::MatmulPrecision::bf16 : ops::MatmulPrecision::fp32);
      auto make = [&] {
        auto m = make_model(cfg, true, {}, &be, bf16 ? &cuda::backend_bf16() : nullptr);
        test::randomise(*m, 5);
        m->params().upload_params();
        return m;
      };
      auto eager = make(), graphed = make();
      graphed->set_graphs(true);
      dist::LocalCommunicator comm;
      OptimConfig oc;
      DataParallel de(comm, eager->params(), oc, 0, nullptr, &be), dg(comm, graphed->params(), oc, 0, nullptr, &be);
      const size_t n = eager->params().flat_size();
      const int T = 32;
      size_t allocs = 0;
      for (int step = 0; step < 6; ++step) {
        const int B = step < 4 ? 4 : 2;  // from step 4 on, a new shape
        if (step == 2) allocs = cuda::allocation_count();
        test::Batch b = test::random_batch(B, T, cfg.vocab_size, 40 + step);
        b.y[size_t(step)] = -1;  // an ignored target, somewhere else each step
        de.zero_grad();
        dg.zero_grad();
        const double gs = 1.0 / (B * T);
        const double le = eager->forward_backward(b.x.data(), b.y.data(), B, T, gs);
        const double lg = graphed->forward_backward(b.x.data(), b.y.data(), B, T, gs);
        EXPECT_EQ(lg, le) << "step " << step;
        eager->params().download_grads();
        graphed->params().download_grads();
        const float *ge = eager->params().grads(), *gg = graphed->params().grads();
        EXPECT_EQ(std::vector<float>(gg, gg + n), std::vector<float>(ge, ge + n)) << "step " << step;
        if (step == 3) {
          EXPECT_EQ(cuda::allocation_count(), allocs) << "launches allocate nothing";
        }
        de.sync_and_clip(1.0);
        dg.sync_and_clip(1.0);
        de.update(1e-2);
        dg.update(1e-2);
      }
      // Shape 1: eager, record + launch, launch, launch; shape 2: eager, record + launch.
      EXPECT_EQ(graph_counts(*graphed), (std::pair<int, long>{2, 4}));
    }
}

// `[train] device = "cuda"` end to end on real text: the losses follow the CPU run's, the GPU run
// is deterministic (a stop and resume gives the same losses and checkpoint bytes), and the
// checkpoint it writes loads on the CPU.
class CudaTrainer : public ::testing::Test {
 protected:
  static inline test::TempDir* tmp = nullptr;
  static void SetUpTestSuite() {
    if (!cuda::available()) return;
    tmp = new test::TempDir();
    test::prepare_sample_text(tmp->path() / "data");
  }
  static void TearDownTestSuite() { delete tmp; }
  static RunConfig config(const std::string& arch, const std::string& device, const std::filesystem::path& run) {
    return default_config({"model.arch=\"" + arch + "\"", "model.n_layer=2", "model.n_embd=64", "model.n_head=4",
                           "model.block_size=64", "train.seq_len=64", "train.batch_size=8", "train.steps=10",
                           "train.eval_every=5", "train.eval_batches=2", "checkpoint.every=5",
                           "train.device=\"" + device + "\"", "log.progress=\"off\"",
                           "data.dir=\"" + (tmp->path() / "data").string() + "\"",
                           "log.run_dir=\"" + run.string() + "\""});
  }
  static std::vector<nlohmann::json> metrics(const std::filesystem::path& run) {
    return read_metrics(run / "metrics.jsonl");
  }
  // `arch` with `setting` (one override, or none) trained on the CPU and on the GPU: the GPU's
  // losses within rel of the CPU's at every step, a stop and resume on the GPU the straight run
  // bit for bit (losses, norms, checkpoint), and the GPU's checkpoint continues on the CPU.
  static void expect_gpu_follows_cpu_and_resumes(const std::string& arch, const std::string& setting, double rel) {
    SCOPED_TRACE(arch + " " + setting);
    auto with = [&](const std::string& device, const std::filesystem::path& run) {
      RunConfig c = config(arch, device, run);
      if (!setting.empty()) apply_override(c, setting);
      return c;
    };
    const auto dir = tmp->path() / (arch + std::to_string(std::hash<std::string>{}(setting)));
    const auto cpu = dir / "cpu", straight = dir / "gpu", split = dir / "gpu_split";
    Trainer(with("cpu", cpu)).run();
    Trainer(with("cuda", straight)).run();
    Trainer(with("cuda", split)).run(/*stop_at=*/5);
    EXPECT_EQ(Trainer(with("cuda", split)).run().start_step, 5);
    auto mc = metrics(cpu), ms = metrics(straight), mr = metrics(split);
    ASSERT_EQ(mc.size(), 10u);
    ASSERT_EQ(ms.size(), 10u);
    ASSERT_EQ(mr.size(), 10u);
    for (size_t i = 0; i < 10; ++i) {
      const double c = mc[i]["train_loss"].get<double>(), g = ms[i]["train_loss"].get<double>();
      EXPECT_NEAR(g, c, rel * c) << "step " << i + 1;
      EXPECT_EQ(ms[i]["train_loss"].dump(), mr[i]["train_loss"].dump()) << "step " << i + 1;
      EXPECT_EQ(ms[i]["grad_norm"].dump(), mr[i]["grad_norm"].dump()) << "step " << i + 1;
    }
    EXPECT_EQ(test::slurp(straight / "checkpoints/step_0000010/model.safetensors"),
              test::slurp(split / "checkpoints/step_0000010/model.safetensors"));
    auto more = with("cpu", straight);
    more.train.steps = 12;
    EXPECT_EQ(Trainer(more).run().end_step, 12);
  }
};

TEST_F(CudaTrainer, FollowsTheCpuAndResumesBitExact) {
  SKIP_WITHOUT_DEVICE();
  // fp32 on two machines, ten Adam steps: the runs drift apart by rounding only.
  for (const std::string arch : {"gpt2", "llama"}) expect_gpu_follows_cpu_and_resumes(arch, "", 1e-3);
}

// [train] cuda_graphs = true: the same losses, norms and checkpoint as the run without, bit for
// bit, in fp32 and bf16 storage, with gradient accumulation (the graph launched per micro-batch)
// and evaluations between steps (eager forwards on the same buffers).
TEST_F(CudaTrainer, CudaGraphsChangeNothingButTheLaunches) {
  SKIP_WITHOUT_DEVICE();
  for (const std::string storage : {"fp32", "bf16"}) {
    SCOPED_TRACE(storage);
    auto with = [&](const std::filesystem::path& run, bool graphs) {
      RunConfig c = config("gpt2", "cuda", run);
      apply_override(c, "train.precision=\"" + storage + "\"");
      apply_override(c, "train.grad_accum=2");
      c.train.cuda_graphs = graphs;
      return c;
    };
    const auto eager = tmp->path() / ("eager_" + storage), graphed = tmp->path() / ("graphed_" + storage);
    Trainer(with(eager, false)).run();
    Trainer(with(graphed, true)).run();
    auto me = metrics(eager), mg = metrics(graphed);
    ASSERT_EQ(me.size(), 10u);
    ASSERT_EQ(mg.size(), 10u);
    for (size_t i = 0; i < 10; ++i)
      for (const char* k : {"train_loss", "grad_norm"})
        EXPECT_EQ(mg[i][k].dump(), me[i][k].dump()) << k << " at step " << i + 1;
    EXPECT_EQ(mg[9]["val_loss"].dump(), me[9]["val_loss"].dump());
    EXPECT_EQ(test::slurp(graphed / "checkpoints/step_0000010/model.safetensors"),
              test::slurp(eager / "checkpoints/step_0000010/model.safetensors"));
  }
}

// [train] matmul_precision on the GPU (tensor-core GEMMs) follows the CPU's emulation of the
// same mode. The two differ by fp32 accumulation order if cuBLAS rounds the operands to nearest
// even as the CPU does (then as close as fp32's 1e-3 above); 5e-3 leaves room for a rounding
// rule that differs on ties or truncates, which moves a product by at most one operand ulp.
TEST_F(CudaTrainer, RoundedGemmsFollowTheCpuEmulation) {
  SKIP_WITHOUT_DEVICE();
  for (const std::string prec : {"tf32", "bf16"}) {
    SCOPED_TRACE(prec);
    const auto cpu = tmp->path() / ("gpt2_cpu_" + prec), gpu = tmp->path() / ("gpt2_gpu_" + prec);
    auto with = [&](RunConfig c) {
      apply_override(c, "train.matmul_precision=\"" + prec + "\"");
      return c;
    };
    Trainer(with(config("gpt2", "cpu", cpu))).run();
    Trainer(with(config("gpt2", "cuda", gpu))).run();
    auto mc = metrics(cpu), mg = metrics(gpu);
    ASSERT_EQ(mc.size(), 10u);
    ASSERT_EQ(mg.size(), 10u);
    for (size_t i = 0; i < 10; ++i) {
      const double c = mc[i]["train_loss"].get<double>(), g = mg[i]["train_loss"].get<double>();
      EXPECT_NEAR(g, c, 5e-3 * c) << "step " << i + 1;
    }
  }
}

// [train] precision = bf16 on the GPU (cuda::backend_bf16) follows its CPU specification
// (ops::cpu_backend<bf16>), both families, and is as deterministic across a resume; its
// checkpoint (fp32 master weights) continues on the CPU in bf16. GPU and CPU sums differ in their
// last fp32 bits, and a stored value can then round to the neighbouring bf16 value: one bf16 ulp
// (2^-8 relative) on a few values per step, averaged away in the loss's sums: the room the
// matmul-precision bound above leaves (under the emulation the runs are 2e-5 apart).
TEST_F(CudaTrainer, Bf16StorageFollowsTheCpuSpecificationAndResumesBitExact) {
  SKIP_WITHOUT_DEVICE();
  for (const std::string arch : {"gpt2", "llama"})
    expect_gpu_follows_cpu_and_resumes(arch, "train.precision=\"bf16\"", 5e-3);
}

// KV-cache decoding on the GPU (infer/decoder.cpp over the CUDA backend), token by token, after
// a prefill, and for a batch of three sequences: at every position the logits of a full forward
// over the prefix on the GPU (test_model.cpp's check of the CPU decoder, with its tolerance), and
// the CPU decoder's greedy tokens.
TEST(CudaDecoder, MatchesTheFullForwardAndTheCpu) {
  SKIP_WITHOUT_DEVICE();
  for (const ModelConfig& c : {gpt2_cfg(true), llama_cfg(false)}) {
    SCOPED_TRACE(c.arch);
    auto gpu = make_model(c, true, {}, &cuda::backend());
    auto cpu = make_model(c);
    test::randomise(*gpu, 12);
    test::randomise(*cpu, 12);
    gpu->params().upload_params();
    test::Batch b = test::random_batch(1, 20, c.vocab_size, 13);
    auto dec = test::expect_decoder_follows_forward(*gpu, b.x, c.vocab_size);
    EXPECT_EQ(dec->position(), 20);
    test::expect_prefill_follows_forward(*gpu, b.x, c.vocab_size);
    std::vector<std::vector<int32_t>> seqs;
    for (int s = 0; s < 3; ++s) seqs.push_back(test::random_batch(1, 12, c.vocab_size, 20 + s).x);
    test::expect_batch_decoder_follows_forward(*gpu, seqs, c.vocab_size);
    SampleOptions o;
    o.temperature = 0;
    o.max_new_tokens = 30;
    o.max_context = 16;  // the cache is rebuilt on the way
    EXPECT_EQ(generate(*gpu, {5, 6, 7}, o), generate(*cpu, {5, 6, 7}, o));
  }
}

// Decoding over bf16 storage on the GPU (cuda::backend_bf16) follows the CPU specification's
// decoder (ops::cpu_backend<bf16>) on the same weights, position by position: their sums differ in
// the last fp32 bits, so a stored value may round to the neighbouring bf16 value (test_bf16's
// DecodingFollowsTheFullForward derives the 48 u bound, u = 2^-8, relative to the largest logit).
TEST(CudaDecoder, Bf16FollowsTheCpuSpecification) {
  SKIP_WITHOUT_DEVICE();
  for (const ModelConfig& c : {gpt2_cfg(true), llama_cfg(false)}) {
    SCOPED_TRACE(c.arch);
    auto gpu = make_model(c, true, {}, &cuda::backend(ops::MatmulPrecision::bf16), &cuda::backend_bf16());
    auto cpu = make_model(c, true, {}, nullptr, &ops::cpu_backend<bf16>());
    test::randomise(*gpu, 12);
    test::randomise(*cpu, 12);
    gpu->params().upload_params();
    auto dg = make_decoder(*gpu), dc = make_decoder(*cpu);
    const test::Batch b = test::random_batch(1, 20, c.vocab_size, 13);
    double worst = 0;
    for (int t = 0; t < 20; ++t) {
      const float* g = dg->feed(b.x[t]);
      const float* p = dc->feed(b.x[t]);
      double d = 0, mx = 0;
      for (int v = 0; v < c.vocab_size; ++v) {
        d = std::max(d, std::abs(double(g[v]) - p[v]));
        mx = std::max(mx, std::abs(double(p[v])));
      }
      worst = std::max(worst, d / mx);
    }
    EXPECT_LE(worst, 48 * 0x1p-8);
  }
}

// llama2.c's stories260K decoded greedily on the GPU prints llama2.c's published text
// (../shared/data/tinyllamas/README.md), as the CPU decoder does (test_convert.cpp).
TEST(CudaDecoder, Stories260KGivesThePublishedText) {
  SKIP_WITHOUT_DEVICE();
  const std::filesystem::path dir = std::filesystem::path(LMF_SHARED_DIR) / "data/tinyllamas";
  if (!std::filesystem::exists(dir / "stories260K.bin")) GTEST_SKIP() << dir << " not here";
  auto m = make_model(read_llama2c_config(dir / "stories260K.bin"), true, {}, &cuda::backend());
  load_llama2c(*family<Llama<float>>(*m), dir / "stories260K.bin");
  m->params().upload_params();
  auto tok = data::make_tokenizer("llama2c:" + (dir / "tok512.bin").string());
  std::vector<int32_t> ids = tok->encode("Once upon a time");
  ids.insert(ids.begin(), tok->bos_id());
  SampleOptions o;
  o.temperature = 0;
  o.max_new_tokens = 57;
  o.stop_token = tok->eot_id();
  const std::vector<int32_t> out = generate(*m, ids, o);
  const std::string text = "Once upon a time" + tok->decode(out);
  const std::string published =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
      "One day, she saw a big, red ball. She wanted to play with it, but it was too high.";
  EXPECT_EQ(text.substr(0, published.size()), published) << text;
}

}  // namespace
}  // namespace lmf

#endif  // LMF_HAVE_CUDA
