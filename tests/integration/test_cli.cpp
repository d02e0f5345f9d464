// End to end through the `lmforge` binary: prepare real text, train, resume exactly, evaluate,
// sample, and reject bad input with one line and exit code 2 without touching checkpoints.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <map>
#include <thread>
#include <nlohmann/json.hpp>

#include "integration/cli_util.h"
#include "ops/cuda_backend.h"

namespace lmf::test {
namespace {

namespace fs = std::filesystem;

class Cli : public ::testing::Test {
 protected:
  static inline TempDir* tmp = nullptr;
  static inline fs::path data;

  static void SetUpTestSuite() {
    tmp = new TempDir();
    data = tmp->path() / "data";
    auto r = run_lmforge(fmt("prepare --input {}/tests/data/sotu_sample --output {} --val-fraction 0.2 --seed 3",
                             LMF_SOURCE_DIR, data.string()),
                         tmp->path());
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() { delete tmp; }

  template <class... A>
  static std::string fmt(const char* f, A&&... a) {
    std::string s = f;
    (replace_first(s, to_str(a)), ...);
    return s;
  }
  static std::string to_str(const std::string& s) { return s; }
  static std::string to_str(const char* s) { return s; }
  static void replace_first(std::string& s, const std::string& v) { s.replace(s.find("{}"), 2, v); }

  // A small model that trains in seconds; `extra` adds --set flags.
  std::string train_args(const fs::path& run, const std::string& extra = "") {
    return "train --set model.n_layer=2 --set model.n_embd=64 --set model.n_head=4 --set model.block_size=64 "
           "--set train.seq_len=64 --set train.batch_size=8 --set train.threads=2 --set log.progress=plain "
           "--set optim.warmup_steps=5 --set train.eval_batches=4 "
           "--set data.dir=" + data.string() + " --set log.run_dir=" + run.string() + " " + extra;
  }

  // The val loss `eval` printed, or -1 when it printed none.
  static double val_loss(const std::string& eval_out) {
    auto v = eval_out.find("val loss ");
    return v == std::string::npos ? -1.0 : std::stod(eval_out.substr(v + 9));
  }

  static std::vector<nlohmann::json> metrics(const fs::path& run) {
    std::vector<nlohmann::json> v;
    std::istringstream in(slurp(run / "metrics.jsonl"));
    for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line));
    return v;
  }

  // Cross-entropy (nats/byte) of the validation text under the training text's byte
  // frequencies, add-one smoothed: the unigram baseline a model must beat.
  static double unigram_baseline() {
    std::vector<double> counts(257, 1.0);
    auto man = nlohmann::json::parse(slurp(data / "manifest.json"));
    (void)man;
    // Read the shards' tokens straight from the files: 64-byte header, uint16 tokens.
    auto read_tokens = [](const fs::path& p) {
      std::string s = slurp(p);
      std::vector<uint16_t> t((s.size() - 64) / 2);
      std::memcpy(t.data(), s.data() + 64, t.size() * 2);
      return t;
    };
    auto train = read_tokens(data / "train_000000.bin");
    auto val = read_tokens(data / "val_000000.bin");
    for (auto t : train) counts[t] += 1;
    double total = 0;
    for (double c : counts) total += c;
    double h = 0;
    for (auto t : val) h -= std::log(counts[t] / total);
    return h / val.size();
  }
};

TEST_F(Cli, HelpListsEveryCommand) {
  auto r = run_lmforge("--help", tmp->path());
  EXPECT_EQ(r.code, 0);
  const char* commands[] = {"train", "sample", "eval", "prepare", "bench", "plot", "config", "init",
                            "corpus", "tokenizer", "convert", "plan"};
  for (const char* c : commands) EXPECT_NE(r.out.find(c), std::string::npos) << c;
  for (const char* c : commands) {
    auto h = run_lmforge(std::string(c) + " --help", tmp->path());
    EXPECT_EQ(h.code, 0) << c;
    EXPECT_NE(h.out.find("--"), std::string::npos) << c;
  }
}

TEST_F(Cli, TrainingBeatsTheUnigramBaselineOnRealText) {
  TempDir t;
  auto run = t.path() / "run";
  auto r = run_lmforge(train_args(run, "--set train.steps=500 --set train.eval_every=250 --set optim.lr=3e-3"), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  auto m = metrics(run);
  ASSERT_EQ(m.size(), 500u);
  double first_val = m[249]["val_loss"], last_val = m.back()["val_loss"];
  double base = unigram_baseline();
  EXPECT_GT(base, 2.5);  // English bytes: about 3 nats
  EXPECT_LT(last_val, first_val);
  EXPECT_LT(last_val, base - 0.5) << "val loss " << last_val << " vs unigram " << base;
  EXPECT_TRUE(fs::exists(run / "loss.svg"));
  EXPECT_TRUE(fs::exists(run / "config.toml"));
  // eval and sample work on the run.
  auto e = run_lmforge("eval --run " + run.string() + " --batches 4", t.path());
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.out.find("perplexity"), std::string::npos);
  // eval reports the same unigram baseline that this test computes from the shard bytes.
  auto at = e.out.find("unigram baseline");
  ASSERT_NE(at, std::string::npos) << e.out;
  EXPECT_NEAR(std::stod(e.out.substr(e.out.find(": ", at) + 2)), base, 1e-3);
  // eval with bf16 GEMM products (the CPU's emulation; its effect is shown in test_backend):
  // the mode is taken and the loss stays close to fp32's.
  auto e16 = run_lmforge("eval --run " + run.string() + " --batches 4 --matmul-precision bf16", t.path());
  ASSERT_EQ(e16.code, 0) << e16.err;
  EXPECT_NE(e16.out.find("bf16 GEMMs"), std::string::npos) << e16.out;
  EXPECT_NEAR(val_loss(e16.out), val_loss(e.out), 0.02 * val_loss(e.out));
  expect_user_error(run_lmforge("eval --run " + run.string() + " --matmul-precision fp16", t.path()),
                    "--matmul-precision");
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'The Congress ' --max-new-tokens 40 --seed 2", t.path());
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_GE(s.out.size(), std::string("The Congress ").size() + 20);
  auto s2 = run_lmforge("sample --run " + run.string() + " --prompt 'The Congress ' --max-new-tokens 40 --seed 2", t.path());
  EXPECT_EQ(s.out, s2.out);  // same seed, same text
}

// A model vocabulary padded past the tokenizer's (320 against the byte tokenizer's 257, as GPT-2's
// 50304 against 50257): an untrained model spreads its choices over all 320 ids, and `sample`
// still only picks the tokenizer's ids (else the tokenizer refuses the id), over a prompt longer
// than the context (so the cache is prefilled from the prompt's tail and rebuilt on the way);
// `--stats` reports both phases.
TEST_F(Cli, SampleNeverPicksAPaddedVocabularyId) {
  TempDir t;
  auto run = t.path() / "run";
  ASSERT_EQ(run_lmforge(train_args(run, "--set train.steps=1 --set train.eval_every=0 --set model.vocab_size=320"),
                        t.path()).code,
            0);
  const std::string prompt(100, 'a');  // 100 tokens, the context 64
  for (int seed : {4, 5, 6}) {  // a padded id is about one choice in five: some in 40, for each seed
    auto s = run_lmforge("sample --run " + run.string() + " --prompt " + prompt +
                             " --temperature 2 --top-p 1 --max-new-tokens 40 --stats --seed " + std::to_string(seed),
                         t.path());
    ASSERT_EQ(s.code, 0) << s.err;
    // The prompt's last half context (32 tokens) prefilled; up to 40 new ones (end-of-text stops).
    EXPECT_NE(s.err.find("prompt: 32 tokens in "), std::string::npos) << s.err;
    EXPECT_NE(s.err.find("generated: "), std::string::npos) << s.err;
  }
}

// `sample --prompt-file`: the file's text (newlines and all) is the same prompt as on the command
// line; neither, both, a missing file and an empty one are each one line.
TEST_F(Cli, SampleTakesItsPromptFromAFile) {
  TempDir t;
  auto run = t.path() / "run";
  ASSERT_EQ(run_lmforge(train_args(run, "--set train.steps=1 --set train.eval_every=0"), t.path()).code, 0);
  const fs::path file = t.path() / "prompt.txt";
  std::ofstream(file) << "The Union\nis ";
  auto from_file = run_lmforge("sample --run " + run.string() + " --prompt-file " + file.string() +
                                   " --temperature 0 -n 8", t.path());
  ASSERT_EQ(from_file.code, 0) << from_file.err;
  auto inline_prompt = run_lmforge(
      "sample --run " + run.string() + " --prompt \"$(printf 'The Union\\nis ')\" --temperature 0 -n 8", t.path());
  ASSERT_EQ(inline_prompt.code, 0) << inline_prompt.err;
  EXPECT_EQ(from_file.out, inline_prompt.out);
  EXPECT_EQ(from_file.out.rfind("The Union\nis ", 0), 0u) << from_file.out;
  expect_user_error(run_lmforge("sample --run " + run.string(), t.path()), "--prompt-file");
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt x --prompt-file " + file.string(), t.path()),
                    "--prompt excludes --prompt-file");
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt-file " + (t.path() / "nope").string(),
                                t.path()),
                    "nope");
  std::ofstream(file, std::ios::trunc).close();
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt-file " + file.string(), t.path()),
                    "the prompt file is empty");
}

// `sample --num-samples 3`: three texts, each headed by its number, the first the single sample's
// text for the seed, and not all three the same; a count outside [1, 1024] is one line. Also
// --min-p and --repetition-penalty, taken and checked.
TEST_F(Cli, SampleGeneratesSeveralSamplesTogether) {
  TempDir t;
  auto run = t.path() / "run";
  ASSERT_EQ(run_lmforge(train_args(run, "--set train.steps=1 --set train.eval_every=0"), t.path()).code, 0);
  const std::string args = "sample --run " + run.string() + " --prompt 'The ' -n 30 --temperature 1.5 --seed 5";
  auto one = run_lmforge(args, t.path());
  ASSERT_EQ(one.code, 0) << one.err;
  auto three = run_lmforge(args + " --num-samples 3", t.path());
  ASSERT_EQ(three.code, 0) << three.err;
  std::vector<std::string> texts;
  for (int i = 1; i <= 3; ++i) {
    const std::string head = "--- sample " + std::to_string(i) + " of 3 ---\n";
    const size_t at = three.out.find(head);
    ASSERT_NE(at, std::string::npos) << three.out;
    const size_t from = at + head.size();
    const size_t to = i < 3 ? three.out.find("--- sample " + std::to_string(i + 1) + " of 3 ---\n") : three.out.size();
    texts.push_back(three.out.substr(from, to - from));
  }
  EXPECT_EQ(texts[0], one.out);
  EXPECT_FALSE(texts[0] == texts[1] && texts[1] == texts[2]);
  for (const auto& text : texts) EXPECT_EQ(text.rfind("The ", 0), 0u) << text;
  expect_user_error(run_lmforge(args + " --num-samples 0", t.path()), "--num-samples");
  // min-p and the repetition penalty are taken, and checked.
  auto tuned = run_lmforge(args + " --min-p 0.1 --repetition-penalty 1.3", t.path());
  ASSERT_EQ(tuned.code, 0) << tuned.err;
  EXPECT_EQ(tuned.out.rfind("The ", 0), 0u) << tuned.out;
  expect_user_error(run_lmforge(args + " --min-p 1.5", t.path()), "--min-p");
  expect_user_error(run_lmforge(args + " --repetition-penalty 0", t.path()), "--repetition-penalty");
}

// [train] precision = bf16 (activations and the weights the layers read in bf16; on the CPU the
// slow specification of the GPU's numbers): it trains on real text past the unigram baseline,
// says so in its log, and its run (fp32 master weights) evaluates and samples like any other.
TEST_F(Cli, Bf16StorageTrainsOnRealTextAndItsRunSamples) {
  TempDir t;
  auto run = t.path() / "run";
  auto r = run_lmforge(
      train_args(run, "--set train.steps=300 --set train.eval_every=150 --set optim.lr=3e-3 --set train.precision=bf16"),
      t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("bf16 storage"), std::string::npos) << r.out << r.err;
  auto m = metrics(run);
  ASSERT_EQ(m.size(), 300u);
  const double first_val = m[149]["val_loss"], last_val = m.back()["val_loss"], base = unigram_baseline();
  EXPECT_LT(last_val, first_val);
  EXPECT_LT(last_val, base - 0.3) << "val loss " << last_val << " vs unigram " << base;
  // eval takes the run's storage by default; --precision fp32 evaluates the same weights in fp32,
  // close to it and not equal.
  auto e = run_lmforge("eval --run " + run.string() + " --batches 4", t.path());
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NE(e.out.find("bf16 storage"), std::string::npos) << e.out;
  auto e32 = run_lmforge("eval --run " + run.string() + " --batches 4 --precision fp32", t.path());
  ASSERT_EQ(e32.code, 0) << e32.err;
  EXPECT_NE(e32.out.find("fp32 GEMMs"), std::string::npos) << e32.out;
  EXPECT_NEAR(val_loss(e.out), val_loss(e32.out), 0.02 * val_loss(e32.out));
  EXPECT_NE(val_loss(e.out), val_loss(e32.out));
  expect_user_error(run_lmforge("eval --run " + run.string() + " --precision fp8", t.path()), "--precision");
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'The Congress ' --max-new-tokens 20 --seed 2", t.path());
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_GE(s.out.size(), std::string("The Congress ").size() + 10);
  // Decoding in bf16 too (the KV cache, activations and weights).
  auto s16 = run_lmforge(
      "sample --run " + run.string() + " --prompt 'The Congress ' --max-new-tokens 20 --seed 2 --precision bf16", t.path());
  ASSERT_EQ(s16.code, 0) << s16.err;
  EXPECT_GE(s16.out.size(), std::string("The Congress ").size() + 10);
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt x --precision fp8", t.path()),
                    "--precision");
  expect_user_error(run_lmforge(train_args(t.path() / "bad", "--set train.precision=fp16"), t.path()),
                    "[train] precision");
}

TEST_F(Cli, ResumeIsBitExact) {
  TempDir t;
  auto straight = t.path() / "straight", split = t.path() / "split";
  const std::string common = "--set train.steps=20 --set train.eval_every=0 --set checkpoint.every=5";
  ASSERT_EQ(run_lmforge(train_args(straight, common), t.path()).code, 0);
  auto a = run_lmforge(train_args(split, common + " --stop-at 10"), t.path());
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(metrics(split).size(), 10u);
  auto b = run_lmforge(train_args(split, common), t.path());
  ASSERT_EQ(b.code, 0) << b.err;
  auto ms = metrics(straight), mr = metrics(split);
  ASSERT_EQ(ms.size(), 20u);
  ASSERT_EQ(mr.size(), 20u);
  for (size_t i = 0; i < 20; ++i) {
    EXPECT_EQ(ms[i]["train_loss"].dump(), mr[i]["train_loss"].dump()) << "step " << i + 1;
    EXPECT_EQ(ms[i]["grad_norm"].dump(), mr[i]["grad_norm"].dump()) << "step " << i + 1;
  }
  EXPECT_EQ(slurp(straight / "checkpoints/step_0000020/model.safetensors"),
            slurp(split / "checkpoints/step_0000020/model.safetensors"));
  // keep_last = 2 (default): only the two newest checkpoints remain.
  EXPECT_FALSE(fs::exists(split / "checkpoints/step_0000010"));
  EXPECT_TRUE(fs::exists(split / "checkpoints/step_0000015"));
}


// A BPE vocabulary trained by lmforge, used end to end: encode/decode, prepare, train, and
// sample from the run after the original tokenizer file is gone (the run keeps a copy).
TEST_F(Cli, TrainedBpeTokenizerEndToEnd) {
  TempDir t;
  auto tok = t.path() / "tok" / "tokenizer.json";
  fs::create_directories(tok.parent_path());
  auto r = run_lmforge(fmt("tokenizer train --input {}/tests/data/sotu_sample --vocab-size 600 --output {}",
                           LMF_SOURCE_DIR, tok.string()),
                       t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string spec = "bpe:" + tok.string();
  auto text = std::string(LMF_SOURCE_DIR) + "/tests/data/sotu_sample/1962_john_f_kennedy_d.txt";
  auto e = run_lmforge("tokenizer encode -t " + spec + " -i " + text + " -o " + (t.path() / "ids.txt").string(), t.path());
  ASSERT_EQ(e.code, 0) << e.err;
  // A bare path works too: the format is detected.
  auto e2 = run_lmforge("tokenizer encode -t " + tok.string() + " -i " + text, t.path());
  ASSERT_EQ(e2.code, 0) << e2.err;
  EXPECT_EQ(e2.out, slurp(t.path() / "ids.txt"));
  auto d = run_lmforge("tokenizer decode -t " + spec + " -i " + (t.path() / "ids.txt").string(), t.path());
  ASSERT_EQ(d.code, 0) << d.err;
  EXPECT_EQ(d.out, slurp(text));
  const std::string id_text = slurp(t.path() / "ids.txt");
  int ids = 1 + int(std::count(id_text.begin(), id_text.end(), ' '));
  EXPECT_LT(ids, int(slurp(text).size()) / 2);  // merges compress: fewer than one id per 2 bytes

  auto p = run_lmforge(fmt("prepare --input {}/tests/data/sotu_sample --output {} --tokenizer {} --val-fraction 0.2 "
                           "--license public-domain",
                           LMF_SOURCE_DIR, (t.path() / "d").string(), spec),
                       t.path());
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_NE(slurp(t.path() / "d" / "manifest.json").find("\"license\": \"public-domain\""), std::string::npos);
  // Shards made with the BPE vocabulary refuse a config that names another tokenizer.
  expect_user_error(run_lmforge(train_args(t.path() / "wrong", "--set data.dir=" + (t.path() / "d").string() +
                                                                   " --set data.tokenizer=byte"),
                                t.path()),
                    "not the tokenizer the shards");
  auto run = t.path() / "run";
  auto tr = run_lmforge(train_args(run, "--set train.steps=3 --set train.eval_every=0 --set data.dir=" +
                                            (t.path() / "d").string() + " --set data.tokenizer=" + spec),
                        t.path());
  ASSERT_EQ(tr.code, 0) << tr.err;
  EXPECT_NE(slurp(run / "checkpoints/step_0000003/config.toml").find("vocab_size = 600"), std::string::npos);
  std::ofstream(t.path() / "ids_bad.txt") << "1 2 99999";
  expect_user_error(run_lmforge("tokenizer decode -t " + spec + " -i " + (t.path() / "ids_bad.txt").string(), t.path()),
                    "99999");
  fs::remove(tok);
  auto s = run_lmforge("sample --run " + run.string() + " --prompt 'The Union ' --max-new-tokens 10", t.path());
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_EQ(s.out.rfind("The Union ", 0), 0u);
  // A tokenizer file that is not one: one line naming it, exit 2.
  std::ofstream(t.path() / "bad.json") << "{\"model\": {\"type\": \"Unigram\"}}";
  expect_user_error(run_lmforge("tokenizer encode -t bpe:" + (t.path() / "bad.json").string() + " -i " + text, t.path()),
                    "bad.json");
  expect_user_error(run_lmforge("tokenizer encode -t nonsense -i " + text, t.path()), "nonsense");
}

// llama2.c's tokenizer through the CLI: the published golden ids for "Once upon a time".
TEST_F(Cli, Llama2cTokenizerGoldenIds) {
  std::string tok = std::string(LMF_SHARED_DIR) + "/data/tinyllamas/tok512.bin";
  if (!fs::exists(tok)) GTEST_SKIP() << tok << " is missing";
  TempDir t;
  std::ofstream(t.path() / "p.txt") << "Once upon a time";
  auto r = run_lmforge("tokenizer encode -t " + tok + " -i " + (t.path() / "p.txt").string(), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "403 407 261 378\n");
}

TEST_F(Cli, MixtureWithCooldownResumesBitExact) {
  TempDir t;
  fs::copy(data, t.path() / "other", fs::copy_options::recursive);
  const std::string mix = "--set data.mixture=" + data.string() + "=3," + (t.path() / "other").string() +
                          "=1 --set data.cooldown_mixture=" + (t.path() / "other").string() +
                          "=1 --set data.cooldown_fraction=0.5 --set train.steps=12 --set train.eval_every=0";
  ASSERT_EQ(run_lmforge(train_args(t.path() / "straight", mix), t.path()).code, 0);
  ASSERT_EQ(run_lmforge(train_args(t.path() / "split", mix + " --stop-at 7"), t.path()).code, 0);
  auto r = run_lmforge(train_args(t.path() / "split", mix), t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  auto a = metrics(t.path() / "straight"), b = metrics(t.path() / "split");
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(a[i]["train_loss"].dump(), b[i]["train_loss"].dump()) << i + 1;
  // A checkpoint made with a mixture does not resume without one.
  auto bad = run_lmforge(train_args(t.path() / "split", "--set train.steps=14"), t.path());
  expect_user_error(bad, "mixture");
}

// Bad input: exit code 2, exactly one line on stderr that names the culprit.
TEST_F(Cli, BadConfigInput) {
  TempDir t;
  expect_user_error(run_lmforge("train --config " + (t.path() / "missing.toml").string(), t.path()), "missing.toml");
  std::ofstream(t.path() / "bad.toml") << "[model\nn_layer = 2\n";
  expect_user_error(run_lmforge("train --config " + (t.path() / "bad.toml").string(), t.path()), "bad.toml:1");
  std::ofstream(t.path() / "unknown.toml") << "[train]\nstepz = 2\n";
  expect_user_error(run_lmforge("train --config " + (t.path() / "unknown.toml").string(), t.path()), "stepz");
  std::ofstream(t.path() / "type.toml") << "[train]\nsteps = \"ten\"\n";
  expect_user_error(run_lmforge("train --config " + (t.path() / "type.toml").string(), t.path()), "[train] steps");
  expect_user_error(run_lmforge("train --set train.steps=x", t.path()), "train.steps");
  expect_user_error(run_lmforge("sample --run " + (t.path() / "nope").string() + " --prompt x", t.path()), "nope");
  expect_user_error(run_lmforge("bench --B 0", t.path()), "--B");
  expect_user_error(run_lmforge("train --set data.dir=" + (t.path() / "nodata").string(), t.path()), "nodata");
}

// bench --profile: the JSON line gains each op's calls and time per step, and stderr a table.
TEST_F(Cli, BenchProfileCountsTheOps) {
  // fp32, and bf16 storage: its layers' bf16 table and the optimizer's float one both counted.
  for (const std::string precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    TempDir t;
    auto r = run_lmforge(
        "bench --L 2 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 2 --warmup 1 --profile --precision " + precision,
        t.path());
    ASSERT_EQ(r.code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_TRUE(j.contains("ops")) << r.out;
    EXPECT_EQ(j["precision"], precision);
    double share = 0;
    std::map<std::string, double> calls;
    for (const auto& op : j["ops"]) {
      calls[op["op"].get<std::string>()] = op["calls_per_step"].get<double>();
      share += op["share"].get<double>();
    }
    EXPECT_EQ(calls["matmul_forward"], 6.0);       // qkv, proj, fc proj per layer
    EXPECT_EQ(calls["matmul_gelu_forward"], 2.0);  // fc with its GELU
    EXPECT_EQ(calls["adamw_chunks"], 1.0);    // the multi-tensor AdamW: one op per step
    EXPECT_EQ(calls["classifier_ce_forward"], 1.0);
    // bf16: the weights before and after the blocks at the start, then each block's: 2 + 2 per step.
    EXPECT_EQ(calls["to_compute"], precision == "bf16" ? 4.0 : 0.0);
    EXPECT_NEAR(share, 1.0, 1e-2);
    EXPECT_NE(r.err.find("matmul_backward"), std::string::npos) << r.err;
  }
}

// bench --arch llama: --KV 0 (the default) means as many key/value heads as --H, whatever --H is;
// a --KV that does not divide --H is one line.
TEST_F(Cli, BenchLlamaKvHeadsDefaultToH) {
  TempDir t;
  const std::string shape = "bench --arch llama --L 1 --C 32 --vocab 50 --B 1 --T 8 --steps 1 --warmup 0";
  for (const int H : {2, 4}) {
    auto r = run_lmforge(shape + " --H " + std::to_string(H), t.path());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["KV"], H) << r.out;
  }
  auto r = run_lmforge(shape + " --H 4 --KV 1", t.path());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["KV"], 1) << r.out;
  expect_user_error(run_lmforge(shape + " --H 4 --KV 3", t.path()), "--KV 3 must divide --H 4");
}

// Without a GPU (or a CUDA build), asking for one is one clear line, before anything is written.
TEST_F(Cli, CudaWithoutADeviceIsOneLine) {
  if (cuda::available()) GTEST_SKIP() << "a CUDA device is present (tests/gpu covers the GPU path)";
  TempDir t;
  const auto run = t.path() / "run";
  expect_user_error(run_lmforge(train_args(run, "--set train.device=cuda"), t.path()), "cuda");
  EXPECT_FALSE(fs::exists(run));
  expect_user_error(run_lmforge("bench --device cuda --L 1 --C 32 --H 2 --vocab 50 --T 16", t.path()), "cuda");
  expect_user_error(run_lmforge("bench --device tpu", t.path()), "--device");
  expect_user_error(run_lmforge("bench --cuda-graphs --L 1 --C 32 --H 2 --vocab 50 --T 16", t.path()),
                    "--cuda-graphs needs --device cuda");
  expect_user_error(run_lmforge("bench --device cuda --cuda-graphs --profile", t.path()), "--cuda-graphs and --profile");
  expect_user_error(run_lmforge("eval --run " + run.string() + " --device cuda --matmul-precision fp32", t.path()),
                    "cuda");
  expect_user_error(run_lmforge("eval --run " + run.string() + " --device tpu", t.path()), "--device");
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt x --device cuda", t.path()), "cuda");
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt x --device tpu", t.path()), "--device");
  expect_user_error(run_lmforge("sample --run " + run.string() + " --prompt x --matmul-precision fp8", t.path()),
                    "--matmul-precision");
}

TEST_F(Cli, VocabularyLargerThanModel) {
  TempDir t;
  expect_user_error(run_lmforge(train_args(t.path() / "run", "--set model.vocab_size=100"), t.path()), "vocab");
}

TEST_F(Cli, CorruptShard) {
  TempDir t;
  fs::copy(data, t.path() / "d", fs::copy_options::recursive);
  auto shard = t.path() / "d" / "train_000000.bin";
  {  // flip one token byte: the checksum catches it
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x7f');
  }
  auto r = run_lmforge(train_args(t.path() / "run", "--set data.dir=" + (t.path() / "d").string()), t.path());
  expect_user_error(r, "train_000000.bin");
  fs::resize_file(shard, fs::file_size(shard) - 3);  // truncated
  r = run_lmforge(train_args(t.path() / "run", "--set data.dir=" + (t.path() / "d").string()), t.path());
  expect_user_error(r, "train_000000.bin");
  EXPECT_FALSE(fs::exists(t.path() / "run" / "checkpoints"));
}

TEST_F(Cli, CorruptCheckpointIsReportedAndLeftAlone) {
  TempDir t;
  auto run = t.path() / "run";
  ASSERT_EQ(run_lmforge(train_args(run, "--set train.steps=4 --set train.eval_every=0"), t.path()).code, 0);
  auto model = run / "checkpoints/step_0000004/model.safetensors";
  ASSERT_TRUE(fs::exists(model));
  fs::resize_file(model, fs::file_size(model) - 100);  // truncated weights
  std::string before = slurp(model);
  auto r = run_lmforge(train_args(run, "--set train.steps=8"), t.path());
  expect_user_error(r, "model.safetensors");
  EXPECT_EQ(slurp(model), before);
  EXPECT_FALSE(fs::exists(run / "checkpoints/step_0000008"));
  auto s = run_lmforge("sample --run " + run.string() + " --prompt x", t.path());
  expect_user_error(s, "model.safetensors");
}

TEST_F(Cli, CheckpointOfAnotherShapeIsAClearMismatch) {
  TempDir t;
  auto run = t.path() / "run";
  ASSERT_EQ(run_lmforge(train_args(run, "--set train.steps=2 --set train.eval_every=0"), t.path()).code, 0);
  auto r = run_lmforge(train_args(run, "--set train.steps=4 --set model.n_embd=32"), t.path());
  expect_user_error(r, "model.safetensors");
  EXPECT_FALSE(fs::exists(run / "checkpoints/step_0000004"));
}

TEST_F(Cli, PrepareBadInput) {
  TempDir t;
  expect_user_error(run_lmforge("prepare --input " + (t.path() / "absent.txt").string() + " --output " +
                                    (t.path() / "o").string(), t.path()),
                    "absent.txt");
  std::ofstream(t.path() / "docs.jsonl") << "{\"text\": \"hello\"}\nnot json\n";
  expect_user_error(run_lmforge("prepare --input " + (t.path() / "docs.jsonl").string() + " --output " +
                                    (t.path() / "o").string(), t.path()),
                    "docs.jsonl");
  EXPECT_FALSE(fs::exists(t.path() / "o" / "train_000000.bin"));
}

// SIGTERM (e.g. Slurm preemption): the step in flight finishes, a checkpoint is written at
// that step, and the process exits 0; re-running resumes from it.
TEST_F(Cli, SigtermWritesACheckpointAndExitsCleanly) {
  TempDir t;
  auto run = t.path() / "run";
  std::string cmd = std::string(LMF_BINARY) + " " +
                    train_args(run, "--set train.steps=100000 --set train.eval_every=0 --set checkpoint.every=0") +
                    " >" + (t.path() / "out.txt").string() + " 2>" + (t.path() / "err.txt").string() + " </dev/null";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait (at most 60 s) until a few steps are logged, then ask it to stop.
  for (int i = 0; i < 600 && count_lines(slurp(run / "metrics.jsonl")) < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(count_lines(slurp(run / "metrics.jsonl")), 3);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << slurp(t.path() / "err.txt");
  EXPECT_EQ(WEXITSTATUS(status), 0) << slurp(t.path() / "err.txt");
  auto m = metrics(run);
  ASSERT_FALSE(m.empty());
  long last = m.back()["step"];
  char name[32];
  std::snprintf(name, sizeof name, "step_%07ld", last);
  EXPECT_TRUE(fs::exists(run / "checkpoints" / name / "model.safetensors")) << name;
  EXPECT_NE(slurp(t.path() / "err.txt").find("stopped by signal"), std::string::npos);
}

}  // namespace
}  // namespace lmf::test
