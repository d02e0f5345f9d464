// Data parallelism over MPI (CTest label `mpi`): these tests start `mpirun -np 2` themselves,
// on CPU, and skip when the build has no MPI or no mpirun is installed.
//   - the collectives and split(), run by this same binary re-launched under mpirun;
//   - 2 ranks with batch B follow 1 rank with batch 2B step by step (fp32 summation order
//     apart), for ZeRO stages 0, 1, 2 and 3, and the stages give bit-identical weights;
//   - runs stopped on 2 ranks resume on 1 and on 4, and one stopped on 1 resumes on 2, continuing
//     the uninterrupted run's losses;
//   - tensor parallel 2, alone and times data parallel 2, follows one rank, and its runs resume
//     on other layouts;
//   - a rank that hangs ends the job within [dist] timeout_s, with one line naming the rank,
//     and the last checkpoint stays intact.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dist/communicator.h"
#include "integration/cli_util.h"

namespace lmf::test {
namespace {

namespace fs = std::filesystem;

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

#ifdef LMF_HAVE_MPI
constexpr bool kBuiltWithMpi = true;
#else
constexpr bool kBuiltWithMpi = false;
#endif

// mpirun as root in containers (CI) needs these; --oversubscribe: 2 ranks on any core count.
const std::string kMpirun =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
    "mpirun -np ";

class Mpi : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kBuiltWithMpi) GTEST_SKIP() << "built without MPI";
    if (!have_mpirun()) GTEST_SKIP() << "no mpirun";
  }
};

// ---- collectives: this binary re-launched under mpirun ------------------------------------------

// DISABLED_: not run on its own, only under mpirun by Mpi.Collectives.
TEST(MpiWorker, DISABLED_Collectives) {
  auto comm = dist::make_communicator(30);
  const int r = comm->rank(), w = comm->world();
  ASSERT_EQ(w, 2);
  EXPECT_EQ(comm->kind(), "mpi");
  // all_reduce: sum of (rank + 1) * i.
  std::vector<float> a(1000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float((r + 1) * i);
  comm->all_reduce_sum(a.data(), a.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], float(3 * i)) << i;
  double d = r + 0.5;
  comm->all_reduce_sum(&d, 1);
  EXPECT_EQ(d, 2.0);
  int flag = r == 1 ? 7 : 0;
  comm->all_reduce_max(&flag, 1);
  EXPECT_EQ(flag, 7);
  // reduce_scatter and all_gather over uneven shards (the last one shorter).
  dist::Sharding sh(1000, w);
  EXPECT_EQ(sh.counts[0], 512);
  EXPECT_EQ(sh.counts[1], 488);
  std::vector<float> in(1000), out(size_t(sh.counts[r]));
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i + 1000 * r);
  comm->reduce_scatter_sum(in.data(), out.data(), sh.counts);
  for (int i = 0; i < sh.counts[r]; ++i) ASSERT_EQ(out[i], float(2 * (sh.offsets[r] + i) + 1000)) << i;
  std::vector<float> g(1000, -1.0f);
  for (int i = 0; i < sh.counts[r]; ++i) g[sh.offsets[r] + i] = float(10 * r + 1);
  comm->all_gather(g.data(), sh.counts);
  for (int q = 0; q < w; ++q)
    for (int i = 0; i < sh.counts[q]; ++i) ASSERT_EQ(g[sh.offsets[q] + i], float(10 * q + 1));
  char msg[6] = "xxxxx";
  if (r == 1) std::memcpy(msg, "hello", 6);
  comm->broadcast(msg, 6, 1);
  EXPECT_STREQ(msg, "hello");
  comm->barrier();
  // Bytes counted: payloads handed to each kind of collective.
  EXPECT_EQ(comm->stats().all_reduce, 1000u * 4 + 8 + 4);
  EXPECT_EQ(comm->stats().reduce_scatter, 1000u * 4);
  EXPECT_EQ(comm->stats().all_gather, uint64_t(sh.counts[r]) * 4);
  EXPECT_EQ(comm->stats().broadcast, 6u);
  // split: by parity, two 1-rank communicators; with one color and key -rank, both ranks in
  // reverse order. Declared after `comm`, so destroyed (freed) before it finalizes MPI.
  const dist::CommStats before = comm->stats();
  auto solo = comm->split(r % 2, r);
  EXPECT_EQ(solo->world(), 1);
  EXPECT_EQ(solo->rank(), 0);
  EXPECT_EQ(solo->kind(), "mpi");
  float v[2] = {float(r) + 0.5f, -3};
  solo->all_reduce_sum(v, 2);
  EXPECT_EQ(v[0], float(r) + 0.5f);
  EXPECT_EQ(v[1], -3.0f);
  auto rev = comm->split(0, -r);
  ASSERT_EQ(rev->world(), 2);
  const int nr = rev->rank();
  EXPECT_EQ(nr, 1 - r);
  float s[2] = {float(r + 1), float(10 * (r + 1))};
  rev->all_reduce_sum(s, 2);
  EXPECT_EQ(s[0], 3.0f);
  EXPECT_EQ(s[1], 30.0f);
  // Blocks in the new rank order: new rank q is world rank 1 - q.
  const std::vector<int> counts = {2, 1};
  std::vector<float> gs(3, -1.0f);
  for (int i = 0; i < counts[nr]; ++i) gs[nr * 2 + i] = float(r);
  rev->all_gather(gs.data(), counts);
  EXPECT_EQ(gs, (std::vector<float>{1, 1, 0}));
  // Each communicator counts its own bytes; the split itself is counted nowhere.
  EXPECT_EQ(solo->stats().all_reduce, 8u);
  EXPECT_EQ(solo->stats().calls, 1u);
  EXPECT_EQ(rev->stats().all_reduce, 8u);
  EXPECT_EQ(rev->stats().all_gather, uint64_t(counts[nr]) * 4);
  EXPECT_EQ(rev->stats().calls, 2u);
  EXPECT_EQ(comm->stats().calls, before.calls);
  EXPECT_EQ(comm->stats().all_reduce, before.all_reduce);
}

TEST_F(Mpi, Collectives) {
  TempDir t;
  std::string self = fs::read_symlink("/proc/self/exe").string();
  auto r = std::system((kMpirun + "2 " + self +
                        " --gtest_color=no --gtest_also_run_disabled_tests --gtest_filter=MpiWorker.DISABLED_Collectives >" + (t / "out.txt").string() + " 2>&1")
                           .c_str());
  std::string out = slurp(t / "out.txt");
  EXPECT_EQ(WEXITSTATUS(r), 0) << out;
  // Both ranks ran the worker test, and neither skipped nor failed it.
  size_t passed = 0;
  for (size_t at = out.find("[  PASSED  ] 1 test."); at != std::string::npos; at = out.find("[  PASSED  ] 1 test.", at + 1))
    ++passed;
  EXPECT_EQ(passed, 2u) << out;
  EXPECT_EQ(out.find("SKIPPED"), std::string::npos) << out;
}

// ---- training -----------------------------------------------------------------------------------

// Two ranks sum two half-batch gradients where one rank sums one whole batch: the same
// numbers up to fp32 summation order. Each step's weights then differ by a few roundings, so
// the losses may drift apart by about u * loss per step (u = 2^-24); allow 8x that, growing
// linearly with the step. Under bf16 storage the values each rank stores are rounded to u = 2^-8.
double drift_tolerance(double loss, int step, double u = 0x1p-24) { return 8 * u * loss * step; }

class MpiTrain : public Mpi {
 protected:
  static inline TempDir* tmp = nullptr;
  static inline fs::path data;
  static void SetUpTestSuite() {
    tmp = new TempDir();
    data = tmp->path() / "data";
    auto r = run_lmforge("prepare --input " + std::string(LMF_SOURCE_DIR) + "/tests/data/sotu_sample --output " +
                             data.string() + " --val-fraction 0.2 --seed 3",
                         tmp->path());
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() { delete tmp; }

  // A small Llama (GQA) on bytes; B sequences per rank.
  static std::string train_args(const fs::path& run, int B, const std::string& extra) {
    return "train " + model_sets(run, B, extra);
  }
  static std::string model_sets(const fs::path& run, int B, const std::string& extra) {
    return "--set model.arch=llama --set model.n_layer=2 --set model.n_embd=32 --set model.n_head=4"
           " --set model.n_kv_head=2 --set model.block_size=32 --set train.seq_len=32 --set train.batch_size=" +
           std::to_string(B) +
           " --set train.threads=1 --set log.progress=plain --set log.peak_tflops=1 --set train.eval_batches=2"
           " --set train.steps=8 --set train.eval_every=4 --set checkpoint.every=4 --set optim.warmup_steps=2"
           " --set data.dir=" + data.string() + " --set log.run_dir=" + run.string() + " " + extra;
  }
  static CmdResult run_ranks(int np, const std::string& args, const fs::path& scratch) {
    auto out = scratch / "stdout.txt", err = scratch / "stderr.txt";
    std::string cmd = kMpirun + std::to_string(np) + " " + LMF_BINARY + " " + args + " >" + out.string() + " 2>" +
                      err.string() + " </dev/null";
    int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  }
  // Every step of `run` (B sequences per rank) recorded the bytes `lmforge plan FLAGS` predicts.
  static void expect_comm_bytes_as_planned(const fs::path& run, const std::string& flags, int B, size_t steps,
                                           const TempDir& t) {
    auto plan = run_lmforge("plan " + flags + " --set model.vocab_size=257 " + model_sets(run, B, ""), t.path());
    ASSERT_EQ(plan.code, 0) << plan.err;
    auto at = plan.out.find("  total");
    ASSERT_NE(at, std::string::npos) << plan.out;
    const double predicted = std::stod(plan.out.substr(at + 7));
    auto bytes = losses(run, "comm_bytes");
    ASSERT_EQ(bytes.size(), steps);
    for (size_t i = 0; i < bytes.size(); ++i) EXPECT_EQ(bytes[i], predicted) << "step " << i + 1;
  }
  // `run` recorded the training losses of `ref` step by step, and its validation losses (every
  // 4 steps), within that drift.
  static void expect_losses_follow(const fs::path& run, const fs::path& ref_run, double u = 0x1p-24) {
    for (const char* key : {"train_loss", "val_loss"}) {
      SCOPED_TRACE(key);
      auto ref = losses(ref_run, key), got = losses(run, key);
      ASSERT_FALSE(ref.empty());
      ASSERT_EQ(got.size(), ref.size());
      const int every = std::string(key) == "val_loss" ? 4 : 1;
      for (size_t i = 0; i < ref.size(); ++i)
        EXPECT_NEAR(got[i], ref[i], drift_tolerance(ref[i], every * int(i + 1), u)) << "record " << i + 1;
    }
  }
  static std::vector<double> losses(const fs::path& run, const char* key = "train_loss") {
    std::vector<double> v;
    std::istringstream in(slurp(run / "metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.contains(key)) v.push_back(j[key]);
    }
    return v;
  }
};

// The pid of rank `rank` of the job training into `run` (0 if not found). Both ranks carry the
// run directory on their command line; OMPI_COMM_WORLD_RANK in their environment tells them apart.
std::string fmt_step(long step) {
  std::string s = std::to_string(step);
  return std::string(7 - std::min<size_t>(7, s.size()), '0') + s;
}

int rank_pid(const fs::path& run, int rank) {
  std::string cmd = "for p in $(pgrep -f -- 'log.run_dir=" + run.string() +
                    "'); do grep -qz '^OMPI_COMM_WORLD_RANK=" + std::to_string(rank) +
                    "$' /proc/$p/environ 2>/dev/null && echo $p; done";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return 0;
  int pid = 0;
  if (fscanf(f, "%d", &pid) != 1) pid = 0;
  pclose(f);
  return pid;
}

// Starts `mpirun -np 2 lmforge ARGS` in the background; returns mpirun's pid.
int start_job(const std::string& args, const TempDir& t) {
  std::string cmd = kMpirun + "2 " + LMF_BINARY + " " + args + " >" + (t / "out.txt").string() + " 2>" +
                    (t / "err.txt").string() + " </dev/null & echo $! > " + (t / "pid").string();
  if (std::system(cmd.c_str()) != 0) return 0;
  return std::stoi(slurp(t / "pid"));
}

// Waits up to `limit` for `pred`.
template <class Pred>
bool wait_for(Pred&& pred, std::chrono::seconds limit) {
  auto t0 = std::chrono::steady_clock::now();
  while (!pred()) {
    if (std::chrono::steady_clock::now() - t0 > limit) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}



TEST_F(MpiTrain, TwoRanksEqualOneRankWithDoubleBatchForEveryZeroStage) {
  TempDir t;
  auto one = t / "one";
  ASSERT_EQ(run_lmforge(train_args(one, 8, ""), t.path()).code, 0);
  auto ref = losses(one);
  ASSERT_EQ(ref.size(), 8u);
  std::string weights0;
  // Every stage, and stages 0 and 1 also with the all-reduce overlapped with the backward.
  const std::vector<std::pair<int, bool>> variants = {{0, false}, {0, true}, {1, false},
                                                      {1, true},  {2, false}, {3, false}};
  for (auto [zero, overlap] : variants) {
    std::string name = "z";
    name += std::to_string(zero);
    if (overlap) name += "_overlap";
    SCOPED_TRACE(name);
    auto run = t / ("two_" + name);
    std::string extra = "--set dist.zero=";
    extra += std::to_string(zero);
    extra += overlap ? " --set dist.overlap=true" : " --set dist.overlap=false";
    auto r = run_ranks(2, train_args(run, 4, extra), t.path());
    ASSERT_EQ(r.code, 0) << r.err << r.out;
    EXPECT_NE((r.out + r.err).find("data parallel: 2 ranks (mpi), ZeRO stage " + std::to_string(zero)),
              std::string::npos)
        << r.out << r.err;
    expect_losses_follow(run, one);
    // Every step moved exactly the bytes `lmforge plan` predicts for rank 0.
    expect_comm_bytes_as_planned(run, "-n 2 --zero " + std::to_string(zero), 4, ref.size(), t);
    // Overlap splits the gradient all-reduce into one per block (2 here) plus the rest.
    auto calls = losses(run, "comm_calls");
    ASSERT_FALSE(calls.empty());
    // Loss and stop flag, plus the gradients: one all-reduce, or with overlap one per block and
    // one each for the parameters before the blocks (embeddings) and after (final norm, head).
    if (zero == 0) {
      EXPECT_EQ(calls[0], overlap ? 2 + 2 + 2 : 2 + 1);
    }
        // The stages differ only in who computes which elementwise update: identical weights.
    std::string w = slurp(run / "checkpoints/step_0000008/model.safetensors");
    if (weights0.empty())
      weights0 = w;
    else
      EXPECT_TRUE(w == weights0) << "weights differ from zero 0";
    // The checkpoint holds the whole optimizer state whatever the sharding.
    EXPECT_EQ(slurp(run / "checkpoints/step_0000008/optimizer.safetensors"),
              slurp(t / "two_z0/checkpoints/step_0000008/optimizer.safetensors"));
  }
}

// [train] precision = bf16 over two ranks, at every ZeRO stage: the ranks reduce the float
// gradients of the master weights as a float run does, and at stage 3 each block's weights are
// rounded to bf16 once gathered (model/compute_copy.h), so every stage ends with the same weights,
// bit for bit, and the run follows one rank with the double batch within bf16's drift. So does a
// tensor-parallel run.
TEST_F(MpiTrain, Bf16StorageOverTwoRanksAtEveryZeroStage) {
  TempDir t;
  const std::string bf16 = " --set train.precision=bf16";
  auto one = t / "one";
  ASSERT_EQ(run_lmforge(train_args(one, 8, bf16), t.path()).code, 0);
  std::string weights0;
  for (int zero : {0, 1, 2, 3}) {
    SCOPED_TRACE(zero);
    auto run = t / ("two_z" + std::to_string(zero));
    auto r = run_ranks(2, train_args(run, 4, bf16 + " --set dist.zero=" + std::to_string(zero)), t.path());
    ASSERT_EQ(r.code, 0) << r.err << r.out;
    EXPECT_NE((r.out + r.err).find("bf16 storage"), std::string::npos) << r.out << r.err;
    expect_losses_follow(run, one, 0x1p-8);
    // The collectives move the float gradients and master weights, as a float run's do.
    expect_comm_bytes_as_planned(run, "-n 2 --zero " + std::to_string(zero), 4, 8, t);
    std::string w = slurp(run / "checkpoints/step_0000008/model.safetensors");
    if (weights0.empty())
      weights0 = w;
    else
      EXPECT_TRUE(w == weights0) << "weights differ from zero 0";
  }
  // Tensor parallelism over the two ranks: the bf16 activations are all-reduced in float and
  // rounded once (Communicator::all_reduce_sum(bf16*)); the run follows one rank within the drift.
  auto tp = t / "tp2";
  auto r = run_ranks(2, train_args(tp, 8, bf16 + " --set dist.tensor_parallel=2"), t.path());
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE((r.out + r.err).find("tensor parallel: 2 ranks per group"), std::string::npos) << r.out << r.err;
  expect_losses_follow(tp, one, 0x1p-8);
  auto plan = run_lmforge("plan -n 2 --set model.vocab_size=257 " + model_sets(t / "plan", 4, bf16), t.path());
  EXPECT_NE(plan.out.find("bf16 storage: plus the weights the layers read"), std::string::npos) << plan.out;
}

TEST_F(MpiTrain, ResumeAcrossWorldSizes) {
  TempDir t;
  auto straight = t / "straight";
  ASSERT_EQ(run_lmforge(train_args(straight, 8, ""), t.path()).code, 0);
  auto ref = losses(straight);
  // 2 ranks (ZeRO 2) to step 4, then 1 rank to 8.
  auto a = t / "two_then_one";
  ASSERT_EQ(run_ranks(2, train_args(a, 4, "--set dist.zero=2 --stop-at 4"), t.path()).code, 0);
  ASSERT_EQ(run_lmforge(train_args(a, 8, ""), t.path()).code, 0);
  // 1 rank to step 4, then 2 ranks (ZeRO 1) to 8.
  auto b = t / "one_then_two";
  ASSERT_EQ(run_lmforge(train_args(b, 8, "--stop-at 4"), t.path()).code, 0);
  auto r = run_ranks(2, train_args(b, 4, "--set dist.zero=1"), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  // 2 ranks (ZeRO 2) to step 4, then 4 ranks (ZeRO 3, batch 2 each) to 8.
  auto c = t / "two_then_four";
  ASSERT_EQ(run_ranks(2, train_args(c, 4, "--set dist.zero=2 --stop-at 4"), t.path()).code, 0);
  auto r4 = run_ranks(4, train_args(c, 2, "--set dist.zero=3"), t.path());
  ASSERT_EQ(r4.code, 0) << r4.err;
  for (const auto& run : {a, b, c}) {
    SCOPED_TRACE(run.filename().string());
    expect_losses_follow(run, straight);
  }
}

// Tensor parallel 2 (each block's heads and MLP columns split over 2 ranks) follows one rank
// with the same batch, and 2 x 2 ranks (data x tensor parallel, ZeRO 2) follow one rank with
// twice the batch: the same numbers up to fp32 summation order.
TEST_F(MpiTrain, TensorParallelAndDataTimesTensorParallelFollowOneRank) {
  TempDir t;
  for (auto [world, zero] : {std::pair{2, 0}, std::pair{4, 2}, std::pair{4, 3}}) {
    const int dp = world / 2;
    SCOPED_TRACE(world);
    auto one = t / ("one_" + std::to_string(world) + "_" + std::to_string(zero));
    ASSERT_EQ(run_lmforge(train_args(one, 4 * dp, ""), t.path()).code, 0);
    auto ref = losses(one);
    ASSERT_EQ(ref.size(), 8u);
    auto run = t / ("tp_" + std::to_string(world) + "_" + std::to_string(zero));
    auto r = run_ranks(world, train_args(run, 4, "--set dist.tensor_parallel=2 --set dist.zero=" +
                                                     std::to_string(zero)),
                       t.path());
    ASSERT_EQ(r.code, 0) << r.err << r.out;
    EXPECT_NE((r.out + r.err).find(fmt::format("data parallel: {} ranks (mpi), ZeRO stage {}", dp, zero)),
              std::string::npos)
        << r.out;
    EXPECT_NE((r.out + r.err).find("tensor parallel: 2 ranks per group"), std::string::npos) << r.out;
    expect_losses_follow(run, one);
    expect_comm_bytes_as_planned(run, fmt::format("-n {} --tensor-parallel 2 --zero {}", world, zero), 4,
                                 ref.size(), t);
  }
}

// A checkpoint holds the single-process layout whatever the split: runs move between tensor
// parallel, data parallel and one rank, continuing the uninterrupted run's losses.
TEST_F(MpiTrain, TensorParallelRunsResumeOnOtherLayouts) {
  TempDir t;
  auto straight = t / "straight";
  ASSERT_EQ(run_lmforge(train_args(straight, 8, ""), t.path()).code, 0);
  auto ref = losses(straight);
  // 2 x 2 ranks (ZeRO 1) to step 4, then 1 rank to 8.
  auto a = t / "dp2tp2_then_one";
  auto r = run_ranks(4, train_args(a, 4, "--set dist.tensor_parallel=2 --set dist.zero=1 --stop-at 4"), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(run_lmforge(train_args(a, 8, ""), t.path()).code, 0);
  // 1 rank to step 4, then 2 x 2 ranks (ZeRO 2) to 8.
  auto b = t / "one_then_dp2tp2";
  ASSERT_EQ(run_lmforge(train_args(b, 8, "--stop-at 4"), t.path()).code, 0);
  r = run_ranks(4, train_args(b, 4, "--set dist.tensor_parallel=2 --set dist.zero=2"), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  for (const auto& run : {a, b}) {
    SCOPED_TRACE(run.filename().string());
    expect_losses_follow(run, straight);
  }
  // What cannot be split is refused before anything is written.
  auto bad = t / "bad";
  expect_user_error(run_lmforge(train_args(bad, 4, "--set dist.tensor_parallel=2"), t.path()),
                    "[dist] tensor_parallel = 2 must divide the number of ranks (1");
  expect_user_error(run_lmforge(train_args(bad, 4, "--set dist.tensor_parallel=3"), t.path()),
                    "[dist] tensor_parallel must divide [model] n_head");
  expect_user_error(run_lmforge(train_args(bad, 4, "--set dist.tensor_parallel=4"), t.path()),
                    "must divide the kv heads");
  EXPECT_FALSE(fs::exists(bad));
}

TEST_F(MpiTrain, HungRankEndsTheJobWithinTheTimeout) {
  TempDir t;
  auto run = t / "run";
  // Long enough to still be running when one rank is stopped; a checkpoint every 2 steps.
  std::string args = train_args(run, 4, "--set train.steps=100000 --set checkpoint.every=2 --set dist.timeout_s=8");
  const int mpirun_pid = start_job(args, t);
  ASSERT_GT(mpirun_pid, 0);
  // Wait for a checkpoint, then freeze rank 1 (SIGSTOP: it neither dies nor answers).
  auto has_checkpoint = [&] {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(run / "checkpoints", ec))
      if (e.path().filename().string().starts_with("step_")) return true;
    return false;
  };
  auto t0 = std::chrono::steady_clock::now();
  while (!has_checkpoint() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(has_checkpoint());
  const int pid1 = rank_pid(run, 1);
  ASSERT_GT(pid1, 0);
  auto latest = [&] {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(run / "checkpoints"))
      if (e.path().filename().string().starts_with("step_")) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v.back();
  };
  const auto stopped = std::chrono::steady_clock::now();
  ::kill(pid1, SIGSTOP);
  // mpirun must end within the timeout (8 s; generous for a loaded CI machine) plus its teardown.
  bool ended = false;
  while (std::chrono::steady_clock::now() - stopped < std::chrono::seconds(60)) {
    if (::kill(mpirun_pid, 0) != 0) {
      ended = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid1, SIGCONT);
  ::kill(pid1, SIGKILL);
  ASSERT_TRUE(ended) << "the job did not end";
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  EXPECT_GE(secs, 7.5) << "ended before the timeout: not by it";
  EXPECT_LT(secs, 40.0);
  std::string e = slurp(t / "err.txt");
  EXPECT_NE(e.find("lmforge: error: rank 0 of 2: "), std::string::npos) << e;
  EXPECT_NE(e.find("a rank died or hangs"), std::string::npos) << e;
  // The last complete checkpoint loads: sample from it.
  std::string ck = latest();
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'We ' -n 5", t.path());
  EXPECT_EQ(s.code, 0) << ck << ": " << s.err;
}

// A rank that dies (SIGKILL: no chance to say anything) ends the job: the launcher names it,
// the other rank is stopped, and the last checkpoint is intact.
TEST_F(MpiTrain, KilledRankEndsTheJob) {
  TempDir t;
  auto run = t / "run";
  const int mpirun_pid = start_job(
      train_args(run, 4, "--set train.steps=100000 --set checkpoint.every=50 --set dist.timeout_s=5"), t);
  ASSERT_GT(mpirun_pid, 0);
  ASSERT_TRUE(wait_for([&] { return fs::exists(run / "checkpoints/step_0000050"); }, std::chrono::seconds(60)));
  const int pid1 = rank_pid(run, 1);
  ASSERT_GT(pid1, 0);
  const auto killed = std::chrono::steady_clock::now();
  ::kill(pid1, SIGKILL);
  ASSERT_TRUE(wait_for([&] { return ::kill(mpirun_pid, 0) != 0; }, std::chrono::seconds(40)));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count(), 30.0);
  std::string err = slurp(t / "err.txt");
  EXPECT_NE(err.find("rank 1"), std::string::npos) << err;
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'We ' -n 5", t.path());
  EXPECT_EQ(s.code, 0) << s.err;
}

// Slurm signals every task, but not at the same instant: SIGTERM to one rank stops both after
// the same step, with one checkpoint, and the job exits 0.
TEST_F(MpiTrain, SigtermToOneRankStopsEveryRankAtTheSameStep) {
  TempDir t;
  auto run = t / "run";
  const int mpirun_pid =
      start_job(train_args(run, 4, "--set train.steps=100000 --set checkpoint.every=0 --set train.eval_every=0"), t);
  ASSERT_GT(mpirun_pid, 0);
  ASSERT_TRUE(wait_for([&] { return fs::exists(run / "metrics.jsonl") && fs::file_size(run / "metrics.jsonl") > 0; },
                       std::chrono::seconds(60)));
  const int pid1 = rank_pid(run, 1);
  ASSERT_GT(pid1, 0);
  ::kill(pid1, SIGTERM);
  int status = 0;
  ASSERT_TRUE(wait_for([&] { return ::waitpid(mpirun_pid, &status, WNOHANG) == mpirun_pid || ::kill(mpirun_pid, 0) != 0; },
                       std::chrono::seconds(60)));
  std::string out = slurp(t / "out.txt"), err = slurp(t / "err.txt");
  EXPECT_NE((out + err).find("another rank was signalled; checkpoint written"), std::string::npos) << out << err;
  auto steps = losses(run, "step");
  ASSERT_FALSE(steps.empty());
  const long last = long(steps.back());
  EXPECT_LT(last, 100000);
  EXPECT_TRUE(fs::exists(run / ("checkpoints/step_" + fmt_step(last)))) << last;
  EXPECT_NE(out.find("trained steps 0.." + std::to_string(last) + " of 100000"), std::string::npos) << out;
}

}  // namespace
}  // namespace lmf::test
