// `lmforge convert` end to end, and the Llama family through the whole CLI:
//   - llama2.c's pretrained stories260K converted to a run samples exactly the published greedy
//     continuation, and fine-tuning it from `[train] init_from` lowers its loss on held-out
//     stories of its domain;
//   - a Hugging Face checkpoint converts to a run that samples, and a run exports to Hugging
//     Face (f32: every bit back on re-import; bf16, sharded: the index and config are right);
//   - a Llama trained from a config resumes bit-exactly;
//   - bad input: one line, exit code 2, nothing written.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "integration/cli_util.h"

namespace lmf::test {
namespace {

namespace fs = std::filesystem;
const fs::path kSrc = LMF_SOURCE_DIR;
const fs::path kTiny = fs::path(LMF_SHARED_DIR) / "data/tinyllamas";
const std::string kModel = (kTiny / "stories260K.bin").string();
const std::string kTok = (kTiny / "tok512.bin").string();

std::vector<nlohmann::json> metrics(const fs::path& run) {
  std::vector<nlohmann::json> v;
  std::istringstream in(slurp(run / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line));
  return v;
}

double eval_loss(const std::string& out) {
  auto at = out.find("val loss ");
  EXPECT_NE(at, std::string::npos) << out;
  return at == std::string::npos ? 0 : std::stod(out.substr(at + 9));
}

class Stories260K : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel)) GTEST_SKIP() << "no " << kModel;
  }
  TempDir t;
};

TEST_F(Stories260K, ConvertedRunSamplesThePublishedGreedyText) {
  auto run = t / "s260";
  auto c = run_lmforge("convert --from llama2c --model " + kModel + " --tokenizer " + kTok + " --output " +
                           run.string(),
                       t.path());
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_TRUE(fs::exists(run / "checkpoints/step_0000000/model.safetensors"));
  EXPECT_TRUE(fs::exists(run / "tokenizer.bin"));  // the run keeps its tokenizer
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'Once upon a time' --temperature 0 -n 57", t.path());
  ASSERT_EQ(s.code, 0) << s.err;
  // ../shared/data/tinyllamas/README.md: llama2.c's published greedy output.
  const std::string published =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
      "One day, she saw a big, red ball. She wanted to play with it, but it was too high.";
  EXPECT_EQ(s.out.substr(0, published.size()), published) << s.out;
}

TEST_F(Stories260K, FineTuningLowersHeldOutLossInItsDomain) {
  auto run = t / "s260", ft = t / "ft", data = t / "stories";
  ASSERT_EQ(run_lmforge("convert --from llama2c --model " + kModel + " --tokenizer " + kTok + " --output " +
                            run.string(),
                        t.path())
                .code,
            0);
  // Children's stories in TinyStories' style (written for this test), 25% held out.
  auto p = run_lmforge("prepare --input " + (kSrc / "tests/data/tinystories_style/stories.jsonl").string() +
                           " --text-field text --tokenizer llama2c:" + kTok + " --val-fraction 0.25 --seed 1 --output " +
                           data.string(),
                       t.path());
  ASSERT_EQ(p.code, 0) << p.err;
  auto e0 = run_lmforge("eval --run " + run.string() + " --data " + data.string() +
                            " --batch-size 4 --seq-len 128 --batches 4",
                        t.path());
  ASSERT_EQ(e0.code, 0) << e0.err;
  const double before = eval_loss(e0.out);
  EXPECT_LT(before, 2.0) << "the pretrained model should already know this domain";
  auto r = run_lmforge("train --set train.init_from=" + run.string() + " --set data.dir=" + data.string() +
                           " --set data.tokenizer=llama2c:" + kTok +
                           " --set train.batch_size=4 --set train.seq_len=128 --set train.steps=10"
                           " --set train.eval_every=10 --set train.eval_batches=4 --set optim.lr=1e-4"
                           " --set optim.warmup_steps=2 --set train.threads=2 --set log.progress=plain"
                           " --set log.peak_tflops=1 --set log.run_dir=" + ft.string(),
                       t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  auto m = metrics(ft);
  ASSERT_EQ(m.size(), 10u);
  const double after = m.back()["val_loss"];
  EXPECT_LT(after, before - 0.01) << "held-out loss before " << before << ", after " << after;
  // The fine-tuned run carries the pretrained model's shape in its resolved config.
  std::string cfg = slurp(ft / "config.toml");
  EXPECT_NE(cfg.find("arch = 'llama'"), std::string::npos);
  EXPECT_NE(cfg.find("rope_interleaved = true"), std::string::npos);
  auto e1 = run_lmforge("eval --run " + ft.string() + " --batch-size 4 --seq-len 128 --batches 4", t.path());
  ASSERT_EQ(e1.code, 0) << e1.err;
  EXPECT_NEAR(eval_loss(e1.out), after, 1e-4);
}

TEST_F(Stories260K, BadInput) {
  // A truncated checkpoint, a tokenizer of another size, an existing run: one line, nothing written.
  std::string cut = slurp(kModel).substr(0, 4000);
  write_file(t / "cut.bin", cut);
  expect_user_error(run_lmforge("convert --from llama2c --model " + (t / "cut.bin").string() + " --tokenizer " + kTok +
                                    " --output " + (t / "a").string(),
                                t.path()),
                    "cut.bin");
  EXPECT_FALSE(fs::exists(t / "a/checkpoints"));
  expect_user_error(run_lmforge("convert --from llama2c --model " + kModel + " --output " + (t / "b").string(),
                                t.path()),
                    "--tokenizer");
  expect_user_error(run_lmforge("convert --from bogus --output " + (t / "c").string(), t.path()), "bogus");
  auto run = t / "s260";
  ASSERT_EQ(run_lmforge("convert --from llama2c --model " + kModel + " --tokenizer " + kTok + " --output " +
                            run.string(),
                        t.path())
                .code,
            0);
  std::string before = slurp(run / "checkpoints/step_0000000/model.safetensors");
  expect_user_error(run_lmforge("convert --from llama2c --model " + kModel + " --tokenizer " + kTok + " --output " +
                                    run.string(),
                                t.path()),
                    "already holds a run");
  EXPECT_EQ(slurp(run / "checkpoints/step_0000000/model.safetensors"), before);
}

// Hugging Face in and out through the CLI.
TEST(ConvertHf, ImportSampleExportReimport) {
  TempDir t;
  const fs::path hf = kSrc / "tests/fixtures/hf_tiny/gpt2";
  auto run = t / "run";
  auto c = run_lmforge("convert --from hf " + hf.string() + " --output " + run.string(), t.path());
  ASSERT_EQ(c.code, 0) << c.err;
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'The Congress' -n 8 --seed 3", t.path());
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_GT(s.out.size(), std::string("The Congress").size());
  // f32 export, then import again: the checkpoint's tensors come back bit for bit.
  auto out = t / "hf32", back = t / "back";
  auto x = run_lmforge("convert --run " + run.string() + " --to hf " + out.string(), t.path());
  ASSERT_EQ(x.code, 0) << x.err;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_EQ(slurp(out / "tokenizer.json"), slurp(hf / "tokenizer.json"));
  ASSERT_EQ(run_lmforge("convert --from hf " + out.string() + " --output " + back.string(), t.path()).code, 0);
  auto a = SafetensorsFile::open(run / "checkpoints/step_0000000/model.safetensors");
  auto b = SafetensorsFile::open(back / "checkpoints/step_0000000/model.safetensors");
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& ta : a.tensors()) {
    const auto* tb = b.find(ta.name);
    ASSERT_NE(tb, nullptr) << ta.name;
    ASSERT_EQ(ta.nbytes, tb->nbytes);
    EXPECT_EQ(std::memcmp(a.data(ta), b.data(*tb), ta.nbytes), 0) << ta.name;
  }
  // bf16, sharded at 40 KB: an index naming every tensor, and config.json saying bfloat16.
  auto sh = t / "hf_bf16";
  auto y = run_lmforge("convert --run " + run.string() + " --to hf " + sh.string() + " --dtype bf16 --max-shard-mb 0.04",
                       t.path());
  ASSERT_EQ(y.code, 0) << y.err;
  auto idx = nlohmann::json::parse(slurp(sh / "model.safetensors.index.json"));
  EXPECT_EQ(idx["weight_map"].size(), a.tensors().size());
  EXPECT_TRUE(fs::exists(sh / "model-00001-of-00002.safetensors"));
  auto cfg = nlohmann::json::parse(slurp(sh / "config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_EQ(cfg["model_type"], "gpt2");
  EXPECT_EQ(cfg["eos_token_id"], 299);
  auto gen = nlohmann::json::parse(slurp(sh / "generation_config.json"));
  EXPECT_EQ(gen["eos_token_id"], 299);
  ASSERT_EQ(run_lmforge("convert --from hf " + sh.string() + " --output " + (t / "back16").string(), t.path()).code, 0);
  // Bad input: an existing export target is left alone; an unsupported config is named.
  write_file(t / "busy/keep.txt", "mine");
  expect_user_error(run_lmforge("convert --run " + run.string() + " --to hf " + (t / "busy").string(), t.path()),
                    "not empty");
  EXPECT_EQ(slurp(t / "busy/keep.txt"), "mine");
  fs::copy(hf, t / "bert");
  auto j = nlohmann::json::parse(slurp(t / "bert/config.json"));
  j["model_type"] = "bert";
  write_file(t / "bert/config.json", j.dump());
  expect_user_error(run_lmforge("convert --from hf " + (t / "bert").string() + " --output " + (t / "r2").string(),
                                t.path()),
                    "model_type \"bert\"");
  expect_user_error(run_lmforge("convert --run " + run.string() + " --to hf " + (t / "z").string() + " --dtype f8",
                                t.path()),
                    "--dtype");
}

// A Llama from a config: train, stop, resume, and the losses equal an uninterrupted run.
TEST(LlamaCli, ResumeIsBitExact) {
  TempDir t;
  auto data = t / "data";
  ASSERT_EQ(run_lmforge("prepare --input " + (kSrc / "tests/data/sotu_sample").string() + " --output " +
                            data.string() + " --val-fraction 0.2 --seed 3",
                        t.path())
                .code,
            0);
  auto args = [&](const fs::path& run, const std::string& extra) {
    return "train --set model.arch=llama --set model.n_layer=2 --set model.n_embd=32 --set model.n_head=4"
           " --set model.n_kv_head=2 --set model.block_size=32 --set train.seq_len=32 --set train.batch_size=4"
           " --set train.threads=2 --set log.progress=plain --set log.peak_tflops=1 --set train.eval_batches=2"
           " --set train.steps=8 --set train.eval_every=0 --set checkpoint.every=4 --set data.dir=" +
           data.string() + " --set log.run_dir=" + run.string() + " " + extra;
  };
  ASSERT_EQ(run_lmforge(args(t / "straight", ""), t.path()).code, 0);
  ASSERT_EQ(run_lmforge(args(t / "split", "--stop-at 4"), t.path()).code, 0);
  auto r = run_lmforge(args(t / "split", ""), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  auto a = metrics(t / "straight"), b = metrics(t / "split");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["train_loss"], b[i]["train_loss"]) << "step " << i + 1;
  EXPECT_EQ(slurp(t / "straight/checkpoints/step_0000008/model.safetensors"),
            slurp(t / "split/checkpoints/step_0000008/model.safetensors"));
  auto s = run_lmforge("sample --run " + (t / "split").string() + " --prompt 'We ' -n 10", t.path());
  EXPECT_EQ(s.code, 0) << s.err;
}

}  // namespace
}  // namespace lmf::test
